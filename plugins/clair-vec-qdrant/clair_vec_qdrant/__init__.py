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

from typing import Any

from clair_vec.plugin import Backend, hookimpl

from .client import QdrantClientBackend
from .edge import QdrantEdgeBackend
from .points import VECTOR
from .uri import API_KEY_ENV, DEFAULT_PATH, uses_client

# what code imports from the package itself, wherever it is defined
__all__ = ["API_KEY_ENV", "DEFAULT_PATH", "VECTOR", "QdrantClientBackend", "QdrantEdgeBackend", "qdrant_backend"]


def qdrant_backend(uri: str | None = None, **options: Any) -> Backend:
    """Pick the engine from the URI: server URL or ``local:`` -> qdrant-client, else Qdrant Edge."""
    if uses_client(uri):
        return QdrantClientBackend(uri, **options)
    return QdrantEdgeBackend(uri, **options)


@hookimpl
def clair_vec_register_backends(register):
    register("qdrant", qdrant_backend)
