"""Reading a search request: a multipart form or a JSON body with the image base64-encoded, and
the image itself, refused before decoding when it announces too many pixels."""

from __future__ import annotations

import base64
import binascii
import io
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from PIL import Image

from clair_vec.datasets.images import decode_image
from clair_vec.errors import CorruptImageError
from clair_vec.service.problems import HTTPProblem, too_large

MAX_QUERY_PIXELS = 40_000_000


@dataclass
class SearchForm:
    data: bytes
    domain: str | None
    top_k: Any
    labels: list[str]


async def read_search_request(request: Request, max_upload_bytes: int) -> SearchForm:
    ctype = request.headers.get("content-type", "")
    if ctype.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
        form = await request.form()
        upload = form.get("image")
        if upload is None or isinstance(upload, str):
            raise HTTPProblem(400, "multipart field 'image' must be a file")
        data = await upload.read(max_upload_bytes + 1)
        domain, top_k, labels = form.get("domain"), form.get("top_k"), [str(v) for v in form.getlist("label")]
    elif ctype.startswith("application/json"):
        try:
            body = await request.json()
        except ValueError:
            raise HTTPProblem(400, "the body is not valid JSON") from None
        if not isinstance(body, dict) or not isinstance(body.get("image"), str):
            raise HTTPProblem(400, 'JSON body must be an object with "image": a base64 string or a data: URL')
        raw = body["image"].split(",", 1)[1] if body["image"].startswith("data:") else body["image"]
        if len(raw) > (max_upload_bytes * 4) // 3 + 8:
            raise HTTPProblem(413, too_large(len(raw) * 3 // 4, max_upload_bytes))
        try:
            data = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            raise HTTPProblem(400, '"image" is not valid base64') from None
        label = body.get("label") or []
        labels = [label] if isinstance(label, str) else label
        if not isinstance(labels, list) or not all(isinstance(v, str) for v in labels):
            raise HTTPProblem(422, '"label" must be a string or a list of strings')
        domain, top_k = body.get("domain"), body.get("top_k")
    else:
        raise HTTPProblem(415, "send multipart/form-data (field 'image') or application/json ({\"image\": base64})")
    if len(data) > max_upload_bytes:
        raise HTTPProblem(413, too_large(len(data), max_upload_bytes))
    return SearchForm(data, domain if domain is None else str(domain), top_k, labels)


def decode_upload(data: bytes, max_pixels: int = MAX_QUERY_PIXELS) -> Image.Image:
    """A query image, refused before decoding when its header announces too many pixels (a 10 MB
    PNG can decode to gigabytes; PIL itself only warns below 179 Mpx)."""
    if not data:
        raise HTTPProblem(400, "the image is empty")
    try:
        with Image.open(io.BytesIO(data)) as im:
            width, height = im.size
    except Exception as exc:
        raise HTTPProblem(400, f"the upload is not an image PIL can read (PNG, JPEG, WebP, ...): {type(exc).__name__}") from None
    if width * height > max_pixels:
        raise HTTPProblem(413, f"the image is {width}x{height} pixels; the limit is {max_pixels / 1e6:.0f} Mpx")
    try:
        return decode_image(data, "upload")
    except CorruptImageError as exc:
        raise HTTPProblem(400, f"the upload is not an image PIL can read (PNG, JPEG, WebP, ...): {exc.reason}") from None
