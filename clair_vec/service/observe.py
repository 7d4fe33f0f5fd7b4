"""What the service tells an operator about itself, and the outer edge of every request.

- :class:`Metrics`: the Prometheus instruments.
- :class:`Outage`: a database outage is logged once when it starts and once when it ends, with
  how many requests it cost, instead of a traceback per request.
- :class:`Edge`: a pure ASGI middleware (Starlette's BaseHTTPMiddleware costs about a millisecond
  a request) that counts and times every request by route, answers every error itself (so it is
  counted too, and never shows a traceback or a secret), refuses a body over the limit as it
  streams in whether or not it declared its length, and a body that stops arriving or arrives
  too slowly (:data:`MIN_BODY_RATE`); a client that leaves mid-upload is counted (as 499), not
  logged as an error. It answers ``HEAD`` on every ``GET`` route (the GET's headers, no body) and
  sends ``nosniff`` on every answer.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.requests import ClientDisconnect

from clair_vec.errors import AuthenticationError, BackendUnavailableError
from clair_vec.service.problems import too_large
from clair_vec.store.redaction import scrub

log = logging.getLogger("clair_vec.service")


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("clair_vec_http_requests_total", "HTTP requests by route and status",
                                ["method", "route", "status"], registry=self.registry)  # fmt: skip
        self.latency = Histogram("clair_vec_http_request_seconds", "HTTP request latency by route", ["route"],
                                 registry=self.registry, buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))  # fmt: skip
        self.gallery = Gauge("clair_vec_gallery_size", "records in the served collection", ["collection"], registry=self.registry)
        self.batch_size = Histogram("clair_vec_search_batch_size", "searches served by one encode and one engine call",
                                    registry=self.registry, buckets=(1, 2, 4, 8, 16, 32, 64))  # fmt: skip
        self.batch_seconds = Histogram("clair_vec_search_batch_seconds", "time one batch of searches took on the worker "
                                       "thread (encode and engine call)", registry=self.registry,
                                       buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))  # fmt: skip
        self.inflight = Gauge("clair_vec_searches_in_flight", "searches being read, queued or run", registry=self.registry)

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class Outage:
    """Database availability as the service sees it: one log line when calls start failing, one
    when they succeed again, and a one-line reminder every ``remind_s`` while it lasts."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, remind_s: float = 60.0) -> None:
        self.clock = clock
        self.remind_s = remind_s
        self.since: float | None = None
        self.reminded = 0.0
        self.failed = 0
        self._lock = threading.Lock()

    def failed_call(self, exc: BaseException) -> None:
        with self._lock:
            self.failed += 1
            now = self.clock()
            if self.since is not None:
                if now - self.reminded < self.remind_s:
                    return
                self.reminded, seconds, failed = now, now - self.since, self.failed
            else:
                self.since = self.reminded = now
                seconds = None
        if seconds is not None:
            log.warning("the vector database still does not answer after %.0f s; %d requests were answered 503 so far",
                        seconds, failed)  # fmt: skip
            return
        log.error("the vector database does not answer (%s); requests get 503 until it does", scrub(str(exc)))

    def ok(self) -> None:
        with self._lock:
            if self.since is None:
                return
            seconds, failed, self.since, self.failed = self.clock() - self.since, self.failed, None, 0
        log.warning("the vector database answers again after %.0f s; %d requests were answered 503 meanwhile", seconds, failed)


DATABASE_DOWN = "the vector database does not answer; the service's log says why"


def database_problem(exc: BaseException) -> tuple[int, str] | None:
    """The answer for a database failure, or None if ``exc`` is something else. Neither the
    database's address nor the driver's words reach a client: the operator's log has them."""
    if isinstance(exc, AuthenticationError):
        return 503, "the vector database refused the service's credentials; the operator must fix them"
    if isinstance(exc, BackendUnavailableError):
        return 503, DATABASE_DOWN
    return None


#: on every answer: a browser never second-guesses the content type (a JSON error read as HTML)
ALWAYS = [(b"x-content-type-options", b"nosniff")]


#: bytes a second a body must keep arriving at, past its first ``body_timeout`` (Apache's
#: mod_reqtimeout takes 500): an honest upload over the slowest mobile link sends many times this,
#: a client dripping bytes to hold a search slot does not
MIN_BODY_RATE = 1024
#: the status counted for a request whose client left before it could be answered (nginx's 499)
CLIENT_GONE = 499


class _TooLarge(Exception):
    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.size = size


class _BodyTimeout(Exception):
    def __init__(self, received: int, seconds: float) -> None:
        super().__init__(received, seconds)
        self.received, self.seconds = received, seconds


class Edge:
    """ASGI middleware around the whole app (see the module docstring)."""

    def __init__(self, app: Any, metrics: Metrics, outage: Outage, route_of: Callable[[str], str], max_upload_bytes: int,
                 body_timeout: float, headers: list[tuple[bytes, bytes]], on_request: Callable[[], None] | None = None) -> None:  # fmt: skip
        self.app, self.metrics, self.outage, self.route_of = app, metrics, outage, route_of
        self.on_request = on_request
        self.max_upload_bytes = max_upload_bytes
        # a body may be the image base64-encoded in JSON (4/3 of its size) plus a form's framing
        self.body_limit = max_upload_bytes * 4 // 3 + 64 * 1024
        self.body_timeout = body_timeout
        self.headers = headers

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self.on_request is not None:
            self.on_request()
        t0, status, size = time.perf_counter(), [0], [0]
        method = scope["method"]  # as the client sent it, for the metrics
        head = method == "HEAD"
        if head:  # RFC 9110: HEAD is GET without the body
            scope = {**scope, "method": "GET"}

        async def tagged(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message = {**message, "headers": [*message.get("headers", []), *ALWAYS, *self.headers]}
            elif head and message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        # the body's deadline: body_timeout from the first read, moved on by each chunk's share of
        # MIN_BODY_RATE (as Apache's mod_reqtimeout does); a time limit per chunk alone would let a
        # byte every few seconds hold a search slot for ever
        deadline: list[float] = []  # [when the body must have arrived, when it began]; empty again after it

        async def limited():
            loop = asyncio.get_running_loop()
            if not deadline:  # the body's first read, or a wait for a disconnect after it: a time of its own
                deadline[:] = [loop.time() + self.body_timeout, loop.time()]
            try:
                message = await asyncio.wait_for(receive(), max(deadline[0] - loop.time(), 0.0))
            except TimeoutError:
                raise _BodyTimeout(size[0], loop.time() - deadline[1]) from None
            chunk = len(message.get("body", b""))
            size[0] += chunk
            deadline[0] += chunk / MIN_BODY_RATE
            if not message.get("more_body", False):
                deadline.clear()
            if size[0] > self.body_limit:
                raise _TooLarge(size[0])
            return message

        try:
            length = dict(scope["headers"]).get(b"content-length", b"")
            if length.isdigit() and int(length) > self.body_limit:
                raise _TooLarge(int(length))
            await self.app(scope, limited, tagged)
        except ClientDisconnect:  # the client left mid-upload: no one to answer, and no bug
            status[0] = status[0] or CLIENT_GONE
            log.debug("client left during %s %s", scope["method"], scope["path"])
        except Exception as exc:
            if status[0]:  # the response has started: nothing more can be said to this client
                raise
            await self.answer(exc, scope)(scope, receive, tagged)
        finally:
            route = self.route_of(scope["path"])
            self.metrics.requests.labels(method, route, str(status[0] or 500)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - t0)

    def answer(self, exc: Exception, scope: Any) -> JSONResponse:
        if isinstance(exc, _TooLarge):
            return JSONResponse({"detail": too_large(exc.size, self.max_upload_bytes)}, status_code=413)
        if isinstance(exc, _BodyTimeout):
            return JSONResponse({"detail": f"the request body arrived too slowly: {exc.received:,} bytes in {exc.seconds:.0f} s; "
                                           f"the service waits {self.body_timeout:g} s, and {MIN_BODY_RATE:,} bytes a second "
                                           "after that"}, status_code=408)  # fmt: skip
        known = database_problem(exc)
        if known is not None:
            self.outage.failed_call(exc)
            return JSONResponse({"detail": known[1]}, status_code=known[0], headers={"retry-after": "5"})
        log.exception("unhandled error on %s %s", scope["method"], scope["path"])  # a bug: the operator needs the trace
        return JSONResponse({"detail": f"internal error ({type(exc).__name__}); the server log has the details"}, status_code=500)
