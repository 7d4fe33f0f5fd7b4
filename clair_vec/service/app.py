"""``clair-vec serve``: an HTTP search service over one collection, and a page to draw queries on.

The app holds one :class:`~clair_vec.retriever.Retriever` (model and backend opened once at
start-up) and serves:

- ``POST /search``: multipart ``image`` + ``domain`` [+ ``top_k``, repeatable ``label``], or JSON
  ``{"image": <base64 or data URL>, "domain", "top_k", "label": [...]}`` -> ``{"hits", "took_ms"}``
- ``GET /images/{id}``: a JPEG thumbnail of a hit's stored image
- ``GET /``, ``GET /info``, ``GET /collections``, ``GET /healthz``, ``GET /readyz``, ``GET /metrics``

Bad input is answered with a status and a message that names the problem, never a traceback.
``/images/{id}`` opens no path taken from the request: it looks the id up in the collection and
serves the stored path only if its bytes still hash to that id (and, with ``gallery_roots``, only
if it resolves, symlinks followed, under one of them).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import logging
import os
import re
import socket
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from importlib.resources import files
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from clair_vec.datasets.folders import decode_image
from clair_vec.errors import (
    BackendUnavailableError,
    ClairVecError,
    CollectionNotFoundError,
    CorruptImageError,
    UnknownDomainError,
)
from clair_vec.retrieval.retriever import Retriever
from clair_vec.retrieval.sources import is_under
from clair_vec.store.ids import ID_PATTERN, content_digest, record_id

log = logging.getLogger(__name__)
MAX_TOP_K = 200
THUMB_SIZES = (64, 128, 160, 256, 512)
_ID = re.compile(ID_PATTERN)
MAX_IMAGE_FILE = 64 * 1024 * 1024  # a gallery file larger than this is not thumbnailed
MAX_QUERY_PIXELS = 40_000_000


class HTTPProblem(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


class Thumbnails:
    """Verified, resized gallery images, cached by (id, size) in a bounded LRU."""

    def __init__(self, retriever: Retriever, collection: str, roots: Sequence[str | Path] | None, capacity: int = 512):
        self.retriever, self.collection = retriever, collection
        self.roots = [os.path.realpath(r) for r in roots or []]
        self.capacity = capacity
        self._cache: OrderedDict[tuple[str, int], bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, rid: str, size: int) -> bytes:
        key = (rid, size)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        data = self._render(rid, size)
        with self._lock:
            self._cache[key] = data
            while len(self._cache) > self.capacity:
                self._cache.popitem(last=False)
        return data

    def _render(self, rid: str, size: int) -> bytes:
        if not _ID.fullmatch(rid):
            raise HTTPProblem(404, f"no image {rid!r}: ids are 32 hex digits, as returned in search hits")
        payload = self.retriever.get(self.collection, [rid]).get(rid)
        if payload is None:
            raise HTTPProblem(404, f"no record {rid} in collection {self.collection!r}")
        path, domain = payload.get("path"), payload.get("domain", "")
        if not isinstance(path, str) or not path or path.startswith("<"):
            raise HTTPProblem(404, f"record {rid} was indexed from an in-memory image; there is no file to show")
        real = os.path.realpath(path)
        if self.roots and not is_under(real, self.roots):
            raise HTTPProblem(404, f"the file of record {rid} is outside the served gallery folders")
        data = _read_regular_file(real, MAX_IMAGE_FILE)
        if data is None:
            raise HTTPProblem(404, f"the file of record {rid} is gone, not a regular file, or too large to thumbnail")
        if record_id(domain, content_digest(data)) != rid:  # only ever the exact bytes that were indexed
            raise HTTPProblem(404, f"the file of record {rid} changed since it was indexed; re-index the gallery")
        try:
            im = decode_image(data, path)
        except CorruptImageError as exc:
            raise HTTPProblem(404, f"the file of record {rid} cannot be decoded: {exc.reason}") from None
        im.thumbnail((size, size))
        out = io.BytesIO()
        im.save(out, "JPEG", quality=85)
        return out.getvalue()


def _read_regular_file(path: str, limit: int) -> bytes | None:
    """The bytes of a regular file of at most ``limit`` bytes, opened once (no check-then-read race;
    a FIFO or a device never blocks or floods a worker)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > limit:
            return None
        data = fh.read(limit + 1)
    return data if len(data) <= limit else None


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


def create_app(
    retriever: Retriever,
    collection: str,
    *,
    gallery_roots: Sequence[str | Path] | None = None,
    max_upload_bytes: int = 10 * 1024 * 1024,
    max_top_k: int = MAX_TOP_K,
) -> FastAPI:
    """The ASGI app (FastAPI). ``retriever`` stays open for the app's lifetime."""
    model = retriever.model
    thumbs = Thumbnails(retriever, collection, gallery_roots)
    app = FastAPI(title="clair_vec", summary="Cross-domain image search", docs_url="/docs", redoc_url=None)
    registry = CollectorRegistry()
    requests_total = Counter("clair_vec_http_requests_total", "HTTP requests by route and status",
                             ["method", "route", "status"], registry=registry)  # fmt: skip
    latency = Histogram("clair_vec_http_request_seconds", "HTTP request latency by route", ["route"], registry=registry,
                        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))  # fmt: skip
    gallery = Gauge("clair_vec_gallery_size", "records in the served collection", ["collection"], registry=registry)
    page = files("clair_vec.service").joinpath("web/index.html").read_text(encoding="utf-8")
    served_by = f"{socket.gethostname()}:{os.getpid()}"  # which replica answered, behind a load balancer
    worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clair-search")
    shared = retriever.backend.shared

    def route_of(path: str) -> str:
        for r in app.router.routes:
            if getattr(r, "path_regex", None) is not None and r.path_regex.fullmatch(path):
                return r.path
        return "other"

    # a body may be the image base64-encoded in JSON (4/3 of its size) plus a form's framing
    body_limit = max_upload_bytes * 4 // 3 + 64 * 1024

    async def observe(scope, receive, send, inner):
        """Pure ASGI (Starlette's BaseHTTPMiddleware costs about a millisecond a request): counts and
        times every request by route, answers every error itself (so it is counted too), and
        refuses a body over the limit as it streams in, whether or not it declared its length."""
        if scope["type"] != "http":
            return await inner(scope, receive, send)
        t0, status, size = time.perf_counter(), [0], [0]

        async def tagged(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message = {**message, "headers": [*message.get("headers", []), (b"x-served-by", served_by.encode())]}
            await send(message)

        async def limited():
            message = await receive()
            size[0] += len(message.get("body", b""))
            if size[0] > body_limit:
                raise _TooLarge(size[0])
            return message

        try:
            length = dict(scope["headers"]).get(b"content-length", b"")
            if length.isdigit() and int(length) > body_limit:
                raise _TooLarge(int(length))
            await inner(scope, limited, tagged)
        except Exception as exc:
            if status[0]:  # the response has started: nothing more can be said to this client
                raise
            if isinstance(exc, _TooLarge):
                response = JSONResponse({"detail": _too_large(exc.size, max_upload_bytes)}, status_code=413)
            elif isinstance(exc, BackendUnavailableError):
                response = JSONResponse({"detail": f"the vector database does not answer: {exc}"}, status_code=503)
            else:
                log.exception("unhandled error on %s %s", scope["method"], scope["path"])
                response = JSONResponse({"detail": f"internal error ({type(exc).__name__}); the server log has the details"},
                                        status_code=500)  # fmt: skip
            await response(scope, receive, tagged)
        finally:
            route = route_of(scope["path"])
            requests_total.labels(scope["method"], route, str(status[0] or 500)).inc()
            latency.labels(route).observe(time.perf_counter() - t0)

    app.add_middleware(_Wrap, handler=observe)

    @app.exception_handler(HTTPProblem)
    async def problem(_request: Request, exc: HTTPProblem):
        return JSONResponse({"detail": exc.detail}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError):
        msgs = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:]) or 'body'}: {e['msg']}" for e in exc.errors())
        return JSONResponse({"detail": msgs}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException):
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code)

    def run_search(image: Image.Image, domain: str | None, top_k: Any, labels: list[str]) -> dict:
        t0 = time.perf_counter()
        if not domain:
            raise HTTPProblem(422, f"domain is required: one of {model.domains}")
        if domain not in model.domains:
            raise HTTPProblem(422, f"unknown domain {domain!r}: this model knows {model.domains}")
        try:
            k = int(top_k) if top_k not in (None, "") else 10
        except (TypeError, ValueError):
            raise HTTPProblem(422, f"top_k must be an integer from 1 to {max_top_k}, got {top_k!r}") from None
        if not 1 <= k <= max_top_k:
            raise HTTPProblem(422, f"top_k must be an integer from 1 to {max_top_k}, got {k}")
        flt = {"label": labels} if labels else None
        try:
            rows = retriever.search(collection, [image], domain=domain, top_k=k, filter=flt)
        except (UnknownDomainError, ValueError) as exc:
            raise HTTPProblem(422, str(exc)) from None
        hits = [{**h.payload, "id": h.id, "score": round(h.score, 6), "image_url": f"images/{h.id}"} for h in rows[0]]
        return {"hits": hits, "took_ms": round(1000 * (time.perf_counter() - t0), 2)}

    @app.post("/search", summary="search with an image (multipart or JSON)")
    async def search(request: Request):
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
                raise HTTPProblem(413, _too_large(len(raw) * 3 // 4, max_upload_bytes))
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
            raise HTTPProblem(413, _too_large(len(data), max_upload_bytes))
        image = decode_upload(data)
        args = (image, domain if domain is None else str(domain), top_k, labels)
        if not shared:
            # an embedded engine computes in this process and takes one call at a time: inline costs
            # 5 ms a search here against 8 ms handed to a worker thread (measured A/B, ABAB)
            return JSONResponse(run_search(*args))
        # a server can stall for its timeouts: its calls leave the event loop free for /healthz
        return JSONResponse(await asyncio.get_running_loop().run_in_executor(worker, run_search, *args))

    @app.get("/images/{rid}", summary="thumbnail of a stored image")
    async def image(rid: str, size: int = 160):
        if size not in THUMB_SIZES:
            raise HTTPProblem(422, f"size must be one of {list(THUMB_SIZES)}")
        data = await run_in_threadpool(thumbs.get, rid, size)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "public, max-age=3600"})

    @app.get("/", include_in_schema=False)
    async def index():
        return HTMLResponse(page)

    @app.get("/info")
    async def info():
        return {"collection": collection, "model": model.model_id, "domains": model.domains, "gallery_domain": model.pivot,
                "query_domains": [d for d in model.domains if d != model.pivot], "max_top_k": max_top_k,
                "max_upload_bytes": max_upload_bytes}  # fmt: skip

    @app.get("/collections")
    async def collections():
        names = await run_in_threadpool(retriever.list_collections)
        return {"collections": names, "serving": collection, "backend": retriever.backend.name}

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz():
        try:
            n = await run_in_threadpool(retriever.count, collection)
        except Exception as exc:  # not ready is an answer, not an error
            return JSONResponse({"status": "unavailable", "detail": f"{type(exc).__name__}: {exc}"}, status_code=503)
        return {"status": "ready", "model": model.model_id, "collection": collection, "count": n}

    @app.get("/metrics", include_in_schema=False)
    async def metrics():
        try:
            gallery.labels(collection).set(await run_in_threadpool(retriever.count, collection))
        except Exception:  # the gauge keeps its last value while the database is away
            log.warning("gallery size unavailable for /metrics", exc_info=True)
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app


class _Wrap:
    """An ASGI middleware that hands each request to ``handler(scope, receive, send, inner_app)``."""

    def __init__(self, app: Any, handler: Any) -> None:
        self.app, self.handler = app, handler

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.handler(scope, receive, send, self.app)


class _TooLarge(Exception):
    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.size = size


def _too_large(size: int, limit: int) -> str:
    return f"the upload is {size / 2**20:.1f} MiB; the limit is {limit / 2**20:.1f} MiB (--max-upload-mb)"


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


def serve(
    model: str | Path | None,
    collection: str,
    *,
    backend: str | None = None,
    uri: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    ray: bool = False,
    replicas: int = 1,
    gallery_roots: Sequence[str] | None = None,
    max_upload_mb: float = 10.0,
) -> None:
    options = {"gallery_roots": gallery_roots, "max_upload_bytes": int(max_upload_mb * 2**20)}
    if ray:
        from clair_vec.service.ray_serve import run

        run(model, collection, backend=backend, uri=uri, host=host, port=port, replicas=replicas, **options)
        return
    if replicas != 1:
        raise ClairVecError("--replicas needs --ray: one uvicorn process serves one replica")
    import uvicorn

    retriever = open_retriever(model, collection, backend=backend, uri=uri)
    try:
        print(f"clair-vec serve: {collection!r} on {retriever.backend.name} at http://{host}:{port}/", flush=True)
        uvicorn.run(create_app(retriever, collection, **options), host=host, port=port, log_level="warning")
    finally:
        retriever.close()
