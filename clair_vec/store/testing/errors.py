"""Error classification, against real failures rather than mocks: a refused connection is
BackendUnavailableError at once (and a password in the URI never shows); refused credentials are
AuthenticationError, not retried; a request the engine rejects is not retried."""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import pytest

from clair_vec.errors import AuthenticationError, BackendUnavailableError, TransientBackendError
from clair_vec.store.testing.support import PREFIX, Promises, open_backend


@dataclass
class _Outcome:
    finished: bool
    value: Any = None
    error: BaseException | None = None


def _within(seconds: float, fn: Callable[[], Any]) -> _Outcome:
    """Run ``fn`` in a daemon thread; what it returned or raised, or that it was still running."""
    out = _Outcome(False)

    def run() -> None:
        try:
            out.value = fn()
        except BaseException as exc:  # reported to the test, which asserts on it
            out.error = exc
        out.finished = True

    t = threading.Thread(target=run, daemon=True, name="conformance-deadline")
    t.start()
    t.join(seconds)
    return out


class ErrorPromises(Promises):
    """The plugin's own classification of what its engine raises: transient, unavailable, refused."""

    def _open_and_read(self, uri: str | None, options: dict[str, Any]) -> Any:
        be = open_backend(self.backend_name, uri, options)
        try:
            be.list_collections()
            return be.search(f"{PREFIX}missing", np.zeros((1, self.dim), np.float32))
        finally:
            be.close()

    def test_a_refused_connection_is_backend_unavailable_at_once(self, unreachable_uri, backend_options, caplog):
        if unreachable_uri is None:
            pytest.skip("no unreachable_uri: an embedded store, or a server URI that is not http(s)/grpc (override "
                        "unreachable_uri to check)")  # fmt: skip
        secret = f"pw-{uuid.uuid4().hex[:12]}"
        parts = urlsplit(unreachable_uri)
        with_credentials = urlunsplit(parts._replace(netloc=f"clairuser:{secret}@{parts.netloc}")) if parts.netloc else unreachable_uri
        caplog.set_level(logging.WARNING)
        out = _within(self.failure_deadline, lambda: self._open_and_read(with_credentials, backend_options))
        assert out.finished, (
            f"opening {unreachable_uri} (nothing listens there) had not failed after {self.failure_deadline:.0f} s: a "
            "refused connection must fail fast with BackendUnavailableError, not wait through a long retry loop"
        )
        assert isinstance(out.error, BackendUnavailableError), (
            f"a refused connection raised {type(out.error).__name__}: {out.error}; expected BackendUnavailableError (the "
            "service answers 503 for it; CLI users get 'cannot reach ...')"
        )
        shown = f"{out.error}\n{out.error!r}\n" + "\n".join(r.getMessage() for r in caplog.records)
        assert secret not in shown, "the error message or a log line shows the password given in the URI: show display_uri"

    def test_refused_credentials_are_not_retried_and_say_so(self, backend_uri, backend_options, wrong_credentials, caplog):
        if wrong_credentials is None:
            pytest.skip("no wrong_credentials fixture: the store takes no credentials, or the server runs without "
                        "authentication")  # fmt: skip
        caplog.set_level(logging.WARNING)
        out = _within(self.failure_deadline, lambda: self._open_and_read(backend_uri, {**backend_options, **wrong_credentials}))
        assert out.finished, f"refused credentials had not failed after {self.failure_deadline:.0f} s: they are being retried"
        assert isinstance(out.error, AuthenticationError), (
            f"refused credentials raised {type(out.error).__name__}: {out.error}; expected AuthenticationError, raised "
            "at once (the same credentials are refused again, so retrying only delays the answer)"
        )
        retried = [r.getMessage() for r in caplog.records if "transient error" in r.getMessage()]
        assert not retried, f"refused credentials were retried as if transient: {retried[:2]}"
        assert "credential" in str(out.error).lower(), f"the message must say the credentials were refused: {out.error}"
        shown = f"{out.error}\n{out.error!r}\n" + "\n".join(r.getMessage() for r in caplog.records)
        for value in wrong_credentials.values():
            if isinstance(value, str) and value:
                assert value not in shown, "the error message or a log line shows the refused credentials themselves"

    def test_a_request_the_engine_rejects_is_not_retried(self, backend, info, filled, monkeypatch):
        monkeypatch.setattr(backend, "retry_base_delay", 0.0)
        calls = []

        def search(*args: Any) -> Any:
            calls.append(1)
            return backend._search(*args)

        # the base class refuses this before any engine sees it; sent straight to the engine, it is a bad request
        wrong = np.ones((1, self.dim + 5), np.float32) / np.sqrt(self.dim + 5)
        try:
            backend._call(search, info.name, wrong, 3, {})
        except Exception as exc:
            assert len(calls) == 1, (
                f"the engine rejected a query of dimension {self.dim + 5} against {self.dim}-d vectors (a bad request: "
                f"{type(exc).__name__}) and the backend sent it {len(calls)} times: is_transient() must say no to a "
                "request the engine rejects"
            )
            assert not isinstance(exc, TransientBackendError), f"a rejected request surfaced as transient: {exc}"
        else:
            pytest.skip(f"the engine answered a query of dimension {self.dim + 5} against {self.dim}-d vectors instead of "
                        "rejecting it: no bad request to classify")  # fmt: skip
