"""The conformance suite must fail backends that break a promise, not only pass good ones.

Each variant below is the NumPy reference backend with one defect that a real backend had or
could have. The suite runs against each, in a separate pytest process (as a plugin author runs
it), and the test checks that the promise the defect breaks is the one that fails, while the
unmodified backend passes the same tests.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

BROKEN = textwrap.dedent('''
    """Deliberately broken backends, registered as a plugin through CLAIR_VEC_PLUGINS."""
    from clair_vec import hookimpl
    from clair_vec.backend import CollectionInfo
    from clair_vec_numpy import NumpyBackend

    _LOADED = set()  # per process, like Milvus Lite's load state: a new process starts with none loaded


    class NoLoadOnReopen(NumpyBackend):
        """Counts in a new process, but cannot search or look ids up there (the Milvus Lite bug)."""

        def _create(self, info):
            super()._create(info)
            _LOADED.add(info.name)

        def _upsert(self, name, records):
            _LOADED.add(name)
            super()._upsert(name, records)

        def _search(self, name, *args):
            if name not in _LOADED:
                raise RuntimeError(f"collection {name!r} is in state 'released'; call load()")
            return super()._search(name, *args)

        def _existing_ids(self, name, ids):
            if name not in _LOADED:
                raise RuntimeError(f"collection {name!r} is in state 'released'; call load()")
            return super()._existing_ids(name, ids)


    class LosesSpec(NumpyBackend):
        """Stores only name, dim and model: target_domain and extra come back as defaults."""

        def _read_info(self, name):
            info = super()._read_info(name)
            return None if info is None else CollectionInfo(info.name, info.dim, info.model)


    def ignoring(key, where):
        class Ignores(NumpyBackend):
            def _search(self, name, vectors, top_k, flt):
                if where == "search":
                    flt = {k: v for k, v in flt.items() if k != key}
                return super()._search(name, vectors, top_k, flt)

            def _count(self, name, flt):
                if where == "count":
                    flt = {k: v for k, v in flt.items() if k != key}
                return super()._count(name, flt)

        return Ignores


    class ReturnsDeleted(NumpyBackend):
        """Deletes from the id list, but search still scans a stale copy of the vectors."""

        def _delete(self, name, ids):
            c = self.data[name]
            stale = dict(c)
            super()._delete(name, ids)
            c["stale"] = stale

        def _search(self, name, vectors, top_k, flt):
            c = self.data[name]
            if "stale" not in c:
                return super()._search(name, vectors, top_k, flt)
            current = {k: c[k] for k in ("ids", "vectors", "payloads")}
            c.update({k: c["stale"][k] for k in ("ids", "vectors", "payloads")})
            try:
                return super()._search(name, vectors, top_k, flt)
            finally:
                c.update(current)


    class PadsHits(NumpyBackend):
        """Always returns top_k hits, topping up with records the filter excluded."""

        def _search(self, name, vectors, top_k, flt):
            rows = super()._search(name, vectors, top_k, flt)
            every = super()._search(name, vectors, top_k, {})
            return [row + [h for h in extra if h.id not in {x.id for x in row}][: top_k - len(row)]
                    for row, extra in zip(rows, every)]


    def _ascii(value):
        return value.encode("ascii", "backslashreplace").decode() if isinstance(value, str) else value


    class MangledText(NumpyBackend):
        """Stores payload strings ASCII-escaped, as a JSON-quoting bug would."""

        def _upsert(self, name, records):
            for r in records:
                r.payload = {k: _ascii(v) for k, v in r.payload.items()}
            super()._upsert(name, records)


    class QuoteBug(NumpyBackend):
        """Drops backslashes and quotes from filter values, as a naive expression builder does."""

        def _search(self, name, vectors, top_k, flt):
            return super()._search(name, vectors, top_k, {k: [v.replace("\\\\", "").replace('"', "") for v in vs]
                                                          for k, vs in flt.items()})


    class StorageOrderPages(NumpyBackend):
        """Pages by key from a page taken in storage order (what Milvus Lite does without the
        iterator parameter): records between pages are skipped."""

        def _scroll(self, name, flt, cursor, limit):
            c = self.data[name]
            rows = [(i, dict(p)) for i, p in zip(c["ids"], c["payloads"]) if (cursor is None or i > cursor)]
            page = sorted(rows[:limit])
            return page, (page[-1][0] if len(page) == limit else None)


    VARIANTS = {
        "no_load": NoLoadOnReopen, "storage_order_pages": StorageOrderPages, "loses_spec": LosesSpec, "returns_deleted": ReturnsDeleted, "pads_hits": PadsHits,
        "mangled_text": MangledText, "quote_bug": QuoteBug,
        **{f"ignores_{k}_in_{w}": ignoring(k, w) for k in ("domain", "label", "path", "pseudo_label") for w in ("search", "count")},
    }


    @hookimpl
    def clair_vec_register_backends(register):
        for name, cls in VARIANTS.items():
            register(name, type(cls.__name__, (cls,), {"name": name}))
''')

SUITE = textwrap.dedent('''
    import pytest
    from broken_backends import VARIANTS
    from clair_vec.testing import BackendConformance


    def make(name):
        class T(BackendConformance):
            backend_name = name

            @pytest.fixture
            def backend_uri(self, tmp_path):
                return str(tmp_path / "store")

        T.__name__ = T.__qualname__ = f"Test_{name}"
        return T


    for _name in ["numpy", *VARIANTS]:
        globals()[f"Test_{_name}"] = make(_name)
''')

#: defect -> the promises (test names) that must catch it
EXPECTED = {
    "no_load": ["test_a_new_process_can_search_what_another_process_wrote"],
    "storage_order_pages": ["test_get_and_records_return_payloads"],
    "loses_spec": ["test_spec_survives_reopening_in_a_new_process"],
    "returns_deleted": ["test_deleted_records_are_gone_from_every_read"],
    "pads_hits": ["test_top_k_beyond_the_matches_returns_only_the_matches"],
    "mangled_text": ["test_unicode_quotes_and_backslashes_survive_payloads_and_filters"],
    "quote_bug": ["test_unicode_quotes_and_backslashes_survive_payloads_and_filters"],
    **{f"ignores_{k}_in_{w}": [f"test_every_filter_key_is_applied_in_search_and_count[{k}]"]
       for k in ("domain", "label", "path", "pseudo_label") for w in ("search", "count")},  # fmt: skip
}


def test_the_suite_fails_each_broken_backend_on_the_promise_it_breaks(tmp_path):
    (tmp_path / "broken_backends.py").write_text(BROKEN)
    (tmp_path / "test_broken.py").write_text(SUITE)
    targets = sorted({t for tests in EXPECTED.values() for t in tests})
    nodes = [f"test_broken.py::Test_{v}::{t}" for v in ["numpy", *EXPECTED] for t in targets]
    env = {**os.environ, "CLAIR_VEC_PLUGINS": "clair_vec_numpy,broken_backends",
           "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT / "plugins" / "example-numpy")])}  # fmt: skip
    out = subprocess.run([sys.executable, "-m", "pytest", "-vv", "-p", "no:cacheprovider", "--junitxml", "report.xml", *nodes],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)  # fmt: skip
    failed: dict[str, set[str]] = {}
    passed: dict[str, set[str]] = {}
    messages: dict[tuple[str, str], str] = {}
    for case in ET.parse(tmp_path / "report.xml").getroot().iter("testcase"):
        variant = case.get("classname").rsplit(".", 1)[-1].removeprefix("Test_")
        problem = case.find("failure") if case.find("failure") is not None else case.find("error")
        (failed if problem is not None else passed).setdefault(variant, set()).add(case.get("name"))
        if problem is not None:
            messages[variant, case.get("name")] = (problem.get("message") or "") + (problem.text or "")
    assert "numpy" not in failed, out.stdout[-4000:]  # the reference passes every one of these promises
    assert passed["numpy"] == set(targets)
    for variant, must_fail in EXPECTED.items():
        assert set(must_fail) <= failed.get(variant, set()), f"{variant} was not caught: {failed.get(variant)}"
    # and the failure message points at the defect, with values (the suite's asserts are rewritten)
    assert "is in state 'released'" in messages["no_load", EXPECTED["no_load"][0]]
    spec = messages["loses_spec", EXPECTED["loses_spec"][0]]
    assert "target_domain='photo'" in spec and "target_domain='sketch'" in spec
