"""What every promise family of the suite shares: the records it writes (:func:`make_records`), the
names it gives (all starting with :data:`PREFIX`, so a cleanup can sweep them), how it opens a
backend and runs an action in a freshly spawned process, and :class:`Promises`, the base of each
family's mixin. It holds no promise itself."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import socket
import traceback
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any, ClassVar
from urllib.parse import quote, urlsplit, urlunsplit

import numpy as np

from clair_vec.errors import StoreLockedError
from clair_vec.store.backend import Backend, CollectionInfo, Record

DIM = 16
#: every name the suite gives a collection or an alias starts with this (cleanup sweeps it)
PREFIX = "conformance_"


@dataclass
class FreshNamespace:
    """An empty namespace on a server (a Milvus database, a schema, a tenant) for the promise
    that opening a backend and reading from it creates nothing there. ``contents()`` lists
    everything in the namespace (collections, aliases...) with the server's own client."""

    uri: str | None
    options: dict[str, Any] = field(default_factory=dict)
    contents: Callable[[], list[str]] = list


def unreachable_like(uri: str | None) -> str | None:
    """``uri``'s kind on a free loopback port, where nothing listens: for an ``http(s)``, ``grpc``
    or ``tcp`` URI; None for anything else (an embedded store's path)."""
    parts = urlsplit(uri or "")
    if parts.scheme in ("http", "https", "grpc", "tcp") and parts.netloc:
        return urlunsplit((parts.scheme, f"127.0.0.1:{_free_port()}", parts.path, "", ""))
    return None


def with_userinfo(uri: str | None, userinfo: str) -> str | None:
    """A server URI (``http(s)``/``grpc``) with ``user:password@`` in it; None for anything else."""
    if not uri or urlsplit(uri).scheme not in ("http", "https", "grpc", "grpcs") or not urlsplit(uri).hostname:
        return None
    parts = urlsplit(uri)
    return urlunsplit(parts._replace(netloc=f"{quote(userinfo, safe=':')}@{parts.netloc.rpartition('@')[2]}"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _short(ids: Any) -> str:
    return "[" + ", ".join(str(i)[:8] for i in ids) + "]"


def make_records(n: int, *, seed: int = 0, dim: int = DIM, prefix: str = "r") -> list[Record]:
    """Records with content-hash-like ids: random, so insertion order is not key order (an engine
    that pages in storage order would look right with sorted ids and lose records with real ones)."""
    rng = np.random.default_rng(seed)
    vecs = rng.normal(size=(n, dim)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    domains = ("photo", "sketch")
    return [
        Record(hashlib.sha256(f"{prefix}|{seed}|{i}".encode()).hexdigest()[:32], vecs[i],
               {"domain": domains[i % 2], "label": f"c{i % 5}", "path": f"/img/{prefix}{i}.png", "pseudo_label": f"p{i % 3}"})  # fmt: skip
        for i in range(n)
    ]


def open_backend(name: str, uri: str | None, options: dict[str, Any] | None = None) -> Backend:
    """Open a backend by its registered name, as ``clair_vec.get_backend`` does for users; its
    calls are noted, so a promise that breaks says which call it was making (:mod:`.tracing`)."""
    from clair_vec.store.plugins import get_backend
    from clair_vec.store.testing.tracing import traced

    return traced(get_backend(name, uri, **(options or {})))


def _child(name: str, uri: str | None, options: dict[str, Any], action: str, args: dict[str, Any]) -> dict[str, Any]:
    """Runs in a spawned process: open the backend afresh, do ``action``, report plain data."""
    try:
        be = open_backend(name, uri, options)
    except Exception as exc:
        return {"error": type(exc).__name__, "message": str(exc), "is_locked": isinstance(exc, StoreLockedError)}
    try:
        c = args.get("collection")
        if action == "write":
            records = [Record(i, np.asarray(v, np.float32), p) for i, v, p in args["records"]]
            written = be.upsert(c, records)
            be.flush(c)
            return {"written": written, "shared": be.shared}
        if action == "set_alias":
            be.set_alias(args["alias"], c)
            return {"aliases": be.aliases()}
        if action == "read":
            q = np.asarray(args["query"], np.float32)
            info = be.open_collection(c)
            hits = be.search(c, q, top_k=args["top_k"])
            return {
                "info": json.loads(info.to_json()),
                "count": be.count(c),
                "hits": [[(h.id, h.score) for h in row] for row in hits],
                "existing": sorted(be.existing_ids(c, args["ids"])),
                "payloads": be.get(c, args["ids"]),
            }
        if action == "count":
            return {"count": be.count(c)}
        raise ValueError(action)
    except Exception as exc:
        return {"error": type(exc).__name__, "message": str(exc), "trace": traceback.format_exc()}
    finally:
        be.close()


def in_new_process(name: str, uri: str | None, options: dict[str, Any], action: str, **args: Any) -> dict[str, Any]:
    """Run one suite action in a freshly spawned interpreter (no state shared with this one)."""
    ctx = multiprocessing.get_context("spawn")
    # the child unpickles _child by its module path, so it must stay a module-level function here
    with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        return pool.submit(_child, name, uri, options, action, args).result(timeout=300)


def _drop_all(be: Backend, names: list[str], alias_prefix: str) -> None:
    """Drop the aliases that start with ``alias_prefix`` or point at ``names``, then ``names``."""
    for alias, target in be.aliases().items():
        if alias.startswith(alias_prefix) or target in names:
            be.drop_alias(alias)
    for name in names:
        be.drop_collection(name)


class Promises:
    """The base of every family's mixin. The values are :class:`BackendConformance`'s (and a
    plugin's subclass's); declared here so that each family reads on its own."""

    backend_name: ClassVar[str]
    dim: int
    failure_deadline: ClassVar[float]

    def _fill(self, backend: Backend, name: str, n: int, seed: int, made: list[str]) -> list[Record]:
        backend.create_collection(CollectionInfo(name, self.dim, "test-model"))
        made.append(name)
        records = make_records(n, seed=seed, dim=self.dim, prefix=f"s{seed}")
        assert backend.upsert(name, records) == n
        return records
