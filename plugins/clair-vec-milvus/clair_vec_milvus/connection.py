"""Reaching the store: the URI and its default (a Milvus Lite file or a server), credentials,
opening and closing the pymilvus client, and Milvus Lite's one-process lock."""

from __future__ import annotations

import fcntl
import logging
import os
import threading
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from clair_vec.plugin import NO_SECRET, Backend, Secret, find_secret, register_secret

DEFAULT_URI = "./clair_vec_milvus.db"
TOKEN_ENV = ("CLAIR_VEC_MILVUS_TOKEN", "MILVUS_TOKEN")
#: open handles per Lite store in this process: pymilvus never stops the in-process Lite server
#: (nor releases its file lock) on close, so the last handle to close stops it
_lite_handles: Counter[str] = Counter()
_lite_lock = threading.Lock()
# pymilvus pings every 10 s even with no call in flight; gRPC servers (milvus-lite's among them)
# answer an idle client that pings more often than every 5 minutes with GOAWAY "too_many_pings",
# and the next call on that channel fails. Ping only while calls are in flight, and rarely.
GRPC_OPTIONS = {"grpc.keepalive_time_ms": 300_000, "grpc.keepalive_permit_without_calls": False}


def quiet_driver_logs() -> None:
    """pymilvus logs every failed call and reconnection attempt itself, with a traceback (over
    4,000 in 30 s of a server outage under ``clair-vec serve``); this plugin reports each failure
    once, as a clair_vec error saying what to do, so the driver's own log is only its worst news."""
    for name in ("pymilvus", "pymilvus.milvus_client"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def _is_lite(uri: str) -> bool:
    return uri.endswith(".db")  # pymilvus' own rule: a path ending in .db is a Milvus Lite store


def _locked_by_another_process(path: Path) -> bool:
    """Whether Milvus Lite's advisory lock on ``path`` is held by another process right now."""
    from milvus_lite.server_manager import server_manager_instance

    lock = path / "LOCK"
    if not lock.exists() or os.path.abspath(path) in getattr(server_manager_instance, "_servers", {}):
        return False  # no store yet, or this process serves it already (flock would conflict with ourselves)
    with open(lock, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
    return False


class MilvusConnection(Backend):
    """The client, opened on first use (a Lite store that does not exist yet is not created by
    opening a handle) and closed with the handle. ``close`` is defined here, on a Backend
    subclass, so that Backend still wraps it to drop the closed handle from its registry."""

    def _find_credential(self, token: str | None, user: str, password: str | None) -> Secret:
        """Which credentials a server gets, first found wins: the options (``token``, or ``user``
        and ``password``), then the URI's user info (``http://user:password@host``), then
        ``$CLAIR_VEC_MILVUS_TOKEN``, then ``$MILVUS_TOKEN`` (each also as ``*_FILE``). Exactly one
        is sent: the URI reaches pymilvus without its user info."""
        if self.lite:  # an embedded store has no users
            return NO_SECRET
        if password:
            if not user:
                raise ValueError("option password needs option user (or pass token='user:password')")
            register_secret(f"{user}:{password}")
            return Secret(f"{user}:{password}", "options user/password")
        if token:
            return find_secret(token, "token", TOKEN_ENV)
        in_uri = urlsplit(self.uri)
        if in_uri.username is not None:  # user:password, or a user alone: an API key (pymilvus' own rule)
            user, password = unquote(in_uri.username), in_uri.password
            value = user if password is None else f"{user}:{unquote(password)}"
            register_secret(value)
            return Secret(value, "the user:password in the URI")
        return find_secret(None, "token", TOKEN_ENV)

    @property
    def _server_uri(self) -> str:
        """The URI pymilvus connects to: without user info, whose credentials travel as the token."""
        parts = urlsplit(self.uri)
        if self.lite or "@" not in parts.netloc:
            return self.uri
        return urlunsplit((parts.scheme, parts.netloc.rsplit("@", 1)[1], parts.path, parts.query, parts.fragment))

    def _connect(self) -> Any:
        if self._client is not None:
            return self._client
        from pymilvus import MilvusClient

        quiet_driver_logs()
        with self._connect_lock:  # two threads of one handle must not open two clients
            if self._client is not None:
                return self._client
            # checked first, so the user gets this message rather than milvus_lite's logged traceback
            if self.lite and _locked_by_another_process(Path(self.uri)):
                raise self._locked()
            try:
                client = MilvusClient(uri=self._server_uri, token=self._credential.value, db_name=self.db_name, timeout=self._timeout,
                                      grpc_options=GRPC_OPTIONS)  # fmt: skip
            except Exception as exc:
                if self.lite and _locked_by_another_process(Path(self.uri)):
                    raise self._locked() from exc
                raise self._connect_error(exc) from exc
            if self.lite:
                with _lite_lock:
                    _lite_handles[os.path.abspath(self.uri)] += 1
            self._client = client
        return self._client

    @property
    def client(self) -> Any:
        return self._connect()

    @property
    def shared(self) -> bool:
        return not self.lite

    @property
    def storage_path(self) -> Path | None:
        return Path(self.uri) if self.lite else None

    def close(self) -> None:
        if self._client is None:
            return
        try:
            self._client.close()
        except Exception:  # closing an already closed Lite handle is harmless
            pass
        self._client = None
        self._loaded.clear()
        self._index_types.clear()
        if self.lite:
            path = os.path.abspath(self.uri)
            with _lite_lock:
                _lite_handles[path] -= 1
                last = _lite_handles[path] <= 0
                if last:
                    del _lite_handles[path]
            if last:  # lets another process open the store once this one has let go of it
                from milvus_lite.server_manager import server_manager_instance

                server_manager_instance.release_server(path)
