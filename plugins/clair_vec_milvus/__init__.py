"""Milvus backend for clair_vec (pymilvus ``MilvusClient``).

``uri=None`` is a Milvus Lite store (``$CLAIR_VEC_MILVUS_URI`` or ``./clair_vec_milvus.db``);
``http://host:19530`` reaches a Milvus server (or a ``milvus-lite server`` process, which lets
several processes share one Lite store). Content-hash ids are the VARCHAR primary key, so
upserts are idempotent.

Consistency: the first read of a collection through a handle is Strong, which makes every
write that finished before it (an indexing run in another process) visible; later reads are
Session-consistent (this handle's own writes are always visible) and skip the Strong wait for
the server's next time tick, about 200 ms a query on a 2.3 standalone server.

Index: exact (FLAT) by default, on Lite and servers alike: searches agree with brute-force
cosine ranking, and a server's default AUTOINDEX gave recall@10 of 0.14-0.16 at 20k x 512-d
(``python -m clair_vec.benchmarks.backends --uri ...``). Large galleries pass ``index_type="HNSW"``
with ``index_params`` / ``search_params`` and measure their recall with the same benchmark.

Credentials (servers only): option ``token`` (``user:password``), or ``user`` and ``password``,
else ``$CLAIR_VEC_MILVUS_TOKEN``, then ``$MILVUS_TOKEN`` (each also as ``*_FILE``, a file holding
it). Refused credentials raise :class:`~clair_vec.errors.AuthenticationError` at once, never
retried. ``db_name`` selects a database (default: the server's default database).

Limits: ``top_k`` at most 16384 (the server's limit; Milvus Lite took 47 s for a top_k of 10^9
over 200 records, so the same bound holds there). Aliases are Milvus's own (create_alias /
alter_alias, atomic on the server).
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from clair_vec.errors import (
    AuthenticationError,
    BackendUnavailableError,
    CollectionMismatchError,
    StoreLockedError,
)
from clair_vec.store.backend import Backend, CollectionInfo, Hit, Record
from clair_vec.store.credentials import NO_SECRET, Secret, find_secret
from clair_vec.store.hookspecs import hookimpl
from clair_vec.store.redaction import register_secret, scrub

DEFAULT_URI = "./clair_vec_milvus.db"
TOKEN_ENV = ("CLAIR_VEC_MILVUS_TOKEN", "MILVUS_TOKEN")
_FIELDS = ("domain", "label", "path")
#: scalar fields and the dynamic-field map: every payload key, never the stored vector
_OUTPUT = [*_FIELDS, "$meta"]
#: open handles per Lite store in this process: pymilvus never stops the in-process Lite server
#: (nor releases its file lock) on close, so the last handle to close stops it
_lite_handles: Counter[str] = Counter()
_lite_lock = threading.Lock()
# pymilvus pings every 10 s even with no call in flight; gRPC servers (milvus-lite's among them)
# answer an idle client that pings more often than every 5 minutes with GOAWAY "too_many_pings",
# and the next call on that channel fails. Ping only while calls are in flight, and rarely.
GRPC_OPTIONS = {"grpc.keepalive_time_ms": 300_000, "grpc.keepalive_permit_without_calls": False}



class _DropUnimplementedProbe(logging.Filter):
    """Milvus Lite serves gRPC inside this process and logs a traceback each time pymilvus probes
    its unimplemented AllocTimestamp RPC; pymilvus ignores that answer (``@ignore_unimplemented``),
    so the traceback is noise. Only that one kind of record is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], NotImplementedError))


_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"})


def quote(value: str) -> str:
    """A Milvus expression string literal. Milvus Lite rejects ``\\u``/``\\x`` escapes (so JSON's
    ``\\u00e9`` for ``é`` fails there) and a raw line break; Lite and the 2.3 server both take
    these five escapes and every other character, other control characters included, as is."""
    return '"' + value.translate(_ESCAPES) + '"'


def expr(flt: dict[str, list[str]]) -> str:
    return " and ".join(f"{k} in [{', '.join(quote(v) for v in vs)}]" for k, vs in flt.items())


def _is_lite(uri: str) -> bool:
    return uri.endswith(".db")  # pymilvus' own rule: a path ending in .db is a Milvus Lite store


def _rpc_code(exc: BaseException) -> Any:
    """The gRPC status code behind a pymilvus error (it wraps the RpcError as its cause)."""
    import grpc

    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, grpc.RpcError) and hasattr(exc, "code"):
            return exc.code()
        exc = exc.__cause__ or exc.__context__
    return None


def _locked_by_another_process(path: Path) -> bool:
    """Whether Milvus Lite's advisory lock on ``path`` is held by another process right now."""
    from milvus_lite.server_manager import server_manager_instance

    lock = path / "LOCK"
    if not lock.exists() or os.path.abspath(path) in getattr(server_manager_instance, "_servers", {}):
        return False  # no store yet, or this process serves it already (flock would conflict with ourselves)
    with open(lock, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
    return False


class MilvusBackend(Backend):
    name = "milvus"
    max_top_k = 16384

    def __init__(
        self,
        uri: str | None = None,
        *,
        token: str | None = None,
        user: str = "",
        password: str | None = None,
        db_name: str = "",
        timeout: float = 10.0,
        index_type: str = "FLAT",
        index_params: dict[str, Any] | None = None,
        search_params: dict[str, Any] | None = None,
        load_timeout: float = 120.0,
        **options: Any,
    ) -> None:
        uri = uri or os.environ.get("CLAIR_VEC_MILVUS_URI") or DEFAULT_URI
        register_secret(token)
        register_secret(password)
        super().__init__(uri, **options)
        self.lite = _is_lite(uri)
        self.index_type = index_type
        self.index_params = dict(index_params or {})
        self.search_params = dict(search_params or {})
        self.load_timeout = load_timeout
        self.db_name = db_name
        self._timeout = timeout
        self._credential = self._find_credential(token, user, password)
        self._client: Any = None
        self._connect_lock = threading.Lock()
        if self.lite:
            grpc_log = logging.getLogger("grpc._server")
            if not any(isinstance(f, _DropUnimplementedProbe) for f in grpc_log.filters):
                grpc_log.addFilter(_DropUnimplementedProbe())
            if Path(uri).exists():  # an existing store opens now, so a lock conflict shows at once
                self._connect()
        else:
            self._connect()

    # ------------------------------------------------------------------ connection
    def _find_credential(self, token: str | None, user: str, password: str | None) -> Secret:
        if self.lite:  # an embedded store has no users
            return NO_SECRET
        if password:
            if not user:
                raise ValueError("option password needs option user (or pass token='user:password')")
            register_secret(f"{user}:{password}")
            return Secret(f"{user}:{password}", "options user/password")
        return find_secret(token, "token", TOKEN_ENV)

    def _connect(self) -> Any:
        if self._client is not None:
            return self._client
        from pymilvus import MilvusClient

        with self._connect_lock:  # two threads of one handle must not open two clients
            if self._client is not None:
                return self._client
            # checked first, so the user gets this message rather than milvus_lite's logged traceback
            if self.lite and _locked_by_another_process(Path(self.uri)):
                raise self._locked()
            try:
                client = MilvusClient(uri=self.uri, token=self._credential.value, db_name=self.db_name, timeout=self._timeout,
                                      grpc_options=GRPC_OPTIONS)  # fmt: skip
            except Exception as exc:
                if self.lite and _locked_by_another_process(Path(self.uri)):
                    raise self._locked() from exc
                raise self._connect_error(exc) from exc
            if self.lite:
                with _lite_lock:
                    _lite_handles[os.path.abspath(self.uri)] += 1
            self._client = client
        return self._client

    def _connect_error(self, exc: Exception) -> Exception:
        refused = self._refused(exc)
        if refused is not None:
            return refused
        hint = (
            "pass the path of a Milvus Lite store (e.g. gallery.db)"
            if self.lite
            else "start the server, check the address, or pass a local path ending in .db to use embedded Milvus Lite"
        )
        return BackendUnavailableError(f"cannot reach Milvus at {self.display_uri!r}: {scrub(str(exc))}. {hint}.")

    def _refused(self, exc: BaseException) -> AuthenticationError | None:
        """The AuthenticationError for a server's "unauthenticated" / "permission denied" answer."""
        import grpc

        code = _rpc_code(exc)
        text = str(exc).lower()
        if code == grpc.StatusCode.UNAUTHENTICATED or "auth check failure" in text:
            given = (
                f"from {self._credential.source}"
                if self._credential
                else f"none were given: pass option token, or set ${TOKEN_ENV[0]} or ${TOKEN_ENV[1]} (or *_FILE)"
            )
            return AuthenticationError(
                f"the server at {self.display_uri} refused the credentials ({given}); check the user name and "
                f"password in the token (user:password) and that this user exists on the server (db {self.db_name or 'default'!r})"
            )
        if code == grpc.StatusCode.PERMISSION_DENIED or "permission deny" in text or "privilege" in text:
            return AuthenticationError(
                f"the server at {self.display_uri} accepted the credentials (from {self._credential.source}) but refused "
                "this user the request (permission denied); grant the user's role the privilege, or use another user"
            )
        return None

    def translate_error(self, exc: BaseException) -> Exception | None:
        from pymilvus.exceptions import MilvusException

        refused = self._refused(exc)
        if refused is not None:
            return refused
        if isinstance(exc, MilvusException):
            text = str(exc)
            if "Retry timeout" in text or "Retry run out" in text:  # pymilvus has retried for the whole timeout
                return BackendUnavailableError(
                    f"Milvus at {self.display_uri} did not answer within {self._timeout:g} s (option timeout): "
                    f"{scrub(text)}. Check that the server runs and is reachable."
                )
            if "topk" in text.lower() and "invalid" in text.lower():
                return ValueError(f"the Milvus server at {self.display_uri} refused top_k: {scrub(text)}; ask for fewer hits")
        return None

    def _locked(self) -> StoreLockedError:
        return StoreLockedError(
            f"Milvus Lite store {self.uri!r} is locked by another process: Milvus Lite opens a store in one "
            "process at a time. Stop that process, or use a server backend that several processes share: serve "
            f"this store with `milvus-lite server --data-dir {self.uri} --port PORT` and pass --uri "
            "http://127.0.0.1:PORT, or use a Milvus server."
        )

    @property
    def client(self) -> Any:
        return self._connect()

    @property
    def shared(self) -> bool:
        return not self.lite

    @property
    def storage_path(self) -> Path | None:
        return Path(self.uri) if self.lite else None

    def _exists(self) -> bool:
        """False for a Lite store that was never created: reads then find nothing, and create nothing."""
        return self._client is not None or not self.lite or Path(self.uri).exists()

    def is_transient(self, exc: BaseException) -> bool:
        import grpc
        from pymilvus.exceptions import MilvusException

        if isinstance(exc, grpc.RpcError) and hasattr(exc, "code"):
            return exc.code() in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE,
                                  grpc.StatusCode.RESOURCE_EXHAUSTED)  # fmt: skip
        text = str(exc).lower()
        return super().is_transient(exc) or (
            isinstance(exc, MilvusException) and any(w in text for w in ("timeout", "deadline", "unavailable", "rate limit"))
        )

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

    # ------------------------------------------------------------------ primitives
    def _create(self, info: CollectionInfo) -> None:
        from pymilvus import DataType

        client = self.client
        schema = client.create_schema(auto_id=False, enable_dynamic_field=True, description="clair_vec collection")
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=128)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=info.dim)
        schema.add_field("domain", DataType.VARCHAR, max_length=128)
        schema.add_field("label", DataType.VARCHAR, max_length=512)
        schema.add_field("path", DataType.VARCHAR, max_length=4096)
        index = client.prepare_index_params()
        index.add_index(field_name="vector", index_type=self.index_type, metric_type="COSINE", params=self.index_params)
        # the spec travels in the collection's properties, set in the same call that creates it,
        # so no collection exists without one
        client.create_collection(
            info.name, schema=schema, index_params=index, consistency_level="Strong", properties={"clair_vec": info.to_json()}
        )

    def _read_info(self, name: str) -> CollectionInfo | None:
        if not self._exists() or not self.client.has_collection(name):
            return None
        props = self.client.describe_collection(name).get("properties") or {}
        try:
            return CollectionInfo.from_json(props["clair_vec"])
        except (KeyError, ValueError, TypeError) as exc:
            raise CollectionMismatchError(
                f"Milvus collection {name!r} was not created by clair_vec (it has no clair_vec property); "
                "choose another collection name"
            ) from exc

    def _list(self) -> list[str]:
        return list(self.client.list_collections()) if self._exists() else []

    def _load(self, name: str) -> None:
        """Load the collection (a new process or a restarted server finds it released or still
        loading), wait a bounded time for it, then sync once with a Strong read."""
        from pymilvus.client.types import LoadState

        client = self.client
        deadline = time.monotonic() + self.load_timeout
        state = client.get_load_state(name)["state"]
        if state == LoadState.NotLoad:
            client.load_collection(name, timeout=self.load_timeout)
        while client.get_load_state(name)["state"] != LoadState.Loaded:
            if time.monotonic() > deadline:
                raise BackendUnavailableError(
                    f"Milvus collection {name!r} at {self.display_uri} is still not loaded after {self.load_timeout:.0f} s "
                    "(a server that just restarted loads its collections first); retry, or raise load_timeout"
                )
            time.sleep(0.5)
        self._sync(name)

    def _sync(self, name: str) -> None:
        """One Strong read: every write acknowledged before it, in any process, is visible to this
        handle's later Session reads."""
        self.client.query(name, filter="", output_fields=["count(*)"], consistency_level="Strong")

    def _upsert(self, name: str, records: Sequence[Record]) -> None:
        rows = []
        for r in records:
            row = {k: v for k, v in r.payload.items() if v is not None}
            row.update({f: "" if r.payload.get(f) is None else str(r.payload[f]) for f in _FIELDS})
            row.update(id=r.id, vector=r.vector.tolist())
            rows.append(row)
        # a 4096-row batch can take longer than a one-row call under load: the deadline grows with the batch
        timeout = self._timeout + 0.005 * len(rows) * max(1.0, len(rows[0]["vector"]) / 512)
        self.client.upsert(name, data=rows, timeout=timeout)

    def _search(self, name: str, vectors: np.ndarray, top_k: int, flt: dict[str, list[str]]) -> list[list[Hit]]:
        results = self._reading(name, lambda: self.client.search(
            name, data=vectors.tolist(), filter=expr(flt), limit=top_k, output_fields=_OUTPUT,
            search_params={"metric_type": "COSINE", **self.search_params}, consistency_level="Session"))  # fmt: skip
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

    def _flush(self, name: str) -> None:
        self.client.flush(name)

    def _delete(self, name: str, ids: Sequence[str]) -> None:
        self.client.delete(name, ids=list(ids))
        # a 2.3 server's delete response carries no timestamp, so Session reads would not see it
        self._sync(name)

    def _drop(self, name: str) -> None:
        self.client.drop_collection(name)

    # ------------------------------------------------------------------ aliases (Milvus's own)
    def _alias_names(self) -> list[str]:
        return list(self.client.list_aliases().get("aliases") or []) if self._exists() else []

    def _list_aliases(self) -> dict[str, str]:
        found = {}
        for alias in self._alias_names():
            target = self._alias_target(alias)
            if target is not None:
                found[alias] = target
        return found

    def _alias_target(self, name: str) -> str | None:
        from pymilvus.exceptions import MilvusException

        if name not in self._alias_names():  # listing first: describing a non-alias logs an RPC error
            return None
        try:
            return str(self.client.describe_alias(name)["collection_name"])
        except MilvusException:  # dropped meanwhile
            return None

    def _set_alias(self, alias: str, collection: str) -> None:
        from pymilvus.exceptions import MilvusException

        if alias in self._alias_names():
            self.client.alter_alias(collection, alias)
            return
        try:
            self.client.create_alias(collection, alias)
        except MilvusException as exc:
            if "exist" not in str(exc).lower():
                raise
            self.client.alter_alias(collection, alias)  # another process created it meanwhile: move it

    def _drop_alias(self, alias: str) -> None:
        self.client.drop_alias(alias)

    def close(self) -> None:
        if self._client is None:
            return
        try:
            self._client.close()
        except Exception:  # closing an already closed Lite handle is harmless
            pass
        self._client = None
        self._loaded.clear()
        if self.lite:
            path = os.path.abspath(self.uri)
            with _lite_lock:
                _lite_handles[path] -= 1
                last = _lite_handles[path] <= 0
                if last:
                    del _lite_handles[path]
            if last:  # lets another process open the store once this one has let go of it
                from milvus_lite.server_manager import server_manager_instance

                server_manager_instance.release_server(path)


def _payload(entity: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in entity.items() if k not in ("vector", "id")}


@hookimpl
def clair_vec_register_backends(register):
    register("milvus", MilvusBackend)
