"""Free space for embedded stores: refuse a write the disk cannot hold, and name ENOSPC.

An embedded engine that runs out of space mid-write fails badly: Milvus Lite loses the
in-memory view of the batch (its count read 0 until reopened), Qdrant Edge dies of SIGBUS
writing its memory-mapped write-ahead log. So before each batch the base class compares the
free space of the store's file system with what the batch needs, about three times its size
(the log, then the segment it is sealed into), plus a safety margin for the engine's log
files (Qdrant Edge's are 32 MiB each), and stops with :class:`DiskFullError` first.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterator

from clair_vec.errors import DiskFullError
from clair_vec.file_systems import existing_ancestor, mount_point

DEFAULT_MARGIN_MB = 64.0
#: bytes on disk per byte of a batch: the write-ahead log, then the sealed segment, then slack
WRITE_AMPLIFICATION = 3
_MIB = 2**20


def free_bytes(path: str | os.PathLike) -> int:
    return shutil.disk_usage(existing_ancestor(path)).free


def check_room(path: str | os.PathLike, batch_bytes: int, margin_bytes: int, store: str) -> None:
    """Raise :class:`DiskFullError` unless the file system of ``path`` holds a write of
    ``batch_bytes`` (amplified) plus ``margin_bytes``."""
    free = free_bytes(path)
    need = batch_bytes * WRITE_AMPLIFICATION + margin_bytes
    if free < need:
        raise DiskFullError(
            f"not enough free space for {store}: {free / _MIB:.1f} MiB free on {mount_point(path)}, this write needs "
            f"about {need / _MIB:.1f} MiB (the batch plus a {margin_bytes / _MIB:.0f} MiB safety margin for the engine's "
            "write-ahead log; option disk_margin_mb). Free space, or move the store to a bigger disk."
        )


#: how an engine's refused write reads, as an errno or as the text it was wrapped in (Milvus Lite
#: sends it back through gRPC as text): the disk is full, or a file is at its size limit
_FULL = ((errno.ENOSPC, errno.EDQUOT), ("No space left on device", "[Errno 28]", "Disk quota exceeded"))
_TOO_LARGE = ((errno.EFBIG,), ("File too large", "[Errno 27]"))


def _causes(exc: BaseException | None) -> Iterator[BaseException]:
    """``exc`` and the exceptions it was raised from, each once."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _says(exc: BaseException, kind: tuple[tuple[int, ...], tuple[str, ...]]) -> bool:
    errnos, texts = kind
    return (isinstance(exc, OSError) and exc.errno in errnos) or any(t in str(exc) for t in texts)


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it was raised from) is the engine's ENOSPC or EFBIG,
    however it was wrapped."""
    for e in _causes(exc):
        if isinstance(e, DiskFullError):
            return False  # already said
        if _says(e, _FULL) or _says(e, _TOO_LARGE):
            return True
    return False


def _too_large(exc: BaseException) -> bool:
    return any(_says(e, _TOO_LARGE) for e in _causes(exc))


def disk_full_error(path: str | os.PathLike, store: str, exc: BaseException) -> DiskFullError:
    """The :class:`DiskFullError` for an engine's own ENOSPC (or EFBIG: a file at the size limit)."""
    if _too_large(exc):
        return DiskFullError(
            f"a file of {store} reached the largest size this process may write (the shell's `ulimit -f`, or the file "
            "system's own limit): the engine could not write. What was written before this batch is kept. Raise the "
            "limit, or move the store to a file system that allows larger files, then repeat the write."
        )
    free = free_bytes(path)
    return DiskFullError(
        f"the disk holding {store} is full ({free / _MIB:.1f} MiB free on {mount_point(path)}): the engine could not "
        f"write ({type(exc).__name__}: no space left on device). What was written before this batch is kept. Free "
        "space, or copy the store to a bigger disk and open it there, then repeat the write."
    )


def server_disk_full_error(server: str, exc: BaseException) -> DiskFullError:
    """The :class:`DiskFullError` for a write a server refused: its disk is full, or one of its
    files reached the size its process may write (EFBIG is no full disk: freeing space would not help)."""
    if _too_large(exc):
        return DiskFullError(
            f"{server} reports that one of its files reached the largest size its process may write (its `ulimit -f` or "
            "its file system's limit); raise that limit on the server, then repeat the write"
        )
    return DiskFullError(
        f"{server} reports that its disk is full; free space on the server (or give it a bigger volume), then repeat "
        "the write"
    )
