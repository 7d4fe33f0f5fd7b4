"""qdrant-client: a Qdrant server (``http(s)://`` URL) or qdrant-client's local mode (``local:/dir``).

Servers: writes wait for the server (``wait=True``), every filter key gets a payload index, and
aliases are the server's own (one atomic request moves one). Local mode is qdrant-client's
pure-Python engine, the slow fallback: one process at a time, and one call at a time.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from clair_vec.plugin import (
    FILTER_KEYS,
    AuthenticationError,
    Backend,
    BackendUnavailableError,
    CollectionInfo,
    CollectionMismatchError,
    Hit,
    Record,
    StoreLockedError,
    find_secret,
    point_uuid,
    register_secret,
    scrub,
)

from .errors import SHARE_A_SERVER, client_is_transient, refused_credentials, refused_status
from .points import VECTOR, hit_of, must_match, point_payload, record_of, vector_of
from .uri import API_KEY_ENV, local_path


class _OneCallAtATime:
    """qdrant-client's local mode is not thread-safe: its one SQLite connection refused concurrent
    writes ("cannot start a transaction within a transaction") and its in-place NumPy arrays gave
    a thread another thread's hit (seen by the conformance suite's threads promise). Every call
    of the wrapped client holds one lock; local mode is the slow fallback anyway."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self._lock = threading.RLock()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                return attr(*args, **kwargs)

        return call


class QdrantClientBackend(Backend):
    """A Qdrant server (URL) or qdrant-client's local mode (``local:/dir``)."""

    name = "qdrant"

    def __init__(self, uri: str | None = None, *, api_key: str | None = None, timeout: int = 10, **options: Any) -> None:
        register_secret(api_key)
        super().__init__(uri, **options)
        from qdrant_client import QdrantClient, models

        self.models = models
        self.local_path = local_path(uri)
        self._client: Any = None
        self._open_lock = threading.Lock()
        self._api_key = find_secret(api_key, "api_key", API_KEY_ENV) if self.local_path is None else None
        if self.local_path is None:
            self._client = QdrantClient(url=uri, api_key=self._api_key.value or None, timeout=timeout)
            try:
                self._client.get_collections()
            except Exception as exc:
                client, self._client = self._client, None
                client.close()
                refused = self.translate_error(exc)
                if isinstance(refused, AuthenticationError):
                    raise refused from exc
                raise BackendUnavailableError(
                    f"cannot reach Qdrant at {self.display_uri!r}: {scrub(str(exc))}. Start the server or check the "
                    "address, or leave the URI unset to use the embedded engine."
                ) from exc
        elif self.local_path.exists():
            self._open_local()

    def _open_local(self) -> Any:
        from qdrant_client import QdrantClient

        with self._open_lock:  # two threads of one handle must not open the store twice
            if self._client is not None:
                return self._client
            try:
                self._client = _OneCallAtATime(QdrantClient(path=str(self.local_path)))
            except RuntimeError as exc:
                if "already accessed" not in str(exc):
                    raise
                raise StoreLockedError(
                    f"qdrant-client local store {str(self.local_path)!r} is in use by another process: local mode takes "
                    f"one process at a time. Stop that process, or {SHARE_A_SERVER}"
                ) from exc
        return self._client

    @property
    def client(self) -> Any:
        # local mode creates its directory with the first collection, not on open
        return self._client if self._client is not None else self._open_local()

    @property
    def shared(self) -> bool:
        return self.local_path is None

    @property
    def storage_path(self) -> Path | None:
        return self.local_path

    def is_transient(self, exc: BaseException) -> bool:
        verdict = client_is_transient(exc)
        return super().is_transient(exc) if verdict is None else verdict

    def translate_error(self, exc: BaseException) -> Exception | None:
        status = refused_status(exc)
        return None if status is None else refused_credentials(status, self.display_uri, self._api_key)

    def _filter(self, flt: dict[str, list[str]]) -> Any:
        return must_match(self.models, flt)

    def _create(self, info: CollectionInfo) -> None:
        m = self.models
        self.client.create_collection(
            info.name,
            vectors_config={VECTOR: m.VectorParams(size=info.dim, distance=m.Distance.COSINE)},
            metadata={"clair_vec": info.to_json()},
        )
        if self.local_path is None:  # every filter key, so filters never scan (local mode has no indexes)
            for key in FILTER_KEYS:
                self.client.create_payload_index(info.name, key, m.PayloadSchemaType.KEYWORD, wait=True)

    def _read_info(self, name: str) -> CollectionInfo | None:
        if self._client is None or not self.client.collection_exists(name):
            return None
        meta = self.client.get_collection(name).config.metadata or {}
        if "clair_vec" not in meta:
            raise CollectionMismatchError(f"Qdrant collection {name!r} was not created by clair_vec; choose another name")
        return CollectionInfo.from_json(meta["clair_vec"])

    def _list(self) -> list[str]:
        return [c.name for c in self.client.get_collections().collections] if self._client is not None else []

    def _upsert(self, name: str, records: Sequence[Record]) -> None:
        m = self.models
        points = [m.PointStruct(id=point_uuid(r.id), vector={VECTOR: r.vector.tolist()}, payload=point_payload(r)) for r in records]
        self.client.upsert(name, points=points, wait=True)

    def _search(self, name: str, vectors: np.ndarray, top_k: int, flt: dict[str, list[Any]]) -> list[list[Hit]]:
        m = self.models
        f = self._filter(flt)
        reqs = [m.QueryRequest(query=v.tolist(), using=VECTOR, limit=top_k, filter=f, with_payload=True) for v in vectors]
        return [[hit_of(p) for p in res.points] for res in self.client.query_batch_points(name, requests=reqs)]

    def _count(self, name: str, flt: dict[str, list[Any]]) -> int:
        return int(self.client.count(name, count_filter=self._filter(flt), exact=True).count)

    def _existing_ids(self, name: str, ids: Sequence[str]) -> set[str]:
        by_uuid = {point_uuid(i): i for i in ids}
        found = self.client.retrieve(name, ids=list(by_uuid), with_payload=False, with_vectors=False)
        return {by_uuid[str(r.id)] for r in found}

    def _get(self, name: str, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        found = self.client.retrieve(name, ids=[point_uuid(i) for i in ids], with_payload=True, with_vectors=False)
        return dict(record_of(r) for r in found)

    def _vectors(self, name: str, ids: Sequence[str]) -> dict[str, np.ndarray]:
        by_uuid = {point_uuid(i): i for i in ids}
        found = self.client.retrieve(name, ids=list(by_uuid), with_payload=False, with_vectors=[VECTOR])
        return {by_uuid[str(r.id)]: vector_of(r) for r in found}

    def _list_aliases(self) -> dict[str, str]:
        if self._client is None:  # a local store not created yet has none
            return {}
        return {a.alias_name: a.collection_name for a in self.client.get_aliases().aliases}

    def _set_alias(self, alias: str, collection: str) -> None:
        m = self.models
        ops = [m.DeleteAliasOperation(delete_alias=m.DeleteAlias(alias_name=alias))] if alias in self._list_aliases() else []
        ops.append(m.CreateAliasOperation(create_alias=m.CreateAlias(collection_name=collection, alias_name=alias)))
        self.client.update_collection_aliases(change_aliases_operations=ops)  # one request: the move is atomic

    def _drop_alias(self, alias: str) -> None:
        m = self.models
        self.client.update_collection_aliases(
            change_aliases_operations=[m.DeleteAliasOperation(delete_alias=m.DeleteAlias(alias_name=alias))]
        )

    def _scroll(
        self, name: str, flt: dict[str, list[str]], cursor: Any, limit: int
    ) -> tuple[list[tuple[str, dict[str, Any]]], Any]:
        points, nxt = self.client.scroll(name, scroll_filter=self._filter(flt), limit=limit, offset=cursor,
                                         with_payload=True, with_vectors=False)  # fmt: skip
        return [record_of(p) for p in points], nxt

    def _delete(self, name: str, ids: Sequence[str]) -> None:
        self.client.delete(name, points_selector=self.models.PointIdsList(points=[point_uuid(i) for i in ids]), wait=True)

    def _drop(self, name: str) -> None:
        self.client.delete_collection(name)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        self._loaded.clear()
