"""Errors as HTTP answers: one place maps every exception a route can raise to a status and a
message that names the problem; no route answers with a traceback."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from clair_vec.store.redaction import mask_credential_shapes


class HTTPProblem(Exception):
    """An answer other than 200: raised anywhere below a route, answered as ``{"detail": ...}``
    (anything shaped like a credential masked; never compared with this process's secrets, see
    :func:`~clair_vec.store.redaction.mask_credential_shapes`) with ``headers``."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, headers


def too_large(size: int, limit: int) -> str:
    return f"the upload is {size / 2**20:.1f} MiB; the limit is {limit / 2**20:.1f} MiB (--max-upload-mb)"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(HTTPProblem)
    async def problem(_request: Request, exc: HTTPProblem):
        return JSONResponse({"detail": mask_credential_shapes(exc.detail)}, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError):
        msgs = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:]) or 'body'}: {e['msg']}" for e in exc.errors())
        return JSONResponse({"detail": msgs}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException):
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=getattr(exc, "headers", None))  # 405's Allow
