"""Error classification, against real failures rather than mocks: a refused connection is
BackendUnavailableError at once (and a password in the URI never shows); a server that goes away
and comes back is answered again by the same handle; refused credentials are AuthenticationError,
not retried; a request the engine rejects is not retried."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import numpy as np
import pytest

from clair_vec.errors import AuthenticationError, BackendUnavailableError, TransientBackendError
from clair_vec.store.redaction import without_credentials
from clair_vec.store.testing.relay import Relay, relay_target
from clair_vec.store.testing.support import PREFIX, Promises, make_records, open_backend


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


def _until_answered(call: Callable[[], Any], seconds: float) -> Any:
    """``call()``, again while it says the server is unavailable (a caller's retry after a 503),
    until it answers or ``seconds`` pass."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return call()
        except BackendUnavailableError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


class ErrorPromises(Promises):
    """The plugin's own classification of what its engine raises: transient, unavailable, refused."""

    def _open_and_read(self, uri: str | None, options: dict[str, Any]) -> Any:
        be = open_backend(self.backend_name, uri, options)
        try:
            be.list_collections()
            return be.search(f"{PREFIX}missing", np.zeros((1, self.dim), np.float32))
        finally:
            be.close()

    def test_an_option_the_backend_does_not_have_is_refused_by_name(self, backend_uri, backend_options):
        """A misspelt option (``hnsw_eff=128``) ignored would leave the user believing it set:
        declare options as keyword parameters, and pass the rest to ``Backend.__init__``, which
        refuses them."""
        try:
            be = open_backend(self.backend_name, backend_uri, {**backend_options, "clair_vec_no_such_option": 1})
        except ValueError as exc:
            assert "clair_vec_no_such_option" in str(exc), f"the refusal does not name the option: {exc}"
            return
        be.close()
        pytest.fail("an option no backend declares was accepted silently: pass unknown options to Backend.__init__")

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

    def test_a_handle_works_again_when_its_server_comes_back(self, backend, backend_uri, backend_options, info):
        """A server that goes away and comes back (a restart, a failover, a network cut): while it
        is gone a call fails fast with BackendUnavailableError, and once it is back the same handle
        answers again, without the caller reopening it (a service keeps one handle for days)."""
        target = relay_target(backend_uri)
        if isinstance(target, str):
            pytest.skip(target)
        with Relay(*target) as relay:
            be = open_backend(self.backend_name, relay.uri(backend_uri), backend_options)
            try:
                be.create_collection(info)
                be.upsert(info.name, make_records(12, dim=self.dim))
                relay.stop()
                down = _within(self.failure_deadline, lambda: be.count(info.name))
                assert down.finished, (
                    f"with its server gone, count() had not failed after {self.failure_deadline:.0f} s: a call must fail "
                    "fast with BackendUnavailableError (the service answers 503 and says when to retry)"
                )
                came_back = f"raised {type(down.error).__name__}: {down.error}" if down.error else f"returned {down.value!r}"
                assert isinstance(down.error, BackendUnavailableError), (
                    f"with its server gone, count() {came_back}; expected BackendUnavailableError")
                relay.start()
                # callers retry after a 503; the handle has half the deadline to answer again
                up = _within(self.failure_deadline, lambda: _until_answered(lambda: be.count(info.name), self.failure_deadline / 2))
                came_back = f"raised {type(up.error).__name__}: {up.error}" if up.error else f"returned {up.value!r}"
                assert up.finished and up.error is None and up.value == 12, (
                    f"the server was back, and the same handle's count() {came_back if up.finished else 'hung'} within "
                    f"{self.failure_deadline:.0f} s (expected 12): a handle must reconnect by itself, as a driver's "
                    "connection pool does, not stay broken until it is reopened")  # fmt: skip
            finally:
                be.close()

    def _refused(self, uri: str | None, options: dict[str, Any], secrets: list[Any], caplog: Any, where: str) -> None:
        caplog.set_level(logging.WARNING)
        out = _within(self.failure_deadline, lambda: self._open_and_read(uri, options))
        assert out.finished, f"refused credentials ({where}) had not failed after {self.failure_deadline:.0f} s: they are being retried"
        assert isinstance(out.error, AuthenticationError), (
            f"refused credentials ({where}) raised {type(out.error).__name__}: {out.error}; expected AuthenticationError, "
            "raised at once (the same credentials are refused again, so retrying only delays the answer)"
        )
        retried = [r.getMessage() for r in caplog.records if "transient error" in r.getMessage()]
        assert not retried, f"refused credentials ({where}) were retried as if transient: {retried[:2]}"
        assert "credential" in str(out.error).lower(), f"the message must say the credentials ({where}) were refused: {out.error}"
        shown = f"{out.error}\n{out.error!r}\n" + "\n".join(r.getMessage() for r in caplog.records)
        for value in secrets:
            if isinstance(value, str) and value:
                assert value not in shown, f"the error message or a log line shows the refused credentials ({where}) themselves"

    def test_refused_credentials_are_not_retried_and_say_so(self, backend_uri, backend_options, wrong_credentials, caplog):
        if wrong_credentials is None:
            pytest.skip("no wrong_credentials fixture: the store takes no credentials, or the server runs without "
                        "authentication")  # fmt: skip
        self._refused(backend_uri, {**backend_options, **wrong_credentials}, list(wrong_credentials.values()), caplog,
                      "given as options")  # fmt: skip

    @pytest.mark.parametrize("source", ["uri", "environment"])
    def test_refused_credentials_from_the_uri_or_the_environment_are_refused_alike(
        self, source, backend_uri, backend_options, wrong_credentials, wrong_credentials_uri, wrong_credentials_env,
        caplog, monkeypatch,
    ):  # fmt: skip
        """Credentials reach a backend three ways (options, the URI's user:password@, the
        environment); refused ones are AuthenticationError at once, and never shown, whichever
        way they came. The options that would win over them are left out."""
        given = wrong_credentials_uri if source == "uri" else wrong_credentials_env
        if given is None or wrong_credentials is None:
            pytest.skip(f"no wrong_credentials_{'uri' if source == 'uri' else 'env'} fixture: the backend reads no "
                        f"credentials from the {source}, or the server runs without authentication")  # fmt: skip
        options = {k: v for k, v in backend_options.items() if k not in wrong_credentials}
        if source == "uri":
            secret = urlsplit(given).password or urlsplit(given).username or ""
            self._refused(given, options, [secret, unquote(secret)], caplog, "given in the URI")
        else:
            for name, value in given.items():
                monkeypatch.setenv(name, value)
            uri = without_credentials(backend_uri) if backend_uri else backend_uri  # the environment's alone
            self._refused(uri, options, list(given.values()), caplog, "from the environment")

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
