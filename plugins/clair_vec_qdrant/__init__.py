"""Qdrant backend for clair_vec.

- ``uri=None`` or a directory path: Qdrant Edge (``qdrant-edge-py``), Qdrant's Rust engine
  in-process; one shard directory per collection under ``$CLAIR_VEC_QDRANT_PATH`` or
  ``./clair_vec_qdrant``.
- ``http(s)://host:6333``: a Qdrant server through ``qdrant-client`` (writes with ``wait=True``).
- ``local:/some/dir``: qdrant-client's pure-Python local mode, a slower fallback.

Qdrant point ids must be UUIDs or integers: content-hash ids map to ``uuid5`` and are kept in
the ``clair_id`` payload field.

Credentials (servers): option ``api_key``, else ``$CLAIR_VEC_QDRANT_API_KEY``, then
``$QDRANT_API_KEY`` (each also as ``*_FILE``). A refused key raises
:class:`~clair_vec.errors.AuthenticationError`, never retried.

Aliases: a Qdrant server's own (``update_collection_aliases``, one atomic request); qdrant-client
local mode keeps them in its ``meta.json``; Qdrant Edge, which has none, in ``aliases.json`` next
to the collections (:mod:`clair_vec.store.alias_file`). No ``top_k`` limit: Qdrant Edge and local
mode answered a top_k of 10^9 over 200 records at once with the 200.

Full disks: Qdrant Edge's write-ahead log is memory-mapped, and a write that cannot grow it dies
of SIGBUS, as does every later open of that store while the disk stays full. So writes are
checked against the free space first (``disk_margin_mb``, default 64: the log grows in 32 MiB
files), run inside a :class:`~clair_vec.store.crash_marker.WriteMarker`, and a store whose last
write never finished is loaded in a child process first, which turns the crash into
:class:`~clair_vec.errors.DiskFullError` or :class:`~clair_vec.errors.StoreDamagedError` with the
way out (free space, or copy the store to a bigger disk: a copy of a store that crashed this way
opened with every finished write).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from clair_vec.errors import (
    AuthenticationError,
    BackendUnavailableError,
    CollectionMismatchError,
    DiskFullError,
    StoreDamagedError,
    StoreLockedError,
)
from clair_vec.store.alias_file import ALIASES_FILE, AliasFile
from clair_vec.store.backend import FILTER_KEYS, Backend, CollectionInfo, Hit, Record, point_uuid
from clair_vec.store.crash_marker import WriteMarker, probe
from clair_vec.store.credentials import find_secret
from clair_vec.store.disk_space import free_bytes, mount_point
from clair_vec.store.hookspecs import hookimpl
from clair_vec.store.redaction import register_secret, scrub

DEFAULT_PATH = "./clair_vec_qdrant"
VECTOR = "clair"
API_KEY_ENV = ("CLAIR_VEC_QDRANT_API_KEY", "QDRANT_API_KEY")
_INFO_FILE = "clair_collection.json"
_LOCK_FILE = ".clair_vec.lock"
#: loads one shard and closes it: what a probe child runs before this process risks loading a
#: store whose last write never finished
_PROBE = "import sys, qdrant_edge\nfor p in sys.argv[1:]:\n    qdrant_edge.EdgeShard.load(p).close()\n"


def _payload(r: Record) -> dict[str, Any]:
    return {**{k: v for k, v in r.payload.items() if v is not None}, "clair_id": r.id}


def _record(point: Any) -> tuple[str, dict[str, Any]]:
    payload = dict(point.payload or {})
    return str(payload.pop("clair_id", point.id)), payload


def _hit(point: Any) -> Hit:
    rid, payload = _record(point)
    return Hit(id=rid, score=float(point.score), payload=payload)


def _vector(point: Any) -> np.ndarray:
    v = point.vector
    return np.asarray(v[VECTOR] if isinstance(v, dict) else v, np.float32)


def _must_match(models: Any, flt: dict[str, list[str]]) -> Any:
    """The same filter for Qdrant Edge and qdrant-client, whose model classes share their names."""
    if not flt:
        return None
    return models.Filter(must=[models.FieldCondition(key=k, match=models.MatchAny(any=list(vs))) for k, vs in flt.items()])


class QdrantEdgeBackend(Backend):
    """Embedded Qdrant Edge shards, one directory per collection.

    One process at a time: a second process that loads a shard another process is writing
    corrupts the writer's next flush (seen with qdrant-edge-py 0.9), so the store directory
    carries an advisory lock, taken before any shard is touched and released on close or
    process death. Writes go to each shard's WAL (each batch whole); segments are flushed at
    ``flush()``, on close, and at most ``flush_interval`` seconds apart while writing.
    """

    name = "qdrant"
    flush_interval: float = 10.0

    def __init__(self, uri: str | None = None, **options: Any) -> None:
        uri = uri or os.environ.get("CLAIR_VEC_QDRANT_PATH") or DEFAULT_PATH
        super().__init__(uri, **options)
        import qdrant_edge

        self.q = qdrant_edge
        self.root = Path(uri)
        self._shards: dict[str, Any] = {}
        self._shard_lock = threading.RLock()
        self._lock_fh: Any = None
        self._last_flush: dict[str, float] = {}
        self._writing = WriteMarker(self.root)
        self._aliases = AliasFile(self.root / ALIASES_FILE)
        if self.root.exists():  # an existing store is locked now, so a conflict shows at once
            self._lock()
            try:
                self._check_last_write()
            except BaseException:
                self._unlock()
                raise

    @property
    def storage_path(self) -> Path:
        return self.root

    def _check_last_write(self) -> None:
        """A write that never finished (its process died: SIGBUS on a full disk, a kill), or a
        disk too full to load the store: load it in a child first, so a crash is a message here."""
        stale = self._writing.stale()
        low = free_bytes(self.root) < self.disk_margin_bytes
        if stale is None and not low:
            return
        shards = [str(self._dir(n) / "shard") for n in sorted(self._list())]
        died = probe(_PROBE, *shards) if shards else None
        if died is None:
            self._writing.clear()
            return
        free = free_bytes(self.root) / 2**20
        what = f"its last write never finished ({stale.split('. ')[0]})" if stale else "the disk is almost full"
        recover = (
            f"Its data up to the last finished write is intact: free space on {mount_point(self.root)} (the engine needs "
            f"about {self.disk_margin_bytes / 2**20:.0f} MiB to open it), or copy the whole directory to a bigger disk "
            f"(cp -a {str(self.root)!r} /bigger/disk/) and open the copy."
        )
        if free * 2**20 < self.disk_margin_bytes:
            raise DiskFullError(
                f"the Qdrant Edge store {str(self.root)!r} cannot be opened: {what}, and loading it now crashed a test "
                f"process ({died}) with only {free:.1f} MiB free on {mount_point(self.root)}. {recover}"
            )
        raise StoreDamagedError(
            f"the Qdrant Edge store {str(self.root)!r} cannot be opened: {what}, and loading it crashed a test process "
            f"({died}) although {free:.0f} MiB are free. {recover} If the copy fails the same way, restore the store "
            "from a backup or re-index."
        )

    def _unlock(self) -> None:
        if self._lock_fh is not None:
            fcntl.flock(self._lock_fh, fcntl.LOCK_UN)
            self._lock_fh.close()
            self._lock_fh = None

    def _lock(self) -> None:
        if self._lock_fh is not None:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        fh = open(self.root / _LOCK_FILE, "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            fh.close()
            raise StoreLockedError(
                f"Qdrant Edge store {str(self.root)!r} is in use by another process or handle (pid {holder}; lock file "
                f"{self.root / _LOCK_FILE}): the embedded engine takes one process at a time. Close the other handle or "
                "stop that process, or use a server backend that several processes share (a Qdrant server: pass its "
                "URL as --uri)."
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        self._lock_fh = fh

    def _dir(self, name: str) -> Path:
        return self.root / name

    def _shard(self, name: str) -> Any:
        shard = self._shards.get(name)
        if shard is None:
            with self._shard_lock:  # two threads loading one shard would open it twice
                if name not in self._shards:
                    self._lock()
                    self._shards[name] = self.q.EdgeShard.load(str(self._dir(name) / "shard"))
                    self._last_flush[name] = time.monotonic()
                shard = self._shards[name]
        return shard

    def _filter(self, flt: dict[str, list[str]]) -> Any:
        return _must_match(self.q, flt)

    def _create(self, info: CollectionInfo) -> None:
        q = self.q
        self._lock()
        d = self._dir(info.name)
        tmp = d.with_name(f".creating-{point_uuid(info.name)}")  # short: the name itself may take all 255 bytes
        shutil.rmtree(tmp, ignore_errors=True)
        config = q.EdgeConfig(vectors={VECTOR: q.EdgeVectorParams(size=info.dim, distance=q.Distance.Cosine)})
        with self._writing:
            shard = q.EdgeShard.create(str(tmp / "shard"), config)
            shard.close()
        (tmp / _INFO_FILE).write_text(info.to_json())
        os.replace(tmp, d)  # a collection directory exists whole or not at all

    def _read_info(self, name: str) -> CollectionInfo | None:
        f = self._dir(name) / _INFO_FILE
        return CollectionInfo.from_json(f.read_text()) if f.is_file() else None

    def _list(self) -> list[str]:
        if not self.root.is_dir():
            return []
        # ".creating-*" directories are creations a crash interrupted, not collections
        return [p.name for p in self.root.iterdir() if not p.name.startswith(".") and (p / _INFO_FILE).is_file()]

    def _load(self, name: str) -> None:
        self._shard(name)

    def _written(self, name: str, shard: Any) -> None:
        if time.monotonic() - self._last_flush.get(name, 0.0) >= self.flush_interval:
            shard.flush()
            self._last_flush[name] = time.monotonic()

    def _upsert(self, name: str, records: Sequence[Record]) -> None:
        q = self.q
        points = [q.Point(id=point_uuid(r.id), vector={VECTOR: r.vector.tolist()}, payload=_payload(r)) for r in records]
        shard = self._shard(name)
        with self._writing:
            shard.update(q.UpdateOperation.upsert_points(points))
            self._written(name, shard)

    def _search(self, name: str, vectors: np.ndarray, top_k: int, flt: dict[str, list[str]]) -> list[list[Hit]]:
        q = self.q
        f = self._filter(flt)
        reqs = [q.QueryRequest(limit=top_k, query=q.Query.Nearest(v.tolist(), using=VECTOR), filter=f, with_payload=True) for v in vectors]
        return [[_hit(p) for p in row] for row in self._shard(name).query_batch(q.QueryBatchRequest(reqs))]

    def _count(self, name: str, flt: dict[str, list[str]]) -> int:
        return int(self._shard(name).count(self.q.CountRequest(exact=True, filter=self._filter(flt))))

    def _existing_ids(self, name: str, ids: Sequence[str]) -> set[str]:
        by_uuid = {point_uuid(i): i for i in ids}
        found = self._shard(name).retrieve(list(by_uuid), with_payload=False, with_vector=False)
        return {by_uuid[str(r.id)] for r in found}

    def _get(self, name: str, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        found = self._shard(name).retrieve([point_uuid(i) for i in ids], with_payload=True, with_vector=False)
        return dict(_record(r) for r in found)

    def _vectors(self, name: str, ids: Sequence[str]) -> dict[str, np.ndarray]:
        by_uuid = {point_uuid(i): i for i in ids}
        found = self._shard(name).retrieve(list(by_uuid), with_payload=False, with_vector=True)
        return {by_uuid[str(r.id)]: _vector(r) for r in found}

    def _scroll(
        self, name: str, flt: dict[str, list[str]], cursor: Any, limit: int
    ) -> tuple[list[tuple[str, dict[str, Any]]], Any]:
        req = self.q.ScrollRequest(offset=cursor, limit=limit, filter=self._filter(flt), with_payload=True, with_vector=False)
        points, nxt = self._shard(name).scroll(req)
        return [_record(p) for p in points], (str(nxt) if nxt is not None else None)

    def _flush(self, name: str) -> None:
        shard = self._shard(name)
        with self._writing:
            shard.flush()
        self._last_flush[name] = time.monotonic()

    def _delete(self, name: str, ids: Sequence[str]) -> None:
        shard = self._shard(name)
        with self._writing:
            shard.update(self.q.UpdateOperation.delete_points([point_uuid(i) for i in ids]))
            self._written(name, shard)

    def _drop(self, name: str) -> None:
        self._lock()
        with self._shard_lock:
            shard = self._shards.pop(name, None)
        if shard is not None:
            shard.close()
        shutil.rmtree(self._dir(name))

    def _list_aliases(self) -> dict[str, str]:
        return self._aliases.read()

    def _alias_target(self, name: str) -> str | None:
        return self._aliases.target(name)  # one stat while the map is unchanged

    def _set_alias(self, alias: str, collection: str) -> None:
        self._lock()
        self._aliases.update({alias: collection})

    def _drop_alias(self, alias: str) -> None:
        self._lock()
        self._aliases.update(drop=(alias,))

    def close(self) -> None:
        try:
            with self._shard_lock:
                shards = list(self._shards.values())
                self._shards.clear()
            if shards:
                try:
                    self._writing.__enter__()
                    marked = True
                except OSError:  # no room even for the marker: close anyway, as a handle always did
                    marked = False
                try:
                    for shard in shards:
                        try:
                            shard.flush()
                        finally:
                            shard.close()
                finally:
                    if marked:
                        self._writing.__exit__(None)
        finally:  # whatever a shard did, the lock goes: a failed flush must not lock the store for good
            self._loaded.clear()
            self._unlock()


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
        self.local_path = Path(uri[len("local:") :]) if uri and uri.startswith("local:") else None
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
                    "one process at a time. Stop that process, or use a server backend that several processes share (a "
                    "Qdrant server: pass its URL as --uri)."
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
        from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

        if isinstance(exc, UnexpectedResponse):  # the server answered: only "busy" is worth asking again
            return exc.status_code in (429, 502, 503, 504)
        return super().is_transient(exc) or isinstance(exc, ResponseHandlingException)

    def translate_error(self, exc: BaseException) -> Exception | None:
        from qdrant_client.http.exceptions import UnexpectedResponse

        if isinstance(exc, UnexpectedResponse) and exc.status_code in (401, 403):
            source = self._api_key.source if self._api_key else "none was given"
            if exc.status_code == 401:
                return AuthenticationError(
                    f"the server at {self.display_uri} refused the credentials (API key from {source}); check the key, "
                    f"or set ${API_KEY_ENV[0]} / ${API_KEY_ENV[1]} (or *_FILE)"
                )
            return AuthenticationError(
                f"the server at {self.display_uri} accepted the API key (from {source}) but refused the request "
                "(403 forbidden): use a key with write access, or a read-only request"
            )
        return None

    def _filter(self, flt: dict[str, list[str]]) -> Any:
        return _must_match(self.models, flt)

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
        points = [m.PointStruct(id=point_uuid(r.id), vector={VECTOR: r.vector.tolist()}, payload=_payload(r)) for r in records]
        self.client.upsert(name, points=points, wait=True)

    def _search(self, name: str, vectors: np.ndarray, top_k: int, flt: dict[str, list[Any]]) -> list[list[Hit]]:
        m = self.models
        f = self._filter(flt)
        reqs = [m.QueryRequest(query=v.tolist(), using=VECTOR, limit=top_k, filter=f, with_payload=True) for v in vectors]
        return [[_hit(p) for p in res.points] for res in self.client.query_batch_points(name, requests=reqs)]

    def _count(self, name: str, flt: dict[str, list[Any]]) -> int:
        return int(self.client.count(name, count_filter=self._filter(flt), exact=True).count)

    def _existing_ids(self, name: str, ids: Sequence[str]) -> set[str]:
        by_uuid = {point_uuid(i): i for i in ids}
        found = self.client.retrieve(name, ids=list(by_uuid), with_payload=False, with_vectors=False)
        return {by_uuid[str(r.id)] for r in found}

    def _get(self, name: str, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        found = self.client.retrieve(name, ids=[point_uuid(i) for i in ids], with_payload=True, with_vectors=False)
        return dict(_record(r) for r in found)

    def _vectors(self, name: str, ids: Sequence[str]) -> dict[str, np.ndarray]:
        by_uuid = {point_uuid(i): i for i in ids}
        found = self.client.retrieve(name, ids=list(by_uuid), with_payload=False, with_vectors=[VECTOR])
        return {by_uuid[str(r.id)]: _vector(r) for r in found}

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
        return [_record(p) for p in points], nxt

    def _delete(self, name: str, ids: Sequence[str]) -> None:
        self.client.delete(name, points_selector=self.models.PointIdsList(points=[point_uuid(i) for i in ids]), wait=True)

    def _drop(self, name: str) -> None:
        self.client.delete_collection(name)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        self._loaded.clear()


def qdrant_backend(uri: str | None = None, **options: Any) -> Backend:
    """Pick the engine from the URI: server URL or ``local:`` -> qdrant-client, else Qdrant Edge."""
    if uri and (uri.startswith(("http://", "https://", "local:"))):
        return QdrantClientBackend(uri, **options)
    return QdrantEdgeBackend(uri, **options)


@hookimpl
def clair_vec_register_backends(register):
    register("qdrant", qdrant_backend)
