"""Reads: filters as Milvus expressions, searches, counts, fetches by id and paging, all with
Session consistency (the first read of a collection through a handle is Strong: see ``_load``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from clair_vec.plugin import Backend, Hit

from .schema import _FIELDS

#: scalar fields and the dynamic-field map: every payload key, never the stored vector
_OUTPUT = [*_FIELDS, "$meta"]
_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"})


def quote(value: str) -> str:
    """A Milvus expression string literal. Milvus Lite rejects ``\\u``/``\\x`` escapes (so JSON's
    ``\\u00e9`` for ``é`` fails there) and a raw line break; Lite and the 2.3 server both take
    these five escapes and every other character, other control characters included, as is."""
    return '"' + value.translate(_ESCAPES) + '"'


def expr(flt: dict[str, list[str]]) -> str:
    return " and ".join(f"{k} in [{', '.join(quote(v) for v in vs)}]" for k, vs in flt.items())


def _payload(entity: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in entity.items() if k not in ("vector", "id")}


#: search-time knobs per index family when the handle was given no ``search_params``: each
#: collection is searched by the index it was built with, whichever handle built it. HNSW's beam
#: is wide because a query's CLIP encode costs far more than any beam. On a 2.3.5 server (M 16,
#: efConstruction 200): at 5,000 clustered 512-d vectors ef 64 gave recall@10 0.89 and ef 256
#: 0.99 (611 queries a second at 16 clients, 936 at ef 64); at 1M every ef gave 1.000, ef 256 at
#: 183 against FLAT's 3.4 (python -m clair_vec.benchmarks.ann --vectors 5000,20000,1000000
#: --engines milvus-server --only FLAT,HNSW --ef 64,128,256)
HNSW_EF = 256
IVF_NPROBE = 16


def params_for(index_type: str, top_k: int) -> dict[str, Any]:
    """Milvus search params for a collection indexed with ``index_type`` and a query of ``top_k``."""
    kind = index_type.upper()
    if kind.startswith("HNSW"):
        return {"params": {"ef": max(HNSW_EF, top_k)}}  # a beam narrower than top_k returns fewer hits
    if kind.startswith("IVF"):
        return {"params": {"nprobe": IVF_NPROBE}}
    return {}


class MilvusSearch(Backend):
    """The read primitives of :class:`~clair_vec.plugin.Backend`."""

    def _index_type(self, name: str) -> str:
        """The collection's vector index type, asked once per handle (another process may have
        created it with another index than this handle would)."""
        kind = self._index_types.get(name)
        if kind is None:
            described = self._reading(name, lambda: self.client.describe_index(name, "vector")) or {}
            kind = self._index_types[name] = str(described.get("index_type") or "FLAT")
        return kind

    def _search_params(self, name: str, top_k: int) -> dict[str, Any]:
        if not self.search_params:
            return {"metric_type": "COSINE", **params_for(self._index_type(name), top_k)}
        params = {"metric_type": "COSINE", **self.search_params}
        inner = params.get("params")
        if isinstance(inner, dict) and isinstance(inner.get("ef"), int) and inner["ef"] < top_k:
            # an HNSW beam narrower than top_k returns fewer hits than asked, silently
            params["params"] = {**inner, "ef": top_k}
        return params

    def _reading(self, name: str, read: Any) -> Any:
        """Run a read; if the server released the collection meanwhile (a restart, an operator's
        release), load it again and retry once."""
        from pymilvus.exceptions import MilvusException

        try:
            return read()
        except MilvusException as exc:
            if not any(w in str(exc).lower() for w in ("not loaded", "released", "loading")):
                raise
            self._load(name)
            return read()

    def _search(self, name: str, vectors: np.ndarray, top_k: int, flt: dict[str, list[str]]) -> list[list[Hit]]:
        results = self._reading(name, lambda: self.client.search(
            name, data=vectors.tolist(), filter=expr(flt), limit=top_k, output_fields=_OUTPUT,
            search_params=self._search_params(name, top_k), consistency_level="Session"))  # fmt: skip
        return [[Hit(id=str(h["id"]), score=float(h["distance"]), payload=_payload(h.get("entity", {}))) for h in row]
                for row in results]  # fmt: skip

    def _query(self, name: str, filter: str, fields: list[str], **kw: Any) -> list[dict]:
        return self._reading(name, lambda: self.client.query(name, filter=filter, output_fields=fields,
                                                              consistency_level="Session", **kw))  # fmt: skip

    def _by_ids(self, name: str, ids: Sequence[str], fields: list[str]) -> list[dict]:
        return self._query(name, f"id in [{', '.join(quote(i) for i in ids)}]", fields) if ids else []

    def _count(self, name: str, flt: dict[str, list[str]]) -> int:
        return int(self._query(name, expr(flt), ["count(*)"])[0]["count(*)"])

    def _existing_ids(self, name: str, ids: Sequence[str]) -> set[str]:
        return {r["id"] for r in self._by_ids(name, ids, ["id"])}

    def _get(self, name: str, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        return {str(r["id"]): _payload(r) for r in self._by_ids(name, ids, _OUTPUT)}

    def _vectors(self, name: str, ids: Sequence[str]) -> dict[str, np.ndarray]:
        return {str(r["id"]): np.asarray(r["vector"], np.float32) for r in self._by_ids(name, ids, ["id", "vector"])}

    def _scroll(
        self, name: str, flt: dict[str, list[str]], cursor: Any, limit: int
    ) -> tuple[list[tuple[str, dict[str, Any]]], Any]:
        # primary-key paging, as pymilvus' query_iterator pages: the "iterator" parameter makes the
        # engine return the smallest keys above the cursor (Milvus Lite otherwise returns a page in
        # storage order, and paging by key from it skipped 39 of 50 records)
        parts = [p for p in (expr(flt), f"id > {quote(cursor)}" if cursor is not None else "") if p]
        res = self._query(name, " and ".join(parts), _OUTPUT, limit=limit, iterator="True")
        page = sorted(((str(r["id"]), _payload(r)) for r in res), key=lambda x: x[0])
        return page, (page[-1][0] if len(page) == limit else None)
