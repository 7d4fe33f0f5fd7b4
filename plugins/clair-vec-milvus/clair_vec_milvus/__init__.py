"""Milvus backend for clair_vec (pymilvus ``MilvusClient``).

``uri=None`` is a Milvus Lite store (``$CLAIR_VEC_MILVUS_URI`` or ``./clair_vec_milvus.db``);
``http://host:19530`` reaches a Milvus server (or a ``milvus-lite server`` process, which lets
several processes share one Lite store). Content-hash ids are the VARCHAR primary key, so
upserts are idempotent.

Consistency: the first read of a collection through a handle is Strong, which makes every
write that finished before it (an indexing run in another process) visible; later reads are
Session-consistent (this handle's own writes are always visible) and skip the Strong wait for
the server's next time tick, about 200 ms a query on a 2.3 standalone server.

Index, with no ``index_type`` given: on Milvus Lite a new collection is exact (FLAT) until the
flush that finds ``index_threshold`` rows (default 20,000) re-indexes it as HNSW (M 16,
efConstruction 200), once: Lite's FLAT answered 2.8 queries a second at 100k x 512-d, its HNSW
16 (ef 64) at recall@10 1.000. Lite's searches still cost time in proportion to the gallery
whatever the index (0.9 queries a second at 1M): a flush past 200,000 rows warns once. On a server a new collection is HNSW from the start, since a server
cannot change a loaded collection's index without releasing it under other clients
(``index_threshold=None`` keeps it FLAT), and a flush waits until the server has indexed what it
holds (up to ``index_timeout``, an hour): until then it answers from a temporary index of lower
recall. A ``milvus-lite server`` URI is a server here. ``index_type`` and ``index_params`` choose another
(``clair-vec index --backend-option index_type=IVF_FLAT``). Searches use the parameters of each
collection's own index, whichever handle created it (HNSW: ``ef`` 256, never below ``top_k``;
IVF: ``nprobe`` 16), unless ``search_params`` is given. Milvus Lite's IVF indexes returned fewer
hits than asked on small collections (4 of 32 at nlist 4, nprobe 4), so none is chosen
automatically. Measure with ``python -m clair_vec.benchmarks.ann``.

Credentials (servers only), the first found wins: option ``token`` (``user:password``), or
``user`` and ``password``; else the URI's user info (``http://user:password@host:19530``); else
``$CLAIR_VEC_MILVUS_TOKEN``, then ``$MILVUS_TOKEN`` (each also as ``*_FILE``, a file holding it).
Refused credentials raise :class:`~clair_vec.errors.AuthenticationError` at once, never
retried. ``db_name`` selects a database (default: the server's default database).

A server whose data node is registering again (its session lapsed on a loaded machine, or the
node restarted) answers a flush with "node not found" for a few seconds: the flush waits for it,
up to a minute, then says so.

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
