"""``GET /``: the drawing page, one self-contained file (no CDN, no external script or font)."""

from __future__ import annotations

from importlib.resources import files

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

#: the page is one file with its script and style inline; it talks only to this service, draws on
#: canvases (data: and blob: images) and may not be framed by another site (clickjacking)
PAGE_HEADERS = {
    "content-security-policy": "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "img-src 'self' data: blob:; connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
}


def router() -> APIRouter:
    r = APIRouter()
    page = files("clair_vec.service").joinpath("web/index.html").read_text(encoding="utf-8")

    @r.get("/", include_in_schema=False)
    async def index():
        return HTMLResponse(page, headers=PAGE_HEADERS)

    return r
