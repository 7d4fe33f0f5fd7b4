"""clair_vec: CLAIR cross-domain image retrieval for Milvus and Qdrant.

``clair_vec.index(collection, images, domain=...)`` embeds images with a trained CLAIR model, maps
them into the gallery domain and writes them through a backend plugin;
``clair_vec.search(collection, queries, domain=...)`` does the same for queries and returns hits.
The model side is imported lazily so that backend plugins (:mod:`clair_vec.plugin`) load without torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from clair_vec.store.hookspecs import hookimpl

__version__ = "0.1.0"
__all__ = ["hookimpl", "index", "search", "load_model", "get_backend", "Retriever", "__version__"]

if TYPE_CHECKING:  # pragma: no cover
    from clair_vec.retrieval.api import index, load_model, search
    from clair_vec.retrieval.retriever import Retriever
    from clair_vec.store.plugins import get_backend


def __getattr__(name: str) -> Any:
    if name in ("index", "search", "load_model", "Retriever"):
        from clair_vec.retrieval import api

        return getattr(api, name)
    if name == "get_backend":
        from clair_vec.store.plugins import get_backend

        return get_backend
    raise AttributeError(f"module 'clair_vec' has no attribute {name!r}")
