"""What the service is and how it is: ``/info``, ``/collections``, ``/healthz``, ``/readyz``, ``/metrics``."""

from __future__ import annotations

import logging

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from clair_vec.service.context import ServiceContext

log = logging.getLogger("clair_vec.service")


def router(ctx: ServiceContext) -> APIRouter:
    r = APIRouter()
    model, retriever, collection = ctx.model, ctx.retriever, ctx.collection

    @r.get("/info")
    async def info():
        return {"collection": collection, "model": model.model_id, "domains": model.domains, "gallery_domain": model.pivot,
                "query_domains": [d for d in model.domains if d != model.pivot], "max_top_k": ctx.settings.max_top_k,
                "max_upload_bytes": ctx.settings.max_upload_bytes}  # fmt: skip

    @r.get("/collections")
    async def collections():
        names = await run_in_threadpool(retriever.list_collections)
        return {"collections": names, "serving": collection, "backend": retriever.backend.name}

    @r.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @r.get("/readyz")
    async def readyz():
        try:
            n = await run_in_threadpool(retriever.count, collection)
        except Exception as exc:  # not ready is an answer, not an error
            return JSONResponse({"status": "unavailable", "detail": f"{type(exc).__name__}: {exc}"}, status_code=503)
        return {"status": "ready", "model": model.model_id, "collection": collection, "count": n}

    @r.get("/metrics", include_in_schema=False)
    async def metrics():
        try:
            ctx.metrics.gallery.labels(collection).set(await run_in_threadpool(retriever.count, collection))
        except Exception:  # the gauge keeps its last value while the database is away
            log.warning("gallery size unavailable for /metrics", exc_info=True)
        body, ctype = ctx.metrics.exposition()
        return Response(body, media_type=ctype)

    return r
