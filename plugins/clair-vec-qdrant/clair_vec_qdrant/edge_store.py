"""A Qdrant Edge store on disk: its layout, its one-process lock, and the check before opening
a store whose last write never finished.

Layout: one directory per collection under the store root, holding the engine's ``shard``
directory and ``clair_collection.json`` (the :class:`~clair_vec.plugin.CollectionInfo`). The
root also holds the lock file, the aliases file (:class:`~clair_vec.plugin.AliasFile`), the
write marker (:class:`~clair_vec.plugin.WriteMarker`) and ``.creating-*`` directories, none of
them a collection.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Any

from clair_vec.plugin import (
    CollectionInfo,
    DiskFullError,
    StoreDamagedError,
    StoreLockedError,
    WriteMarker,
    free_bytes,
    mount_point,
    probe,
)

from .errors import SHARE_A_SERVER

INFO_FILE = "clair_collection.json"
LOCK_FILE = ".clair_vec.lock"
#: loads one shard and closes it: what a probe child runs before this process risks loading a
#: store whose last write never finished (it imports only the engine, so it works wherever the
#: engine is installed, plugin or not)
PROBE = "import sys, qdrant_edge\nfor p in sys.argv[1:]:\n    qdrant_edge.EdgeShard.load(p).close()\n"


def shard_dir(collection_dir: Path) -> Path:
    return collection_dir / "shard"


def collections(root: Path) -> list[str]:
    if not root.is_dir():
        return []
    # ".creating-*" directories are creations a crash interrupted, not collections
    return [p.name for p in root.iterdir() if not p.name.startswith(".") and (p / INFO_FILE).is_file()]


def read_info(collection_dir: Path) -> CollectionInfo | None:
    f = collection_dir / INFO_FILE
    return CollectionInfo.from_json(f.read_text()) if f.is_file() else None


class StoreLock:
    """The store directory's advisory lock (``flock`` on :data:`LOCK_FILE`, which names the
    holder's pid). The kernel drops it when the holder dies, so a crash never locks a store."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._fh: Any = None

    def acquire(self) -> None:
        """Take the lock unless this handle holds it; creates the store directory."""
        if self._fh is not None:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        fh = open(self.root / LOCK_FILE, "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            fh.close()
            raise StoreLockedError(
                f"Qdrant Edge store {str(self.root)!r} is in use by another process or handle (pid {holder}; lock file "
                f"{self.root / LOCK_FILE}): the embedded engine takes one process at a time. Close the other handle or "
                f"stop that process, or {SHARE_A_SERVER}"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        self._fh = fh

    def release(self) -> None:
        if self._fh is not None:
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None


def check_last_write(root: Path, writing: WriteMarker, margin_bytes: int) -> None:
    """A write that never finished (its process died: SIGBUS on a full disk, a kill), or a disk
    too full to load the store: load it in a child first, so a crash is a message here. Call
    with the store's lock held."""
    stale = writing.stale()
    low = free_bytes(root) < margin_bytes
    if stale is None and not low:
        return
    shards = [str(shard_dir(root / n)) for n in sorted(collections(root))]
    died = probe(PROBE, *shards) if shards else None
    if died is None:
        writing.clear()
        return
    free = free_bytes(root) / 2**20
    what = f"its last write never finished ({stale.split('. ')[0]})" if stale else "the disk is almost full"
    recover = (
        f"Its data up to the last finished write is intact: free space on {mount_point(root)} (the engine needs "
        f"about {margin_bytes / 2**20:.0f} MiB to open it), or copy the whole directory to a bigger disk "
        f"(cp -a {str(root)!r} /bigger/disk/) and open the copy."
    )
    if free * 2**20 < margin_bytes:
        raise DiskFullError(
            f"the Qdrant Edge store {str(root)!r} cannot be opened: {what}, and loading it now crashed a test "
            f"process ({died}) with only {free:.1f} MiB free on {mount_point(root)}. {recover}"
        )
    raise StoreDamagedError(
        f"the Qdrant Edge store {str(root)!r} cannot be opened: {what}, and loading it crashed a test process "
        f"({died}) although {free:.0f} MiB are free. {recover} If the copy fails the same way, restore the store "
        "from a backup or re-index."
    )
