"""uvicorn's HTTP/1.1 protocol (httptools where installed, else h11) with a deadline for the request head, and health checks that a
connection flood cannot starve.

uvicorn closes idle keep-alive connections, but a connection that opens and then sends nothing,
or half a request head, is kept forever: 1,100 such connections once made every new client fail
until they closed. Here a connection has ``header_timeout`` seconds to send a whole request head,
from when it opens and again after each response; past that it is closed.

Until then those connections count against ``--max-connections``, past which uvicorn answers 503;
``/healthz`` and ``/readyz`` are exempt, so an orchestrator does not restart a service that is
only being flooded (they cost no database call or decode: ``/readyz`` one count).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

EXEMPT_PATHS = frozenset({"/healthz", "/readyz"})


def with_header_timeout(header_timeout: float) -> type[asyncio.Protocol]:
    """uvicorn's fastest HTTP/1.1 protocol (httptools, a C parser, where it is installed; else the
    pure-Python h11, which costs several times the CPU per request) with the head deadline."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:
        return _with_head_deadline(H11Protocol, "handle_events", header_timeout)
    return _with_head_deadline(HttpToolsProtocol, "on_headers_complete", header_timeout)


def _with_head_deadline(base: type, head_parsed: str, header_timeout: float) -> type[asyncio.Protocol]:
    """``base`` with the deadline; ``head_parsed``: its method that runs once a request head is in
    (h11 parses in ``handle_events``, httptools calls back ``on_headers_complete``)."""

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

        def _arm(self) -> None:
            self._disarm()
            self._head_timer = self.loop.call_later(header_timeout, self._head_late)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_late(self) -> None:
            self._head_timer = None
            if self.cycle is None or self.cycle.response_complete:  # still no request head: drop the connection
                self.transport.close()

        def _head_in(self, *args: Any) -> None:
            getattr(base, head_parsed)(self, *args)
            if self.cycle is not None and not self.cycle.response_complete:
                self._disarm()  # a request is running: the app's own limits apply from here

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

    setattr(HeadDeadlineProtocol, head_parsed, HeadDeadlineProtocol._head_in)
    return HeadDeadlineProtocol
