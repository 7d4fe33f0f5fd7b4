"""A complete clair_vec backend in ~190 lines: exact cosine search over NumPy arrays.

It is the worked example of docs in ``plugins/WRITING_A_BACKEND.md`` and the exact-search
reference the benchmarks compare Milvus and Qdrant against. ``uri`` is a directory; each
collection is saved there as ``<name>/data.npz`` after every write (atomically, via a temp file;
a directory per collection, so a 255-character name is a valid file name), aliases in
``aliases.json``. ``uri=None`` keeps collections in memory.

One process, one handle at a time per directory: every handle holds its collections in memory,
so two would overwrite each other's files. A second opener gets ``StoreLockedError`` (and
``shared`` stays False, as the conformance suite checks). Thread-safe: writes build new arrays
and swap them in under a lock, so a search in another thread sees a collection before or after
a write, never half of one.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import threading
from pathlib import Path

import numpy as np

from clair_vec.plugin import ALIASES_FILE, AliasFile, Backend, CollectionInfo, Hit, StoreLockedError, hookimpl, matches


class NumpyBackend(Backend):
    name = "numpy"

    def __init__(self, uri=None, **options):
        super().__init__(uri, **options)
        self.root = Path(uri) if uri else None
        self.data = {}  # name -> {"info", "ids", "vectors", "payloads"}, replaced whole on every write
        self._write_lock = threading.Lock()
        self._lock_fh = None
        self._aliases = AliasFile(self.root / ALIASES_FILE) if self.root else None
        self._memory_aliases = {}
        if self.root and self.root.is_dir():  # opening never creates the directory; the first collection does
            self._lock()
            for f in self.root.glob("*/data.npz"):
                with np.load(f) as z:
                    self.data[f.parent.name] = {
                        "info": CollectionInfo.from_json(str(z["info"])),
                        "ids": list(z["ids"]),
                        "vectors": z["vectors"],
                        "payloads": json.loads(str(z["payloads"])),
                    }

    def _lock(self):
        """One handle per directory: an advisory lock, released on close or process death."""
        if self._lock_fh is not None or not self.root:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        fh = open(self.root / ".lock", "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            raise StoreLockedError(
                f"NumPy store {str(self.root)!r} is in use by another process or handle: it opens in one process at a "
                "time. Close the other handle, or use a server backend to share a collection between processes."
            ) from None
        self._lock_fh = fh

    @property
    def storage_path(self):
        return self.root

    def close(self):
        if self._lock_fh is not None:
            fcntl.flock(self._lock_fh, fcntl.LOCK_UN)
            self._lock_fh.close()
            self._lock_fh = None

    def _save(self, name):
        if self.root:
            self._lock()
            c, d = self.data[name], self.root / name
            d.mkdir(exist_ok=True)
            np.savez(d / "tmp.npz", info=c["info"].to_json(), ids=np.array(c["ids"], dtype=str),
                     vectors=c["vectors"], payloads=json.dumps(c["payloads"]))  # fmt: skip
            os.replace(d / "tmp.npz", d / "data.npz")

    def _create(self, info):
        with self._write_lock:
            self.data[info.name] = {"info": info, "ids": [], "vectors": np.zeros((0, info.dim), np.float32), "payloads": []}
            self._save(info.name)

    def _read_info(self, name):
        return self.data[name]["info"] if name in self.data else None

    def _list(self):
        return list(self.data)

    def _upsert(self, name, records):
        with self._write_lock:
            c = self.data[name]
            ids, payloads, vectors = list(c["ids"]), list(c["payloads"]), list(c["vectors"])
            pos = {i: n for n, i in enumerate(ids)}
            for r in records:
                v = r.vector / max(float(np.linalg.norm(r.vector)), 1e-12)
                if r.id in pos:
                    vectors[pos[r.id]], payloads[pos[r.id]] = v, dict(r.payload)
                else:
                    pos[r.id] = len(ids)
                    ids.append(r.id)
                    vectors.append(v)
                    payloads.append(dict(r.payload))
            self.data[name] = {"info": c["info"], "ids": ids, "payloads": payloads,
                               "vectors": np.asarray(vectors, np.float32).reshape(-1, c["info"].dim)}  # fmt: skip
            self._save(name)

    def _search(self, name, vectors, top_k, flt):
        c = self.data[name]
        keep = np.array([matches(p, flt) for p in c["payloads"]], dtype=bool)
        idx = np.flatnonzero(keep)
        q = vectors / np.linalg.norm(vectors, axis=1, keepdims=True).clip(1e-12)
        sims = q @ c["vectors"][idx].T
        out = []
        for row in sims:
            order = np.argsort(-row, kind="stable")[:top_k]
            out.append([Hit(c["ids"][idx[j]], float(row[j]), dict(c["payloads"][idx[j]])) for j in order])
        return out

    def _count(self, name, flt):
        return sum(matches(p, flt) for p in self.data[name]["payloads"])

    def _existing_ids(self, name, ids):
        return set(ids) & set(self.data[name]["ids"])

    def _get(self, name, ids):
        c = self.data[name]
        pos = {i: n for n, i in enumerate(c["ids"])}
        return {i: dict(c["payloads"][pos[i]]) for i in ids if i in pos}

    def _vectors(self, name, ids):
        c = self.data[name]
        pos = {i: n for n, i in enumerate(c["ids"])}
        return {i: c["vectors"][pos[i]].copy() for i in ids if i in pos}

    def _scroll(self, name, flt, cursor, limit):
        c = self.data[name]
        start = cursor or 0  # the cursor is a position: stable while nothing is written in between
        rows = [(i, dict(p)) for i, p in zip(c["ids"], c["payloads"], strict=True) if matches(p, flt)]
        end = start + limit
        return rows[start:end], (end if end < len(rows) else None)

    def _delete(self, name, ids):
        with self._write_lock:
            c, gone = self.data[name], set(ids)
            keep = [n for n, i in enumerate(c["ids"]) if i not in gone]
            self.data[name] = {"info": c["info"], "ids": [c["ids"][n] for n in keep],
                               "payloads": [c["payloads"][n] for n in keep], "vectors": c["vectors"][keep]}  # fmt: skip
            self._save(name)

    def _drop(self, name):
        with self._write_lock:
            del self.data[name]
            if self.root:
                shutil.rmtree(self.root / name, ignore_errors=True)

    # aliases: a JSON map next to the collections (in memory without a directory)
    def _list_aliases(self):
        return self._aliases.read() if self._aliases else dict(self._memory_aliases)

    def _set_alias(self, alias, collection):
        with self._write_lock:
            if self._aliases:
                self._lock()
                self._aliases.update({alias: collection})
            else:
                self._memory_aliases[alias] = collection

    def _drop_alias(self, alias):
        with self._write_lock:
            if self._aliases:
                self._aliases.update(drop=(alias,))
            else:
                self._memory_aliases.pop(alias, None)


@hookimpl
def clair_vec_register_backends(register):
    register("numpy", NumpyBackend)
