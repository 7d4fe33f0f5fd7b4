"""A complete clair_vec backend in ~100 lines: exact cosine search over NumPy arrays.

It is the worked example of docs in ``plugins/WRITING_A_BACKEND.md`` and the exact-search
reference the benchmarks compare Milvus and Qdrant against. ``uri`` is a directory; each
collection is saved there as ``<name>.npz`` after every write (atomically, via a temp file).
``uri=None`` keeps collections in memory.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from clair_vec import hookimpl
from clair_vec.store.backend import Backend, CollectionInfo, Hit, matches


class NumpyBackend(Backend):
    name = "numpy"

    def __init__(self, uri=None, **options):
        super().__init__(uri, **options)
        self.root = Path(uri) if uri else None
        self.data = {}  # name -> {"info", "ids", "vectors", "payloads"}
        if self.root and self.root.is_dir():  # opening never creates the directory; the first collection does
            for f in self.root.glob("*.npz"):
                with np.load(f) as z:
                    self.data[f.stem] = {
                        "info": CollectionInfo.from_json(str(z["info"])),
                        "ids": list(z["ids"]),
                        "vectors": z["vectors"],
                        "payloads": json.loads(str(z["payloads"])),
                    }

    def _save(self, name):
        if self.root:
            self.root.mkdir(parents=True, exist_ok=True)
            c = self.data[name]
            tmp = self.root / f".{name}.tmp.npz"
            np.savez(tmp, info=c["info"].to_json(), ids=np.array(c["ids"], dtype=str),
                     vectors=c["vectors"], payloads=json.dumps(c["payloads"]))  # fmt: skip
            os.replace(tmp, self.root / f"{name}.npz")

    def _create(self, info):
        self.data[info.name] = {"info": info, "ids": [], "vectors": np.zeros((0, info.dim), np.float32), "payloads": []}
        self._save(info.name)

    def _read_info(self, name):
        return self.data[name]["info"] if name in self.data else None

    def _list(self):
        return list(self.data)

    def _upsert(self, name, records):
        c = self.data[name]
        pos = {i: n for n, i in enumerate(c["ids"])}
        vectors = list(c["vectors"])
        for r in records:
            v = r.vector / max(float(np.linalg.norm(r.vector)), 1e-12)
            if r.id in pos:
                vectors[pos[r.id]], c["payloads"][pos[r.id]] = v, dict(r.payload)
            else:
                pos[r.id] = len(c["ids"])
                c["ids"].append(r.id)
                vectors.append(v)
                c["payloads"].append(dict(r.payload))
        c["vectors"] = np.asarray(vectors, np.float32).reshape(-1, c["info"].dim)
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

    def _scroll(self, name, flt, cursor, limit):
        c = self.data[name]
        start = cursor or 0  # the cursor is a position: stable while nothing is written in between
        rows = [(i, dict(p)) for i, p in zip(c["ids"], c["payloads"], strict=True) if matches(p, flt)]
        end = start + limit
        return rows[start:end], (end if end < len(rows) else None)

    def _delete(self, name, ids):
        c, gone = self.data[name], set(ids)
        keep = [n for n, i in enumerate(c["ids"]) if i not in gone]
        c["ids"] = [c["ids"][n] for n in keep]
        c["payloads"] = [c["payloads"][n] for n in keep]
        c["vectors"] = c["vectors"][keep]
        self._save(name)

    def _drop(self, name):
        del self.data[name]
        if self.root:
            (self.root / f"{name}.npz").unlink(missing_ok=True)


@hookimpl
def clair_vec_register_backends(register):
    register("numpy", NumpyBackend)
