"""What the service tells an operator about itself, and the outer edge of every request.

:class:`Metrics` holds the Prometheus instruments. :func:`edge` is a pure ASGI middleware
(Starlette's BaseHTTPMiddleware costs about a millisecond a request) that counts and times every
request by route, answers every error itself (so it is counted too), and refuses a body over the
limit as it streams in, whether or not it declared its length.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from clair_vec.errors import BackendUnavailableError
from clair_vec.service.problems import too_large

log = logging.getLogger("clair_vec.service")


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("clair_vec_http_requests_total", "HTTP requests by route and status",
                                ["method", "route", "status"], registry=self.registry)  # fmt: skip
        self.latency = Histogram("clair_vec_http_request_seconds", "HTTP request latency by route", ["route"],
                                 registry=self.registry, buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))  # fmt: skip
        self.gallery = Gauge("clair_vec_gallery_size", "records in the served collection", ["collection"], registry=self.registry)

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _TooLarge(Exception):
    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.size = size


class Edge:
    """ASGI middleware: ``Edge(app, handler=...)`` hands each HTTP request to the handler."""

    def __init__(self, app: Any, metrics: Metrics, route_of: Callable[[str], str], max_upload_bytes: int,
                 headers: list[tuple[bytes, bytes]]) -> None:  # fmt: skip
        self.app, self.metrics, self.route_of = app, metrics, route_of
        self.max_upload_bytes = max_upload_bytes
        # a body may be the image base64-encoded in JSON (4/3 of its size) plus a form's framing
        self.body_limit = max_upload_bytes * 4 // 3 + 64 * 1024
        self.headers = headers

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0, status, size = time.perf_counter(), [0], [0]

        async def tagged(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message = {**message, "headers": [*message.get("headers", []), *self.headers]}
            await send(message)

        async def limited():
            message = await receive()
            size[0] += len(message.get("body", b""))
            if size[0] > self.body_limit:
                raise _TooLarge(size[0])
            return message

        try:
            length = dict(scope["headers"]).get(b"content-length", b"")
            if length.isdigit() and int(length) > self.body_limit:
                raise _TooLarge(int(length))
            await self.app(scope, limited, tagged)
        except Exception as exc:
            if status[0]:  # the response has started: nothing more can be said to this client
                raise
            if isinstance(exc, _TooLarge):
                response = JSONResponse({"detail": too_large(exc.size, self.max_upload_bytes)}, status_code=413)
            elif isinstance(exc, BackendUnavailableError):
                response = JSONResponse({"detail": f"the vector database does not answer: {exc}"}, status_code=503)
            else:
                log.exception("unhandled error on %s %s", scope["method"], scope["path"])
                response = JSONResponse({"detail": f"internal error ({type(exc).__name__}); the server log has the details"},
                                        status_code=500)  # fmt: skip
            await response(scope, receive, tagged)
        finally:
            route = self.route_of(scope["path"])
            self.metrics.requests.labels(scope["method"], route, str(status[0] or 500)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - t0)
