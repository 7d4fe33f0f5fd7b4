"""The search service's ASGI app over one collection: routes, limits, metrics and error answers
assembled around one open :class:`~clair_vec.retrieval.retriever.Retriever` (model and backend
opened once at start-up).

- ``POST /search`` (:mod:`~clair_vec.service.routes.search`), ``GET /images/{id}``
  (:mod:`~clair_vec.service.routes.images`), ``GET /`` (the drawing page), and ``GET /info``,
  ``/collections``, ``/healthz``, ``/readyz``, ``/metrics`` (:mod:`~clair_vec.service.routes.status`).
- Bad input is answered with a status and a message that names the problem, never a traceback
  (:mod:`~clair_vec.service.problems`); every request is counted and timed, and bodies over the
  limit are refused as they stream in (:mod:`~clair_vec.service.observe`).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from pathlib import Path

from fastapi import FastAPI

from clair_vec.errors import ClairVecError, CollectionNotFoundError
from clair_vec.retrieval.retriever import Retriever
from clair_vec.service.context import MAX_TOP_K, ServiceContext, ServiceSettings
from clair_vec.service.observe import Edge
from clair_vec.service.problems import install_error_handlers
from clair_vec.service.routes import images, page, search, status


def create_app(
    retriever: Retriever,
    collection: str,
    *,
    gallery_roots: Sequence[str | Path] | None = None,
    max_upload_bytes: int = 10 * 1024 * 1024,
    max_top_k: int = MAX_TOP_K,
) -> FastAPI:
    """The ASGI app (FastAPI). ``retriever`` stays open for the app's lifetime."""
    ctx = ServiceContext(retriever, collection, ServiceSettings(gallery_roots, max_upload_bytes, max_top_k))
    app = FastAPI(title="clair_vec", summary="Cross-domain image search", docs_url="/docs", redoc_url=None)
    install_error_handlers(app)
    routers = (search.router(ctx), images.router(ctx), page.router(), status.router(ctx))
    for r in routers:
        app.include_router(r)
    # metrics label requests by route template, known before routing (a 413 is refused before it)
    patterns = [(route.path_regex, route.path) for r in routers for route in r.routes]

    def route_of(path: str) -> str:
        return next((template for regex, template in patterns if regex.fullmatch(path)), "other")

    served_by = f"{socket.gethostname()}:{os.getpid()}"  # which replica answered, behind a load balancer
    app.add_middleware(Edge, metrics=ctx.metrics, route_of=route_of, max_upload_bytes=max_upload_bytes,
                       headers=[(b"x-served-by", served_by.encode())])  # fmt: skip
    return app


def open_retriever(model: str | Path | None, collection: str, *, backend: str | None, uri: str | None) -> Retriever:
    """Open model and backend and check the collection, so a bad start fails before serving."""
    r = Retriever(model, backend=backend, uri=uri)
    try:
        r.collection(collection)
    except CollectionNotFoundError as exc:
        r.close()
        raise ClairVecError(f"cannot serve: {exc}") from None
    except BaseException:
        r.close()
        raise
    return r
