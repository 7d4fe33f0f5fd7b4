"""``GET /images/{id}``: a JPEG thumbnail of a hit (see :mod:`clair_vec.service.thumbnails`)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from clair_vec.service.context import ServiceContext
from clair_vec.service.problems import HTTPProblem
from clair_vec.service.schema import answers
from clair_vec.service.thumbnails import THUMB_SIZES


def router(ctx: ServiceContext) -> APIRouter:
    r = APIRouter()

    @r.get("/images/{rid}", summary="thumbnail of a stored image", responses=answers(404, 422, 503))
    async def image(rid: str, size: int = 160):
        if size not in THUMB_SIZES:
            raise HTTPProblem(422, f"size must be one of {list(THUMB_SIZES)}")
        data = await run_in_threadpool(ctx.thumbnails.get, rid, size)
        # browsers revalidate: a gallery file deleted or replaced since is a 404, not an old picture
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "no-cache"})

    return r
