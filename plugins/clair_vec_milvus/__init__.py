"""Milvus backend for clair_vec (pymilvus ``MilvusClient``).

``uri=None`` is a Milvus Lite file (``$CLAIR_VEC_MILVUS_URI`` or ``./clair_vec_milvus.db``);
``http://host:19530`` reaches a Milvus server. Reads are Strong-consistency, so a search right
after an upsert sees it. Content-hash ids are the VARCHAR primary key, so upserts are idempotent.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from clair_vec.backend import Backend, CollectionInfo, Hit, Record
from clair_vec.errors import BackendUnavailableError
from clair_vec.hookspecs import hookimpl

DEFAULT_URI = "./clair_vec_milvus.db"
_FIELDS = ("domain", "label", "path")


class _DropUnimplementedProbe(logging.Filter):
    """Milvus Lite serves gRPC inside this process and logs a traceback each time pymilvus probes
    its unimplemented AllocTimestamp RPC; pymilvus ignores that answer (``@ignore_unimplemented``),
    so the traceback is noise. Only that one kind of record is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], NotImplementedError))


def _quote(value: Any) -> str:
    return json.dumps(value)  # JSON string/number literals are valid Milvus expression literals


def _expr(flt: dict[str, list[Any]]) -> str:
    return " and ".join(f"{k} in [{', '.join(_quote(v) for v in vs)}]" for k, vs in flt.items())


class MilvusBackend(Backend):
    name = "milvus"

    def __init__(
        self, uri: str | None = None, *, token: str = "", timeout: float = 10.0, index_type: str | None = None, **options: Any
    ) -> None:
        uri = uri or os.environ.get("CLAIR_VEC_MILVUS_URI") or DEFAULT_URI
        super().__init__(uri, **options)
        lite = uri.endswith(".db")  # a local file is Milvus Lite, anything else a server
        # Milvus Lite's AUTOINDEX is approximate (recall@10 0.75 at 100k x 512-d, see the README
        # benchmark): the embedded default searches exactly; servers get Milvus' own choice
        self.index_type = index_type or ("FLAT" if lite else "AUTOINDEX")
        from pymilvus import MilvusClient

        self._timeout = timeout
        if lite:
            grpc_log = logging.getLogger("grpc._server")
            if not any(isinstance(f, _DropUnimplementedProbe) for f in grpc_log.filters):
                grpc_log.addFilter(_DropUnimplementedProbe())
        try:
            self.client = MilvusClient(uri=uri, token=token, timeout=timeout)
        except Exception as exc:
            raise BackendUnavailableError(
                f"cannot reach Milvus at {uri!r}: {exc}. Start a server (docker compose -f docker/milvus.yml up -d) "
                "or pass a local file path ending in .db to use embedded Milvus Lite."
            ) from exc

    def is_transient(self, exc: BaseException) -> bool:
        from pymilvus.exceptions import MilvusException

        text = str(exc).lower()
        return super().is_transient(exc) or (
            isinstance(exc, MilvusException) and any(w in text for w in ("timeout", "deadline", "unavailable", "rate limit"))
        )

    def _create(self, info: CollectionInfo) -> None:
        from pymilvus import DataType

        schema = self.client.create_schema(auto_id=False, enable_dynamic_field=True, description="clair_vec collection")
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=128)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=info.dim)
        schema.add_field("domain", DataType.VARCHAR, max_length=128)
        schema.add_field("label", DataType.VARCHAR, max_length=512)
        schema.add_field("path", DataType.VARCHAR, max_length=4096)
        index = self.client.prepare_index_params()
        index.add_index(field_name="vector", index_type=self.index_type, metric_type="COSINE")
        # the spec travels in the collection's properties, set in the same call that creates it,
        # so no collection exists without one
        self.client.create_collection(
            info.name, schema=schema, index_params=index, consistency_level="Strong", properties={"clair_vec": info.to_json()}
        )

    def _read_info(self, name: str) -> CollectionInfo | None:
        if not self.client.has_collection(name):
            return None
        props = self.client.describe_collection(name).get("properties") or {}
        try:
            return CollectionInfo.from_json(props["clair_vec"])
        except (KeyError, ValueError, TypeError) as exc:
            raise BackendUnavailableError(
                f"Milvus collection {name!r} was not created by clair_vec (it has no clair_vec property); "
                "choose another collection name"
            ) from exc

    def _list(self) -> list[str]:
        return list(self.client.list_collections())

    def _upsert(self, name: str, records: Sequence[Record]) -> None:
        rows = []
        for r in records:
            row = {k: v for k, v in r.payload.items() if v is not None}
            row.update({f: str(r.payload.get(f, "")) for f in _FIELDS})
            row.update(id=r.id, vector=r.vector.tolist())
            rows.append(row)
        self.client.upsert(name, data=rows, timeout=self._timeout)

    def _search(self, name: str, vectors: np.ndarray, top_k: int, flt: dict[str, list[Any]]) -> list[list[Hit]]:
        results = self.client.search(
            name,
            data=vectors.tolist(),
            filter=_expr(flt),
            limit=top_k,
            output_fields=["*"],
            search_params={"metric_type": "COSINE"},
            consistency_level="Strong",
        )
        out = []
        for row in results:
            hits = []
            for h in row:
                entity = {k: v for k, v in h.get("entity", {}).items() if k not in ("vector", "id")}
                hits.append(Hit(id=str(h["id"]), score=float(h["distance"]), payload=entity))
            out.append(hits)
        return out

    def _count(self, name: str, flt: dict[str, list[Any]]) -> int:
        res = self.client.query(name, filter=_expr(flt), output_fields=["count(*)"], consistency_level="Strong")
        return int(res[0]["count(*)"])

    def _existing_ids(self, name: str, ids: Sequence[str]) -> set[str]:
        if not ids:
            return set()
        res = self.client.query(name, filter=f"id in [{', '.join(_quote(i) for i in ids)}]", output_fields=["id"],
                                consistency_level="Strong")  # fmt: skip
        return {r["id"] for r in res}

    def _flush(self, name: str) -> None:
        self.client.flush(name)

    def _delete(self, name: str, ids: Sequence[str]) -> None:
        self.client.delete(name, ids=list(ids))

    def _drop(self, name: str) -> None:
        self.client.drop_collection(name)

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:  # closing an already closed Lite handle is harmless
            pass


@hookimpl
def clair_vec_register_backends(register):
    register("milvus", MilvusBackend)
