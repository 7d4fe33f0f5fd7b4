"""Who may use the service: an optional API key, and which web origins may call it.

- With an API key (``--api-key-file`` or ``$CLAIR_VEC_API_KEY``), every route but ``/healthz``,
  ``/readyz`` and the page itself (``/``: static HTML holding no data; it asks for the key) needs
  ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``, compared in constant time; otherwise
  401 with ``WWW-Authenticate``.
- A request from a web page of another origin (an ``Origin`` header that is not this service's
  own) is refused with 403 unless ``--cors-origin`` names that origin; allowed origins get the
  CORS headers and their preflight ``OPTIONS`` answered. Without this, any page a user visits could
  make their browser post searches here.
"""

from __future__ import annotations

import hmac
from typing import Any

from fastapi.responses import JSONResponse, Response

OPEN_PATHS = frozenset({"/healthz", "/readyz", "/"})


class Guard:
    """ASGI middleware: API key and origin checks before the app sees a request."""

    def __init__(self, app: Any, api_key: str | None, cors_origins: tuple[str, ...]) -> None:
        self.app = app
        self._key = api_key.encode() if api_key else None
        self.origins = frozenset(o.rstrip("/") for o in cors_origins)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
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


def _own_origin(scope: Any, headers: dict[str, str]) -> str:
    return f"{scope.get('scheme', 'http')}://{headers.get('host', '')}".rstrip("/")


def _cors_headers(origin: str) -> dict[str, str]:
    return {"access-control-allow-origin": origin, "vary": "Origin",
            "access-control-allow-methods": "GET, POST, OPTIONS",
            "access-control-allow-headers": "authorization, x-api-key, content-type"}  # fmt: skip
