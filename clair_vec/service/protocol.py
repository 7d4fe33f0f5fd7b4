"""uvicorn's HTTP/1.1 protocol with a deadline for the request head, and health checks that a
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


def with_header_timeout(header_timeout: float) -> type[H11Protocol]:
    class HeadDeadlineProtocol(H11Protocol):
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

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def handle_events(self) -> None:
            super().handle_events()
            if self.cycle is not None and not self.cycle.response_complete:
                self._disarm()  # a request is running: the app's own limits apply from here

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return HeadDeadlineProtocol
