"""The search service's ASGI app over one collection: routes, limits, security, metrics and error
answers assembled around one open :class:`~clair_vec.retrieval.retriever.Retriever` (model and
backend opened once at start-up).

- ``POST /search`` and ``GET /similar/{id}`` (:mod:`~clair_vec.service.routes.search`),
  ``GET /images/{id}`` (:mod:`~clair_vec.service.routes.images`), ``GET /`` (the drawing page),
  and ``GET /info``, ``/labels``, ``/collections``, ``/healthz``, ``/readyz``, ``/metrics``
  (:mod:`~clair_vec.service.routes.status`); ``/docs`` only when asked for.
- Limits are :class:`~clair_vec.service.settings.ServiceSettings`; who may call is
  :mod:`~clair_vec.service.security`; every request is counted, timed and answered without a
  traceback or a secret by :mod:`~clair_vec.service.observe`; errors map to statuses in
  :mod:`~clair_vec.service.problems`.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from clair_vec.errors import ClairVecError, CollectionNotFoundError
from clair_vec.retrieval.retriever import Retriever
from clair_vec.service.context import ServiceContext
from clair_vec.service.follow import Follower
from clair_vec.service.observe import Edge
from clair_vec.service.problems import install_error_handlers
from clair_vec.service.routes import images, page, search, status
from clair_vec.service.schema import document
from clair_vec.service.security import Guard
from clair_vec.service.settings import ServiceSettings


def create_app(retriever: Retriever, collection: str, settings: ServiceSettings | None = None, **overrides: Any) -> FastAPI:
    """The ASGI app (FastAPI). ``retriever`` stays open for the app's lifetime; ``overrides`` are
    :class:`ServiceSettings` fields (``create_app(r, "g", max_upload_bytes=...)``)."""
    settings = dataclasses.replace(settings or ServiceSettings(), **overrides)
    ctx = ServiceContext(retriever, collection, settings)
    ctx.follower = Follower(ctx, settings.follow_interval_s)
    app = FastAPI(title="clair_vec", summary="Cross-domain image search", redoc_url=None,
                  docs_url="/docs" if settings.docs else None, openapi_url="/openapi.json" if settings.docs else None)  # fmt: skip
    app.state.clair = ctx
    app.openapi = lambda: document(app, ctx)  # type: ignore[method-assign]  # what FastAPI cannot infer
    install_error_handlers(app)
    routers = (search.router(ctx), images.router(ctx), page.router(), status.router(ctx))
    for r in routers:
        app.include_router(r)
    # metrics label requests by route template, known before routing (a 413 is refused before it)
    patterns = [(route.path_regex, route.path) for r in routers for route in r.routes]

    def route_of(path: str) -> str:
        return next((template for regex, template in patterns if regex.fullmatch(path)), "other")

    headers = [(b"x-served-by", f"{socket.gethostname()}:{os.getpid()}".encode())] if settings.replica_header else []
    app.add_middleware(Guard, api_key=settings.api_key, cors_origins=settings.cors_origins, allowed_hosts=settings.allowed_hosts)
    app.add_middleware(Edge, metrics=ctx.metrics, outage=ctx.outage, route_of=route_of,
                       max_upload_bytes=settings.max_upload_bytes, body_timeout=settings.body_timeout_s, headers=headers,
                       on_request=ctx.follower.start)  # fmt: skip
    return app


def open_retriever(model: str | Path | None, collection: str, *, backend: str | None, uri: str | None,
                   device: str | None = None, threads: int | None = None) -> Retriever:  # fmt: skip
    """Open model and backend and check the collection (or the collection an alias names), so a bad
    start fails before serving. ``threads``: torch threads of this process (None: torch's default)."""
    from clair_vec.method.devices import set_cpu_threads

    set_cpu_threads(threads)
    r = Retriever(model, backend=backend, uri=uri, device=device)
    try:
        r.collection(r.backend.resolve(collection))
    except CollectionNotFoundError as exc:
        r.close()
        raise ClairVecError(f"cannot serve: {exc}") from None
    except BaseException:
        r.close()
        raise
    return r
