"""uvicorn's HTTP/1.1 protocol (httptools where installed, else h11) with a deadline and a size
limit for the request head, and health checks that a connection flood cannot starve.

uvicorn closes idle keep-alive connections, but a connection that opens and then sends nothing,
or half a request head, is kept forever: 1,100 such connections once made every new client fail
until they closed. Here a connection has ``header_timeout`` seconds to send a whole request head,
from when it opens and again after each response; past that it is closed.

Until then those connections count against ``--max-connections``, past which uvicorn answers 503;
``/healthz`` and ``/readyz`` are exempt, so an orchestrator does not restart a service that is
only being flooded (they cost no database call or decode: ``/readyz`` one count).

uvicorn's httptools protocol keeps a head of any size (300 MB of headers from one connection were
once taken in 0.8 s, within any deadline, and a long URL is copied again on every read). h11
refuses a head past 16 KiB only while it is incomplete: a 100 KB URL that arrives in one read
is taken whole. Both get the same limit here, counted on the parsed head.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

EXEMPT_PATHS = frozenset({"/healthz", "/readyz"})
#: the largest request head (URL and headers) taken; h11's own limit
MAX_HEAD_BYTES = 16 * 1024


def with_header_timeout(header_timeout: float) -> type[asyncio.Protocol]:
    """uvicorn's fastest HTTP/1.1 protocol (httptools, a C parser, where it is installed; else the
    pure-Python h11, which costs several times the CPU per request) with the head deadline."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:
        return _with_head_deadline(_bounded_h11_head(H11Protocol), header_timeout)
    return _with_head_deadline(_bounded_head(HttpToolsProtocol), header_timeout)


class HeadTooLarge(ValueError):
    """Raised from a parser callback: httptools turns it into a parse error, uvicorn into a 400."""


def _bounded_head(base: type) -> type:
    class BoundedHead(base):
        _head_bytes = 0

        def on_message_begin(self) -> None:
            self._head_bytes = 0
            super().on_message_begin()

        def on_url(self, url: bytes) -> None:
            self._count(len(url))
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._count(len(name) + len(value) + 4)  # ": " and CRLF
            super().on_header(name, value)

        def _count(self, n: int) -> None:
            self._head_bytes += n
            if self._head_bytes > MAX_HEAD_BYTES:
                raise HeadTooLarge(f"the request head is over {MAX_HEAD_BYTES} bytes")

    return BoundedHead


def _h11_head_bytes(request: Any) -> int:
    return len(request.method) + len(request.target) + sum(len(n) + len(v) + 4 for n, v in request.headers)


def _bounded_h11_head(base: type) -> type:
    import h11

    class BoundedH11Head(base):
        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            # uvicorn keeps one h11 connection per TCP connection and parses only through
            # next_event; it answers h11's protocol error with its 400 and a close, so a head over
            # the limit is refused through that same path, before the app sees it
            parse = self.conn.next_event

            def bounded() -> Any:
                event = parse()
                if isinstance(event, h11.Request) and _h11_head_bytes(event) > MAX_HEAD_BYTES:
                    raise h11.RemoteProtocolError(f"the request head is over {MAX_HEAD_BYTES} bytes")
                return event

            self.conn.next_event = bounded

    return BoundedH11Head


def _with_head_deadline(base: type, header_timeout: float) -> type[asyncio.Protocol]:
    class HeadDeadlineProtocol(base):
        _head_timer: asyncio.TimerHandle | None = None
        _limit: int | None = None

        # uvicorn reads this right after it has parsed a request's path into self.scope
        @property  # type: ignore[override]
        def limit_concurrency(self) -> int | None:
            scope = getattr(self, "scope", None)
            if scope is not None and scope.get("path") in EXEMPT_PATHS:
                return None
            return self._limit

        @limit_concurrency.setter
        def limit_concurrency(self, value: int | None) -> None:
            self._limit = value

        def send_400_response(self, msg: str) -> None:
            # a request too broken to reach the app (an unknown method, a bad Content-Length or chunk
            # size, a head past the limit) still gets the service's error shape, not uvicorn's text
            body = json.dumps({"detail": f"the request is not valid HTTP/1.1 ({msg.rstrip('.').lower()})"}).encode()
            self.transport.write(b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n"
                                 b"x-content-type-options: nosniff\r\ncontent-length: %d\r\nconnection: close\r\n\r\n%s"
                                 % (len(body), body))  # fmt: skip
            self.transport.close()

        def _arm(self) -> None:
            self._disarm()
            self._head_timer = self.loop.call_later(header_timeout, self._head_late)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_late(self) -> None:
            self._head_timer = None
            # a request that is running keeps its connection: the app's own limits apply to it, and
            # the response re-arms the deadline for the next head
            if self.cycle is None or self.cycle.response_complete:
                self.transport.close()

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return HeadDeadlineProtocol
