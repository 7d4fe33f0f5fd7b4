"""The ``pytest11`` entry point of clair_vec: makes pytest rewrite the asserts of the backend
conformance suite (:mod:`clair_vec.store.testing`, imported as ``clair_vec.plugin.BackendConformance``), so a failing promise shows the values it compared.

Registered by name rather than by making the suite itself the entry point: pytest
marks an entry-point module for rewriting from its distribution's file list, which an editable
install (``pip install -e``) does not have, so the suite's asserts would stay bare there.
"""

import pytest

pytest.register_assert_rewrite("clair_vec.store.testing")


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
