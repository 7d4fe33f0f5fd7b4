"""What the service is and how it is: ``/info``, ``/collections``, ``/healthz``, ``/readyz``, ``/metrics``."""

from __future__ import annotations

import logging

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from clair_vec.method.devices import cpu_threads
from clair_vec.service.context import ServiceContext
from clair_vec.service.observe import database_problem
from clair_vec.service.schema import answers
from clair_vec.store.redaction import scrub

log = logging.getLogger("clair_vec.service")


def router(ctx: ServiceContext) -> APIRouter:
    r = APIRouter()

    @r.get("/info")
    async def info():
        serving = ctx.serving
        model = serving.model
        return {"collection": serving.collection, "alias": ctx.name if ctx.name != serving.collection else None,
                "model": model.model_id, "domains": model.domains, "gallery_domain": model.pivot,
                "query_domains": [d for d in model.domains if d != model.pivot], "max_top_k": ctx.settings.max_top_k,
                "max_upload_bytes": ctx.settings.max_upload_bytes, "max_labels": ctx.settings.max_labels,
                "backend": ctx.backend.name, "cpu_threads": cpu_threads()}  # fmt: skip

    @r.get("/labels", summary="labels and zero-shot tags stored in the collection (for the filter on the page)",
           responses=answers(503))  # fmt: skip
    async def labels():
        return await run_in_threadpool(ctx.labels)

    @r.get("/collections", responses=answers(503))
    async def collections():
        names = await run_in_threadpool(ctx.retriever.list_collections)
        return {"collections": names, "serving": ctx.serving.collection, "backend": ctx.backend.name}

    @r.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @r.get("/readyz", responses={503: {"description": "not ready: the vector database does not answer", "content": {
        "application/json": {"schema": {"type": "object", "properties": {"status": {"const": "unavailable"},
                                                                          "detail": {"type": "string"}}}}}}})  # fmt: skip
    async def readyz():
        serving = ctx.serving
        try:
            n = await run_in_threadpool(serving.retriever.count, serving.collection)
        except Exception as exc:  # not ready is an answer, not an error
            known = database_problem(exc)
            if known is not None:
                ctx.outage.failed_call(exc)
            else:
                log.warning("/readyz: %s", scrub(f"{type(exc).__name__}: {exc}"))
            detail = known[1] if known is not None else "the service cannot count its collection; the service's log says why"
            return JSONResponse({"status": "unavailable", "detail": detail}, status_code=503, headers={"retry-after": "5"})
        ctx.outage.ok()
        return {"status": "ready", "model": serving.model.model_id, "collection": serving.collection, "count": n}

    @r.get("/metrics", include_in_schema=False)
    async def metrics():
        serving = ctx.serving
        try:
            ctx.metrics.gallery.labels(ctx.name).set(await run_in_threadpool(serving.retriever.count, serving.collection))
        except Exception as exc:  # the gauge keeps its last value while the database is away
            if database_problem(exc) is None:
                log.warning("gallery size unavailable for /metrics: %s", scrub(f"{type(exc).__name__}: {exc}"))
        body, ctype = ctx.metrics.exposition()
        return Response(body, media_type=ctype)

    return r
