"""Who may use the service: an optional API key, and which web origins may call it.

- With an API key (``--api-key-file`` or ``$CLAIR_VEC_API_KEY``), every route but ``/healthz``,
  ``/readyz`` and the page itself (``/``: static HTML holding no data; it asks for the key) needs
  ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``, compared in constant time; otherwise
  401 with ``WWW-Authenticate``.
- A request from a web page of another origin (an ``Origin`` header that is not this service's
  own) is refused with 403 unless ``--cors-origin`` names that origin; allowed origins get the
  CORS headers and their preflight ``OPTIONS`` answered. Without this, any page a user visits could
  make their browser post searches here.
- A request whose ``Host`` is not one of ``allowed_hosts`` is refused with 400 before anything
  else. The origin check alone compares the Origin with the Host the client sent, which a page on
  ``evil.example`` whose DNS was rebound to 127.0.0.1 controls both of (DNS rebinding): a service
  on loopback answers only to the loopback names unless ``--allowed-host`` adds more.
"""

from __future__ import annotations

import hmac
from typing import Any

from fastapi.responses import JSONResponse, Response

OPEN_PATHS = frozenset({"/healthz", "/readyz", "/"})


class Guard:
    """ASGI middleware: API key and origin checks before the app sees a request."""

    def __init__(self, app: Any, api_key: str | None, cors_origins: tuple[str, ...],
                 allowed_hosts: tuple[str, ...] | None = None) -> None:  # fmt: skip
        self.app = app
        self._key = api_key.encode() if api_key else None
        self.origins = frozenset(o.rstrip("/") for o in cors_origins)
        self.hosts = None if allowed_hosts is None else frozenset(host_name(h) for h in allowed_hosts)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        # no Host at all (HTTP/1.0) is let through: a browser always sends one, so rebinding cannot omit it
        if self.hosts is not None and "host" in headers and host_name(headers["host"]) not in self.hosts:
            return await JSONResponse({"detail": "this service does not answer to that host name; the operator can allow it "
                                                 "with --allowed-host"}, status_code=400)(scope, receive, send)  # fmt: skip
        origin = headers.get("origin")
        cross = origin is not None and origin.rstrip("/") != _own_origin(scope, headers)
        if cross and origin.rstrip("/") not in self.origins:
            return await JSONResponse({"detail": f"cross-origin requests from {origin} are refused; allow that origin "
                                                 "with --cors-origin"}, status_code=403)(scope, receive, send)  # fmt: skip
        cors = _cors_headers(origin) if cross else {}
        if cross and scope["method"] == "OPTIONS":  # a preflight: the browser asks before it sends the real request
            return await Response(status_code=204, headers={**cors, "access-control-max-age": "600"})(scope, receive, send)
        if self._key is not None and scope["path"] not in OPEN_PATHS and not self._authorized(headers):
            given = "authorization" in headers or "x-api-key" in headers
            return await JSONResponse(
                {"detail": "the API key is wrong" if given else "this service needs an API key: send Authorization: Bearer <key> "
                 "or X-API-Key: <key>"}, status_code=401,
                headers={**cors, "www-authenticate": 'Bearer realm="clair_vec"'})(scope, receive, send)  # fmt: skip
        if not cors:
            return await self.app(scope, receive, send)

        async def with_cors(message: Any) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *((k.encode(), v.encode()) for k, v in cors.items())]}
            await send(message)

        await self.app(scope, receive, with_cors)

    def _authorized(self, headers: dict[str, str]) -> bool:
        auth = headers.get("authorization", "")
        given = auth[7:].strip() if auth[:7].lower() == "bearer " else headers.get("x-api-key", "")
        return hmac.compare_digest(given.encode("latin-1", "replace"), self._key or b"")


LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def host_name(host: str) -> str:
    """A host name as compared: lower case, without brackets, port or a trailing dot:
    ``[::1]:8000`` -> ``::1``, ``LocalHost.:80`` -> ``localhost``."""
    host = host.strip().lower()
    if host.startswith("["):
        host = host[1:].partition("]")[0]
    elif host.count(":") == 1:
        host = host.rpartition(":")[0]
    return host.rstrip(".")


def default_allowed_hosts(bind: str, extra: tuple[str, ...] = ()) -> tuple[str, ...] | None:
    """Bound to loopback: the loopback names (and ``extra``); bound elsewhere: any host unless
    ``extra`` names some (a service behind a proxy answers to the names the proxy uses)."""
    name = host_name(bind)
    if name in LOOPBACK_NAMES or name.startswith("127."):
        return (*LOOPBACK_NAMES, name, *extra)
    return tuple(extra) or None


def _own_origin(scope: Any, headers: dict[str, str]) -> str:
    return f"{scope.get('scheme', 'http')}://{headers.get('host', '')}".rstrip("/")


def _cors_headers(origin: str) -> dict[str, str]:
    return {"access-control-allow-origin": origin, "vary": "Origin",
            "access-control-allow-methods": "GET, POST, OPTIONS",
            "access-control-allow-headers": "authorization, x-api-key, content-type"}  # fmt: skip
