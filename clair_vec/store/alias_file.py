"""Aliases for embedded engines that have none: an ``alias -> collection`` map in one JSON file.

The file is replaced whole with ``os.replace`` (a reader sees the old map or the new one, never
half of one), by the one process that holds the store's lock. Reads are cached by the file's
identity (inode, size, modification time), so resolving a name costs one ``stat`` while the
map is unchanged, and a map replaced by anyone is read again at the next call.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

ALIASES_FILE = "aliases.json"


class AliasFile:
    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._cached: tuple[tuple[int, int, int], dict[str, str]] | None = None

    def read(self) -> dict[str, str]:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return {}
        key = (st.st_ino, st.st_size, st.st_mtime_ns)
        cached = self._cached
        if cached is not None and cached[0] == key:
            return dict(cached[1])
        with open(self.path, encoding="utf-8") as fh:
            mapping = {str(k): str(v) for k, v in json.load(fh).items()}
        self._cached = (key, mapping)
        return dict(mapping)

    def target(self, alias: str) -> str | None:
        return self.read().get(alias)

    def update(self, set_: dict[str, str] | None = None, drop: tuple[str, ...] = ()) -> dict[str, str]:
        """Apply changes and replace the file atomically; returns the new map."""
        with self._lock:
            mapping = self.read()
            mapping.update(set_ or {})
            for alias in drop:
                mapping.pop(alias, None)
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
            with open(tmp, "w", encoding="utf-8") as fh:
                json.dump(mapping, fh, sort_keys=True, ensure_ascii=False)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
            self._cached = None
            return mapping
