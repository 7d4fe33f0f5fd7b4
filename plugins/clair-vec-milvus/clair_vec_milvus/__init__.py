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

Credentials (servers only), the first found wins: option ``token`` (``user:password``), or
``user`` and ``password``; else the URI's user info (``http://user:password@host:19530``); else
``$CLAIR_VEC_MILVUS_TOKEN``, then ``$MILVUS_TOKEN`` (each also as ``*_FILE``, a file holding it).
Refused credentials raise :class:`~clair_vec.errors.AuthenticationError` at once, never
retried. ``db_name`` selects a database (default: the server's default database).

Limits: ``top_k`` at most 16384 (the server's limit; Milvus Lite took 47 s for a top_k of 10^9
over 200 records, so the same bound holds there). Aliases are Milvus's own (create_alias /
alter_alias, atomic on the server).
"""

from __future__ import annotations

from clair_vec.plugin import hookimpl

from .backend import MilvusBackend
from .connection import DEFAULT_URI, GRPC_OPTIONS, TOKEN_ENV
from .search import expr, quote

__all__ = ["DEFAULT_URI", "GRPC_OPTIONS", "TOKEN_ENV", "MilvusBackend", "clair_vec_register_backends", "expr", "quote"]


@hookimpl
def clair_vec_register_backends(register):
    register("milvus", MilvusBackend)
