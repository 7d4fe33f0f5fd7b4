"""What a pymilvus error means to clair_vec: refused credentials, an unreachable server, a
locked Lite store, a request worth retrying; and the log filter for Milvus Lite's noise."""

from __future__ import annotations

import logging
import os
from typing import Any

from clair_vec.plugin import AuthenticationError, Backend, BackendUnavailableError, StoreLockedError, scrub

from .connection import TOKEN_ENV


class _DropUnimplementedProbe(logging.Filter):
    """Milvus Lite serves gRPC inside this process and logs a traceback each time pymilvus probes
    its unimplemented AllocTimestamp RPC; pymilvus ignores that answer (``@ignore_unimplemented``),
    so the traceback is noise. Only that one kind of record is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], NotImplementedError))


def _rpc_code(exc: BaseException) -> Any:
    """The gRPC status code behind a pymilvus error (it wraps the RpcError as its cause)."""
    import grpc

    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, grpc.RpcError) and hasattr(exc, "code"):
            return exc.code()
        exc = exc.__cause__ or exc.__context__
    return None


class MilvusErrors(Backend):
    """Backend's two error hooks (:meth:`translate_error`, :meth:`is_transient`) and the errors
    that opening a handle raises."""

    def _connect_error(self, exc: Exception) -> Exception:
        refused = self._refused(exc)
        if refused is not None:
            return refused
        hint = (
            ("it is a file that Milvus Lite did not make: a store is a folder it makes itself, so give a path that does "
             "not exist yet for a new store, or an existing store's folder")
            if self.lite and isinstance(self.uri, str) and os.path.isfile(self.uri)
            else "pass the path of a Milvus Lite store (e.g. gallery.db)"
            if self.lite
            else "start the server, check the address, or pass a local path ending in .db to use embedded Milvus Lite"
        )
        return BackendUnavailableError(f"cannot reach Milvus at {self.display_uri!r}: {scrub(str(exc))}. {hint}.")

    def _refused(self, exc: BaseException) -> AuthenticationError | None:
        """The AuthenticationError for a server's "unauthenticated" / "permission denied" answer."""
        import grpc

        code = _rpc_code(exc)
        text = str(exc).lower()
        if code == grpc.StatusCode.UNAUTHENTICATED or "auth check failure" in text:
            given = (
                f"from {self._credential.source}"
                if self._credential
                else f"none were given: pass option token, put user:password in the URI, or set ${TOKEN_ENV[0]} or "
                f"${TOKEN_ENV[1]} (or *_FILE)"
            )
            return AuthenticationError(
                f"the server at {self.display_uri} refused the credentials ({given}); check the user name and "
                f"password in the token (user:password) and that this user exists on the server (db {self.db_name or 'default'!r})"
            )
        if code == grpc.StatusCode.PERMISSION_DENIED or "permission deny" in text or "privilege" in text:
            return AuthenticationError(
                f"the server at {self.display_uri} accepted the credentials (from {self._credential.source}) but refused "
                "this user the request (permission denied); grant the user's role the privilege, or use another user"
            )
        return None

    def translate_error(self, exc: BaseException) -> Exception | None:
        from pymilvus.exceptions import MilvusException

        refused = self._refused(exc)
        if refused is not None:
            return refused
        if isinstance(exc, MilvusException):
            text = str(exc)
            if "Retry timeout" in text or "Retry run out" in text:  # pymilvus has retried for the whole timeout
                return BackendUnavailableError(
                    f"Milvus at {self.display_uri} did not answer within {self._timeout:g} s (option timeout): "
                    f"{scrub(text)}. Check that the server runs and is reachable."
                )
            if "topk" in text.lower() and "invalid" in text.lower():
                return ValueError(f"the Milvus server at {self.display_uri} refused top_k: {scrub(text)}; ask for fewer hits")
        return None

    def _locked(self) -> StoreLockedError:
        return StoreLockedError(
            f"Milvus Lite store {self.uri!r} is locked by another process: Milvus Lite opens a store in one "
            "process at a time. Stop that process, or use a server backend that several processes share: serve "
            f"this store with `milvus-lite server --data-dir {self.uri} --port PORT` and pass --uri "
            "http://127.0.0.1:PORT, or use a Milvus server."
        )

    def is_transient(self, exc: BaseException) -> bool:
        import grpc
        from pymilvus.exceptions import MilvusException

        if isinstance(exc, grpc.RpcError) and hasattr(exc, "code"):
            return exc.code() in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE,
                                  grpc.StatusCode.RESOURCE_EXHAUSTED)  # fmt: skip
        text = str(exc).lower()
        return super().is_transient(exc) or (
            isinstance(exc, MilvusException) and any(w in text for w in ("timeout", "deadline", "unavailable", "rate limit"))
        )
