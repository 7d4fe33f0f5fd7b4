"""``POST /search`` (an image, text, stored ids, or any weighted mix; see
:mod:`clair_vec.service.requests`) and ``GET /similar/{id}`` (more like a stored record).

Each answers ``{"hits": [{"id", "score", "path", "label", "domain", ..., "image_url"}], "took_ms"}``.
Requests are read and their images decoded off the event loop, then handed to the batcher, which
serves concurrent searches together; each gets exactly its own hits.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from clair_vec.errors import (
    BackendError,
    CapabilityError,
    ClairVecError,
    CorruptImageError,
    RecordNotFoundError,
    UnknownDomainError,
)
from clair_vec.retrieval.queries import QueryError, empty_filter_note
from clair_vec.service.batcher import Overloaded
from clair_vec.service.context import ServiceContext
from clair_vec.service.observe import database_problem
from clair_vec.service.problems import HTTPProblem
from clair_vec.service.requests import MAX_OFFSET, SearchRequest, decode_upload, integer, number, read_search, strings
from clair_vec.service.schema import answers
from clair_vec.store.redaction import scrub

log = logging.getLogger("clair_vec.service")


def router(ctx: ServiceContext) -> APIRouter:
    r = APIRouter()
    settings = ctx.settings

    async def answer(read: Any, exclude: frozenset[str] = frozenset()) -> JSONResponse:
        t0 = time.perf_counter()
        serving = ctx.serving  # this request's collection and model, whatever an alias does meanwhile
        batcher = ctx.batcher
        try:
            batcher.check_room()
        except Overloaded as exc:
            raise HTTPProblem(503, f"the service is busy ({exc}); retry in a second", {"retry-after": "1"}) from None
        batcher.arriving += 1
        ctx.metrics.inflight.inc()
        try:
            try:
                req: SearchRequest = await read()
                images = [await run_in_threadpool(decode_upload, data) for data, _, _ in req.images]
                if req.domain is not None and req.domain not in serving.model.domains:
                    raise HTTPProblem(422, f"unknown domain {req.domain!r}: this model knows {serving.model.domains}")
                for n, (_, domain, _) in enumerate(req.images):
                    if not domain:
                        raise HTTPProblem(422, f"domain is required with an image: one of {serving.model.domains}"
                                               + (f" (image #{n})" if len(req.images) > 1 else ""))  # fmt: skip
                query = req.query(images, exclude)
            finally:
                batcher.arriving -= 1
            hits = await batcher.submit((serving, query))
        except Exception as exc:
            raise _problem(exc, ctx) from None
        finally:
            ctx.metrics.inflight.dec()
        ctx.outage.ok()
        body = [{**h.payload, "path": ctx.display_path(h.payload.get("path")), "id": h.id, "score": round(h.score, 6),
                 "image_url": f"images/{h.id}"} for h in hits]  # fmt: skip
        answer = {"hits": body, "took_ms": round(1000 * (time.perf_counter() - t0), 2)}
        if not hits and query.filter:  # say why nothing came back when the filter itself matches nothing
            note = await run_in_threadpool(empty_filter_note, serving.retriever, serving.collection, query.filter)
            if note:
                answer["note"] = note
        return JSONResponse(answer)

    @r.post("/search", summary="search with an image, text, stored hits, or a weighted mix (multipart or JSON)",
            responses=answers(400, 404, 408, 413, 415, 422, 503))  # fmt: skip
    async def search(request: Request):
        return await answer(lambda: read_search(request, settings))

    @r.get("/similar/{rid}", summary="more like a stored record", responses=answers(404, 422, 503))
    async def similar(
        request: Request,
        rid: str,
        top_k: str | None = None,
        offset: str | None = None,
        min_score: str | None = None,
        label: list[str] = Query(default=[]),  # noqa: B008 - FastAPI's way to take a repeated query parameter
    ):
        async def read() -> SearchRequest:
            repeated = [k for k in ("top_k", "offset", "min_score") if len(request.query_params.getlist(k)) > 1]
            if repeated:  # FastAPI would keep the last silently
                raise HTTPProblem(422, f"the query string has {repeated[0]!r} more than once; it takes one value")
            return SearchRequest(ids=[(rid, 1.0)], top_k=integer(top_k, "top_k", 1, settings.max_top_k, 10),
                                 offset=integer(offset, "offset", 0, MAX_OFFSET, 0), min_score=number(min_score, "min_score", -1, 1),
                                 labels=strings(label, '"label"', settings.max_labels, settings.max_text_chars))  # fmt: skip

        return await answer(read, exclude=frozenset({rid}))  # the record itself is not news

    return r


def _problem(exc: Exception, ctx: ServiceContext) -> HTTPProblem:
    """The answer for what a search failed with; nothing else is raised from a search."""
    if isinstance(exc, HTTPProblem):
        return exc
    known = database_problem(exc)
    if known is not None:
        ctx.outage.failed_call(exc)
        return HTTPProblem(known[0], known[1], {"retry-after": "5"})
    if isinstance(exc, RecordNotFoundError):
        return HTTPProblem(404, str(exc))
    if isinstance(exc, CapabilityError):
        return HTTPProblem(422, f"{exc}; search with images or text instead")
    if isinstance(exc, CorruptImageError):
        return HTTPProblem(400, f"the upload is not an image the service can read: {exc.reason}")
    if isinstance(exc, (QueryError, UnknownDomainError, ValueError)):
        return HTTPProblem(422, str(exc))
    if isinstance(exc, (BackendError, ClairVecError)):  # the driver's words stay in the operator's log
        log.error("search failed: %s", scrub(f"{type(exc).__name__}: {exc}"))
        return HTTPProblem(500, "the search failed in the vector database; the service's log says why")
    raise exc
