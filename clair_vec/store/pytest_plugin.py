"""The ``pytest11`` entry point of clair_vec: makes pytest rewrite the asserts of the backend
conformance suite (:mod:`clair_vec.store.testing`, imported as ``clair_vec.plugin.BackendConformance``), so a failing promise shows the values it compared.

Registered by name rather than by making the suite itself the entry point: pytest
marks an entry-point module for rewriting from its distribution's file list, which an editable
install (``pip install -e``) does not have, so the suite's asserts would stay bare there.
"""

import unittest

import pytest

pytest.register_assert_rewrite("clair_vec.store.testing")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> object:
    """A promise of the conformance suite that raises anything but an assertion or a skip (a
    driver's own exception, most often) fails with the promise, the backend call it was making
    and what came back, in words (:mod:`clair_vec.store.testing.tracing`)."""
    cls = getattr(item, "cls", None)
    promise = cls is not None and any(c.__module__.startswith("clair_vec.store.testing") for c in cls.__mro__)
    if not promise:
        return (yield)
    from clair_vec.store.testing import tracing

    tracing.forget()
    try:
        return (yield)
    except (AssertionError, pytest.skip.Exception, pytest.fail.Exception, pytest.xfail.Exception, KeyboardInterrupt,
            unittest.SkipTest):  # fmt: skip
        raise
    except Exception as exc:
        if not tracing.from_backend(exc) or item.get_closest_marker("xfail") is not None:
            raise  # the suite's own error, or one the test expects: pytest reports it as it is
        doc = getattr(getattr(item, "function", None), "__doc__", None)
        raise AssertionError(tracing.broken_promise(item.name.partition("[")[0], doc, exc)) from exc


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> object:
    """A failing promise shows the values it compared, the test's arguments and what it captured:
    a backend URI among them. Every secret a backend registered (a URI's password, a token) is
    masked in the report, so a failure printed to a CI log never shows one."""
    outcome = yield
    report = outcome.get_result()
    from clair_vec.store.redaction import scrub

    if isinstance(report.longrepr, tuple):  # a skip: (path, line, reason), a shape pytest relies on
        path, line, reason = report.longrepr
        report.longrepr = (path, line, scrub(reason))
    elif report.longrepr is not None:
        text = str(report.longrepr)
        clean = scrub(text)
        if clean != text:  # the failure as text: every frame's values are in it, so all of it is scrubbed
            report.longrepr = clean
    report.sections = [(title, scrub(content)) for title, content in report.sections]
