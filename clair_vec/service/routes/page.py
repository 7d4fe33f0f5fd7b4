"""``GET /``: the drawing page, one self-contained file (no CDN, no external script or font)."""

from __future__ import annotations

from importlib.resources import files

from fastapi import APIRouter
from fastapi.responses import HTMLResponse


def router() -> APIRouter:
    r = APIRouter()
    page = files("clair_vec.service").joinpath("web/index.html").read_text(encoding="utf-8")

    @r.get("/", include_in_schema=False)
    async def index():
        return HTMLResponse(page)

    return r
