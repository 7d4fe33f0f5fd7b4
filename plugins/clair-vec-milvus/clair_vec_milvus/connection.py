"""Reaching the store: the URI and its default (a Milvus Lite file or a server), credentials,
opening and closing the pymilvus client, and Milvus Lite's one-process lock."""

from __future__ import annotations

import fcntl
import os
import threading
from collections import Counter
from pathlib import Path
from typing import Any

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
        if self.lite:  # an embedded store has no users
            return NO_SECRET
        if password:
            if not user:
                raise ValueError("option password needs option user (or pass token='user:password')")
            register_secret(f"{user}:{password}")
            return Secret(f"{user}:{password}", "options user/password")
        return find_secret(token, "token", TOKEN_ENV)

    def _connect(self) -> Any:
        if self._client is not None:
            return self._client
        from pymilvus import MilvusClient

        with self._connect_lock:  # two threads of one handle must not open two clients
            if self._client is not None:
                return self._client
            # checked first, so the user gets this message rather than milvus_lite's logged traceback
            if self.lite and _locked_by_another_process(Path(self.uri)):
                raise self._locked()
            try:
                client = MilvusClient(uri=self.uri, token=self._credential.value, db_name=self.db_name, timeout=self._timeout,
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
