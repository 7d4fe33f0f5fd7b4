"""``clair-vec backends --check``: the conformance suite against a deployment, as an operator runs it.

The suite (:class:`~clair_vec.store.testing.BackendConformance`) runs in this process through
``pytest.main`` on a one-class test module written to a temporary directory, with an empty
pytest configuration (nothing of the current directory's), against the installed plugin and the
given URI. Every collection and alias the suite makes starts with ``conformance_``; whatever of
those is still there at the end (a test that crashed mid-way) is dropped, and an embedded store
that did not exist before the check is removed again, so the check leaves nothing behind.

pytest is needed (it is the suite's runner); the store imports it only here, when asked to check.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clair_vec.errors import BackendError, UnknownBackendError
from clair_vec.store.redaction import redact_uri, scrub

PREFIX = "conformance_"  # the suite's own prefix (clair_vec.store.testing.PREFIX), not imported: see _MODULE


@dataclass
class Target:
    name: str
    uri: str | None
    options: dict[str, Any] = field(default_factory=dict)
    wrong_credentials: dict[str, Any] | None = None
    #: options (over ``options``) that open an empty namespace the operator made (a database, a
    #: schema), for the promise that opening a backend creates nothing; None: that promise skips
    fresh_options: dict[str, Any] | None = None
    #: a URI of this backend's kind where nothing listens; None: derived from an http(s) ``uri``
    unreachable_uri: str | None = None


@dataclass
class Promise:
    test: str
    outcome: str  # "holds", "broken", "skipped"
    detail: str = ""

    @property
    def words(self) -> str:
        """``test_a_new_process_can_search_...`` as the sentence it is."""
        return self.test.removeprefix("test_").replace("_", " ")


@dataclass
class CheckReport:
    target: Target
    promises: list[Promise]
    errors: list[str] = field(default_factory=list)
    swept: list[str] = field(default_factory=list)

    @property
    def broken(self) -> list[Promise]:
        return [p for p in self.promises if p.outcome == "broken"]

    @property
    def ok(self) -> bool:
        return bool(self.promises) and not self.broken and not self.errors


#: the target of the check running in this process, read by the generated test module
_TARGET: Target | None = None

# imported by pytest after it has installed its assertion rewriting, so the suite's asserts show values
_MODULE = '''
import os
import pytest
from clair_vec.store.deployment_check import current_target
from clair_vec.store.testing import BackendConformance


class TestDeployment(BackendConformance):
    backend_name = current_target().name

    @pytest.fixture
    def backend_uri(self):
        return current_target().uri

    @pytest.fixture
    def backend_options(self):
        return dict(current_target().options)

    @pytest.fixture
    def wrong_credentials(self):
        return current_target().wrong_credentials

    @pytest.fixture
    def unreachable_uri(self):
        from clair_vec.store.deployment_check import unreachable_uri

        return unreachable_uri(current_target())

    @pytest.fixture
    def fresh_namespace(self):
        from clair_vec.store.deployment_check import fresh_namespace

        return fresh_namespace(current_target())

    @pytest.fixture
    def fresh_uri(self, tmp_path):
        uri = current_target().uri or ""
        if "://" in uri:
            return None
        local = uri.startswith("local:")
        fresh = str(tmp_path / "never" / (os.path.basename(uri.removeprefix("local:").rstrip("/")) or "store"))
        return f"local:{fresh}" if local else fresh

    @pytest.fixture
    def fresh_path(self, fresh_uri):
        return None if fresh_uri is None else fresh_uri.removeprefix("local:")
'''


def unreachable_uri(target: Target) -> str | None:
    """``--unreachable-uri``, else the check's http(s)/grpc URI on a free loopback port."""
    if target.unreachable_uri is not None:
        return target.unreachable_uri
    from clair_vec.store.testing.support import unreachable_like

    return unreachable_like(target.uri)


def fresh_namespace(target: Target) -> Any:
    """The operator's empty namespace as the suite's FreshNamespace: what is in it is what a new
    handle on it lists (collections and aliases), so anything an open creates shows."""
    if target.fresh_options is None:
        return None
    from clair_vec.store.plugins import get_backend
    from clair_vec.store.testing import FreshNamespace

    options = {**target.options, **target.fresh_options}

    def contents() -> list[str]:
        with get_backend(target.name, target.uri, **options) as be:
            names = [f"collection {c}" for c in be.list_collections()]
            if be.supports("aliases"):
                names += [f"alias {a}" for a in be.aliases()]
            return sorted(names)

    return FreshNamespace(target.uri, options, contents=contents)


def current_target() -> Target:
    if _TARGET is None:
        raise RuntimeError("no deployment check is running")
    return _TARGET


class _Collector:
    """A pytest plugin that keeps one outcome per promise, in words."""

    def __init__(self) -> None:
        self.promises: dict[str, Promise] = {}
        self.errors: list[str] = []

    def pytest_collectreport(self, report: Any) -> None:
        if report.failed:
            self.errors.append(f"the suite could not be collected: {report.longreprtext[-2000:]}")

    def pytest_runtest_logreport(self, report: Any) -> None:
        test = report.nodeid.rsplit("::", 1)[-1]
        if report.failed:
            crash = getattr(report.longrepr, "reprcrash", None)
            text = crash.message if crash is not None else _last_error(str(report.longrepr))
            where = "" if report.when == "call" else f" (in its {report.when})"
            self.promises[test] = Promise(test, "broken", scrub(text.strip()) + where)
        elif report.skipped and test not in self.promises:
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
            self.promises[test] = Promise(test, "skipped", scrub(reason.removeprefix("Skipped: ")))
        elif report.when == "call" and test not in self.promises:
            self.promises[test] = Promise(test, "holds")


def _last_error(text: str) -> str:
    """The ``E ...`` lines of a failure already turned into text (scrubbed of a secret): what it asserted."""
    lines = [line[1:].strip() for line in text.splitlines() if line.startswith("E ")]
    return "\n".join(lines[-8:]) if lines else text[-2000:]


def _store_path(uri: str | None) -> Path | None:
    """The file system path of an embedded store URI (None for a server)."""
    if not uri or "://" in uri:
        return None
    return Path(uri.removeprefix("local:"))


def _first_missing(path: Path | None) -> Path | None:
    """The outermost of ``path`` and its parents that does not exist yet (None: it exists)."""
    if path is None or path.exists():
        return None
    path = path.absolute()
    while not path.parent.exists():
        path = path.parent
    return path


def _existing(be: Any) -> set[str]:
    """Names of the suite's form that were there before it ran: someone else's, never dropped."""
    try:
        return {f"alias {a}" for a in be.aliases() if a.startswith(PREFIX)} | {
            f"collection {c}" for c in be.list_collections() if c.startswith(PREFIX)}
    except Exception:  # a backend without aliases still lists its collections
        return {f"collection {c}" for c in be.list_collections() if c.startswith(PREFIX)}


def _sweep(target: Target, keep: frozenset[str] | set[str] = frozenset()) -> list[str]:
    """Drop what the suite left (collections and aliases named ``conformance_...``) that were not there before."""
    from clair_vec.store.plugins import get_backend

    left: list[str] = []
    with get_backend(target.name, target.uri, **target.options) as be:
        for alias in be.aliases():
            if alias.startswith(PREFIX) and f"alias {alias}" not in keep:
                be.drop_alias(alias)
                left.append(f"alias {alias}")
        for name in be.list_collections():
            if name.startswith(PREFIX) and f"collection {name}" not in keep:
                be.drop_collection(name)
                left.append(f"collection {name}")
    return left


def run_check(target: Target, *, select: str | None = None) -> CheckReport:
    """Run every promise of the suite (or those ``select``, a pytest ``-k`` expression, names)."""
    global _TARGET
    try:
        import pytest
    except ImportError:
        raise BackendError("checking a deployment runs the conformance suite, which needs pytest: pip install pytest") from None
    from clair_vec.store.plugins import backends, get_backend

    if target.name not in backends():
        get_backend(target.name, target.uri, **target.options)  # raises the UnknownBackendError with the fix
        raise UnknownBackendError(f"unknown backend {target.name!r}")
    path = _store_path(target.uri)
    made = _first_missing(path)
    with get_backend(target.name, target.uri, **target.options) as be:  # reachable, credentials accepted: else a clear error now
        before = _existing(be)
    collector = _Collector()
    _TARGET = target
    try:
        with tempfile.TemporaryDirectory(prefix="clair-vec-check-") as tmp:
            (Path(tmp) / "pytest.ini").write_text("[pytest]\n")
            (Path(tmp) / "test_deployment.py").write_text(textwrap.dedent(_MODULE))
            # importlib: a second check in the same process imports its own module, not the first one's
            args = ["-p", "no:terminal", "-p", "no:cacheprovider", "-c", str(Path(tmp) / "pytest.ini"), "--rootdir", tmp,
                    "--import-mode", "importlib", "--basetemp", str(Path(tmp) / "basetemp"),
                    str(Path(tmp) / "test_deployment.py")]  # fmt: skip
            if select:
                args += ["-k", select]
            pytest.main(args, plugins=[collector])
    finally:
        _TARGET = None
    report = CheckReport(target, sorted(collector.promises.values(), key=lambda p: p.test), collector.errors)
    try:
        report.swept = _sweep(target, before)
    except Exception as exc:  # the verdict stands; say what could not be cleaned
        report.errors.append(f"cleaning up after the suite failed: {type(exc).__name__}: {scrub(str(exc))}")
    if made is not None and made.exists():  # the check made this store (and its parents): take them away again
        shutil.rmtree(made) if made.is_dir() else made.unlink()
    if select and not report.promises:
        report.errors.append(f"no promise matches -k {select!r}")
    return report


def format_report(report: CheckReport) -> str:
    t = report.target
    lines = [f"backend {t.name!r} at {redact_uri(t.uri)}: {len(report.promises)} promises of the backend contract checked"]
    for p in report.promises:
        mark = {"holds": "holds  ", "broken": "BROKEN ", "skipped": "skipped"}[p.outcome]
        lines.append(f"  {mark}  {p.words}" + (f"  ({p.detail})" if p.outcome == "skipped" else ""))
        if p.outcome == "broken":
            lines += ["           " + d for d in p.detail.splitlines()[:8]]
    for e in report.errors:
        lines.append(f"  ERROR    {e}")
    if report.swept:
        lines.append(f"  left behind by the suite and dropped now: {', '.join(report.swept)}")
    holds = sum(p.outcome == "holds" for p in report.promises)
    skipped = sum(p.outcome == "skipped" for p in report.promises)
    lines.append(f"{holds} hold, {len(report.broken)} broken, {skipped} skipped (a skip says which fixture or engine "
                 "feature it needs)")  # fmt: skip
    if report.broken:
        lines.append("broken promises: " + "; ".join(p.words for p in report.broken))
    return "\n".join(lines)


def parse_options(pairs: list[str], flag: str = "--option") -> dict[str, Any]:
    """``["timeout=5", "db_name=prod"]`` -> ``{"timeout": 5, "db_name": "prod"}``: numbers and
    true/false become numbers and booleans, none/null None, ``{...}`` a JSON object, except for
    credentials, which stay strings."""
    from clair_vec.store.redaction import is_secret_name, register_secret

    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{flag} takes KEY=VALUE, got {scrub(pair)!r}")
        key = key.strip()
        if is_secret_name(key):
            register_secret(value)
            out[key] = value
            continue
        if value.lstrip().startswith("{"):
            try:
                out[key] = json.loads(value)
            except ValueError as exc:
                raise ValueError(f"{flag} {key}=...: the value is not a JSON object ({exc}), e.g. "
                                 f"{key}='{{\"M\": 16}}'") from None  # fmt: skip
            continue
        out[key] = _scalar(value)
    return out


def _scalar(value: str) -> Any:
    lowered = value.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value

