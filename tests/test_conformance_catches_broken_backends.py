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
    import os
    import socket
    import time
    import unicodedata

    import numpy as np

    from clair_vec.plugin import hookimpl
    from clair_vec.plugin import CollectionInfo, Hit, matches
    from clair_vec.errors import AuthenticationError
    from clair_vec.store.redaction import redact_uri, register_secret
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
            stale = dict(self.data[name])
            super()._delete(name, ids)
            self.data[name]["stale"] = stale

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


    class DuplicateTable(Exception):
        """psycopg's, as a third-party pgvector backend let it out of count()."""


    class LeaksDriverErrors(NumpyBackend):
        """Its count() lets the driver's own exception out, untranslated."""

        def _count(self, name, flt):
            raise DuplicateTable('relation "last_loaded_collection" already exists')


    class SwallowsOptions(NumpyBackend):
        """Keeps the options it does not know for itself instead of passing them on: a misspelt
        one is ignored while the user believes it set."""

        def __init__(self, uri=None, **options):
            self.extra_options = options
            super().__init__(uri)


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


    _DATA = ("_upsert", "_search", "_count", "_existing_ids", "_get", "_vectors", "_scroll", "_delete")


    class OneTable(NumpyBackend):
        """Keeps every collection's records in one table (the first collection's), as a plugin that
        maps collections onto one SQL table and forgets the collection column would."""


    for _p in _DATA:
        setattr(OneTable, _p, lambda self, name, *a, _f=getattr(NumpyBackend, _p): _f(self, sorted(self.data)[0], *a))


    def renaming(key):
        """Stores collection ``name`` under ``key(name)``: a truncated or case-folded identifier."""

        class Renames(NumpyBackend):
            def _create(self, info):
                super()._create(CollectionInfo(key(info.name), info.dim, info.model, info.metric, info.target_domain, info.extra))

        for p in (*_DATA, "_read_info", "_drop", "_load", "_flush"):
            setattr(Renames, p, lambda self, name, *a, _f=getattr(NumpyBackend, p): _f(self, key(name), *a))
        return Renames


    class RemembersLastCollection(NumpyBackend):
        """Binds the handle to the collection it loaded last; later calls go there, whatever they name."""

        _bound = None

        def _load(self, name):
            self._bound = name

        def _search(self, name, *a):
            return super()._search(self._bound or name, *a)

        def _count(self, name, flt):
            return super()._count(self._bound or name, flt)


    def _nfc(v):
        return unicodedata.normalize("NFC", v) if isinstance(v, str) else v


    class NormalisesUnicode(NumpyBackend):
        """NFC-normalises payload strings and filter values, as some text columns do."""

        def _upsert(self, name, records):
            for r in records:
                r.payload = {k: _nfc(v) for k, v in r.payload.items()}
            super()._upsert(name, records)

        def _count(self, name, flt):
            return super()._count(name, {k: [_nfc(v) for v in vs] for k, vs in flt.items()})

        def _search(self, name, vectors, top_k, flt):
            return super()._search(name, vectors, top_k, {k: [_nfc(v) for v in vs] for k, vs in flt.items()})


    class CreatesOnOpen(NumpyBackend):
        """Creates its directory when opened, before any collection."""

        def __init__(self, uri=None, **options):
            super().__init__(uri, **options)
            if self.root:
                self.root.mkdir(parents=True, exist_ok=True)


    _KEPT = []


    class LeaksConnections(NumpyBackend):
        """Opens a connection per call and never closes it."""

        def _count(self, name, flt):
            _KEPT.append(socket.socketpair())
            return super()._count(name, flt)


    class DropsOpenFiles(NumpyBackend):
        """Opens a file per search and leaves it to the garbage collector."""

        def _search(self, *a):
            open(os.devnull)
            return super()._search(*a)


    class SharedScratch(NumpyBackend):
        """Keeps per-call state on the handle: threads overwrite each other's query."""

        def _search(self, name, vectors, top_k, flt):
            self._scratch = vectors
            time.sleep(0.002)
            return super()._search(name, self._scratch, top_k, flt)


    class RetriesEverything(NumpyBackend):
        """Calls every error transient, bad requests included."""

        def is_transient(self, exc):
            return True


    RIGHT, WRONG = "right-password-42", "wrong-password-42"


    class ChecksPassword(NumpyBackend):
        """The control: refuses a wrong password at once, with AuthenticationError, naming no secret."""

        def __init__(self, uri=None, *, password=None, **options):
            register_secret(password)
            if password != RIGHT:
                raise AuthenticationError(f"the store at {redact_uri(uri)} refused the credentials (option password)")
            super().__init__(uri, **options)


    class RetriesRefusedPassword(NumpyBackend):
        """Raises its client's PermissionError from every call, and calls it transient."""

        def __init__(self, uri=None, *, password=None, **options):
            super().__init__(uri, **options)
            self._password = password

        def _list(self):
            if self._password != RIGHT:
                raise PermissionError("password rejected")
            return super()._list()

        def is_transient(self, exc):
            return isinstance(exc, PermissionError) or super().is_transient(exc)


    class LeaksPassword(NumpyBackend):
        """Refuses a wrong password with a message that quotes it."""

        def __init__(self, uri=None, *, password=None, **options):
            if password != RIGHT:
                raise AuthenticationError(f"credentials refused: password {password!r} is wrong")
            super().__init__(uri, **options)


    class ClaimsSharedButLocks(NumpyBackend):
        @property
        def shared(self):
            return True


    class UnlockedNotShared(NumpyBackend):
        """No lock: a second process opens the store and writes, yet shared stays False."""

        def _lock(self):
            if self.root:
                self.root.mkdir(parents=True, exist_ok=True)


    class CachesAliases(NumpyBackend):
        """Resolves each alias once and keeps the answer for the handle's lifetime."""

        def _alias_target(self, name):
            cache = self.__dict__.setdefault("_alias_cache", {})
            if name not in cache:
                cache[name] = super()._alias_target(name)
            return cache[name]


    class DropsThenSetsAlias(NumpyBackend):
        """Moves an alias in two steps: a reader in between finds no alias."""

        def _set_alias(self, alias, collection):
            self._drop_alias(alias)
            time.sleep(0.01)
            super()._set_alias(alias, collection)


    class WrongVectors(NumpyBackend):
        """Returns each stored vector with its components reversed."""

        def _vectors(self, name, ids):
            return {i: v[::-1].copy() for i, v in super()._vectors(name, ids).items()}


    class NoStoragePath(NumpyBackend):
        """An embedded store that does not say where it lives: its writes are never checked for space."""

        @property
        def storage_path(self):
            return None


    class InnerProduct(NumpyBackend):
        """Ranks and scores by inner product: right only for unit vectors."""

        def _upsert(self, name, records):
            super()._upsert(name, records)  # stores unit vectors: give each back the length it came with
            c = self.data[name]
            pos = {i: n for n, i in enumerate(c["ids"])}
            for r in records:
                c["vectors"][pos[r.id]] *= float(np.linalg.norm(r.vector))
            self._save(name)

        def _search(self, name, vectors, top_k, flt):
            c = self.data[name]
            idx = np.flatnonzero(np.array([matches(p, flt) for p in c["payloads"]], dtype=bool))
            sims = vectors @ c["vectors"][idx].T
            return [[Hit(c["ids"][idx[j]], float(row[j]), dict(c["payloads"][idx[j]])) for j in np.argsort(-row)[:top_k]]
                    for row in sims]


    class KeepsOldVector(NumpyBackend):
        """An upsert of a stored id updates its payload and keeps its old vector."""

        def _upsert(self, name, records):
            c = self.data[name]
            pos = {i: n for n, i in enumerate(c["ids"])}
            for r in records:
                if r.id in pos:
                    r.vector = c["vectors"][pos[r.id]].copy()
            super()._upsert(name, records)


    class UnsortedWhenFiltered(NumpyBackend):
        """Filtered hits come back worst first."""

        def _search(self, name, vectors, top_k, flt):
            rows = super()._search(name, vectors, top_k, flt)
            return [list(reversed(r)) for r in rows] if flt else rows


    class TopKIgnoredWhenFiltered(NumpyBackend):
        """With a filter, every match comes back whatever top_k says."""

        def _search(self, name, vectors, top_k, flt):
            return super()._search(name, vectors, 10**6 if flt else top_k, flt)


    class StaleFilteredCount(NumpyBackend):
        """A filtered count reads a payload index that delete never updates."""

        def _upsert(self, name, records):
            super()._upsert(name, records)
            idx = self.__dict__.setdefault("_pidx", {}).setdefault(name, {})
            idx.update({r.id: dict(r.payload) for r in records})

        def _count(self, name, flt):
            if not flt:
                return super()._count(name, flt)
            return sum(matches(p, flt) for p in self.__dict__.get("_pidx", {}).get(name, {}).values())


    class DeletesInMemoryOnly(NumpyBackend):
        """Deletes in memory only: reopened, the deleted records are back."""

        def _delete(self, name, ids):
            with self._write_lock:
                c, gone = self.data[name], set(ids)
                keep = [n for n, i in enumerate(c["ids"]) if i not in gone]
                self.data[name] = {"info": c["info"], "ids": [c["ids"][n] for n in keep],
                                   "payloads": [c["payloads"][n] for n in keep], "vectors": c["vectors"][keep]}
                return len(c["ids"]) - len(keep)


    class OverlappingPages(NumpyBackend):
        """An off-by-one cursor: each page starts with the last record of the one before."""

        def _scroll(self, name, flt, cursor, limit):
            page, nxt = super()._scroll(name, flt, cursor, limit)
            return page, (nxt - 1 if nxt is not None else None)


    _GRAVEYARD = {}


    class DropKeepsRecords(NumpyBackend):
        """Drop removes the spec, not the records: created again, the old records are back."""

        def _drop(self, name):
            _GRAVEYARD[(str(self.root), name)] = self.data[name]
            return super()._drop(name)

        def _create(self, info):
            super()._create(info)
            old = _GRAVEYARD.pop((str(self.root), info.name), None)
            if old is not None:
                self.data[info.name] = {**old, "info": info}
                self._save(info.name)


    class CloseForgetsItsConnection(NumpyBackend):
        """Holds a connection per handle that close() leaves open (only the garbage collector closes it)."""

        def __init__(self, uri=None, **options):
            super().__init__(uri, **options)
            self._conn = socket.socketpair()


    VARIANTS = {
        "no_load": NoLoadOnReopen, "storage_order_pages": StorageOrderPages, "loses_spec": LosesSpec, "returns_deleted": ReturnsDeleted, "pads_hits": PadsHits,
        "mangled_text": MangledText, "quote_bug": QuoteBug,
        **{f"ignores_{k}_in_{w}": ignoring(k, w) for k in ("domain", "label", "path", "pseudo_label") for w in ("search", "count")},
        "one_table": OneTable, "truncates_names": renaming(lambda n: n[:64]), "case_folds_names": renaming(str.lower),
        "remembers_last_collection": RemembersLastCollection, "normalises_unicode": NormalisesUnicode,
        "creates_on_open": CreatesOnOpen, "leaks_connections": LeaksConnections, "drops_open_files": DropsOpenFiles,
        "shared_scratch": SharedScratch, "retries_bad_requests": RetriesEverything, "good_password": ChecksPassword,
        "retries_refused_password": RetriesRefusedPassword, "leaks_password": LeaksPassword,
        "claims_shared_but_locks": ClaimsSharedButLocks, "unlocked_not_shared": UnlockedNotShared,
        "caches_aliases": CachesAliases, "drops_then_sets_alias": DropsThenSetsAlias, "wrong_vectors": WrongVectors,
        "no_storage_path": NoStoragePath, "leaks_driver_errors": LeaksDriverErrors, "swallows_options": SwallowsOptions,
        "inner_product": InnerProduct, "keeps_old_vector": KeepsOldVector, "unsorted_when_filtered": UnsortedWhenFiltered,
        "top_k_ignored_when_filtered": TopKIgnoredWhenFiltered, "stale_filtered_count": StaleFilteredCount,
        "deletes_in_memory_only": DeletesInMemoryOnly, "overlapping_pages": OverlappingPages,
        "drop_keeps_records": DropKeepsRecords, "close_forgets_its_connection": CloseForgetsItsConnection,
    }


    @hookimpl
    def clair_vec_register_backends(register):
        for name, cls in VARIANTS.items():
            register(name, type(cls.__name__, (cls,), {"name": name}))
''')

SUITE = textwrap.dedent('''
    import pytest
    from broken_backends import RIGHT, VARIANTS, WRONG
    from clair_vec.plugin import BackendConformance


    def make(name):
        class T(BackendConformance):
            backend_name = name

            @pytest.fixture
            def backend_uri(self, tmp_path):
                return str(tmp_path / "store")

            @pytest.fixture
            def fresh_uri(self, tmp_path):
                return str(tmp_path / "never" / "store")

            @pytest.fixture
            def backend_options(self):
                return {"password": RIGHT} if "password" in name else {}

            @pytest.fixture
            def wrong_credentials(self):
                return {"password": WRONG} if "password" in name else None

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
    "one_table": ["test_collections_stay_apart_while_a_handle_moves_between_them"],
    "truncates_names": ["test_long_names_that_share_a_prefix_are_two_collections"],
    "case_folds_names": ["test_names_that_differ_only_in_case_are_two_collections"],
    "remembers_last_collection": ["test_collections_stay_apart_while_a_handle_moves_between_them"],
    "normalises_unicode": ["test_strings_differing_only_in_unicode_normalisation_stay_distinct"],
    "creates_on_open": ["test_reading_a_store_that_does_not_exist_creates_nothing"],
    "leaks_connections": ["test_open_close_cycles_and_many_calls_leak_nothing"],
    "drops_open_files": ["test_open_close_cycles_and_many_calls_leak_nothing"],
    "shared_scratch": ["test_a_handle_shared_by_threads_answers_each_caller"],
    "retries_bad_requests": ["test_a_request_the_engine_rejects_is_not_retried"],
    "retries_refused_password": ["test_refused_credentials_are_not_retried_and_say_so"],
    "leaks_password": ["test_refused_credentials_are_not_retried_and_say_so"],
    "claims_shared_but_locks": ["test_shared_says_whether_a_second_process_can_write"],
    "unlocked_not_shared": ["test_shared_says_whether_a_second_process_can_write"],
    "caches_aliases": ["test_aliases_are_set_moved_listed_and_dropped"],
    "drops_then_sets_alias": ["test_moving_an_alias_is_atomic_for_a_reader"],
    "wrong_vectors": ["test_vectors_by_id_come_back_as_written_and_missing_ids_are_named"],
    "no_storage_path": ["test_embedded_stores_check_free_space_before_writing"],
    "leaks_driver_errors": ["test_every_filter_key_is_applied_in_search_and_count[domain]"],
    "swallows_options": ["test_an_option_the_backend_does_not_have_is_refused_by_name"],
    "inner_product": ["test_vectors_not_of_unit_length_are_ranked_and_scored_by_cosine"],
    "keeps_old_vector": ["test_upsert_is_idempotent_by_id"],
    "unsorted_when_filtered": ["test_every_filter_key_is_applied_in_search_and_count[label]"],
    "top_k_ignored_when_filtered": ["test_every_filter_key_is_applied_in_search_and_count[domain]"],
    "stale_filtered_count": ["test_deleted_records_are_gone_from_every_read"],
    "deletes_in_memory_only": ["test_spec_and_data_survive_reopening"],
    "overlapping_pages": ["test_get_and_records_return_payloads"],
    "drop_keeps_records": ["test_deleted_records_are_gone_from_every_read"],
    "close_forgets_its_connection": ["test_open_close_cycles_and_many_calls_leak_nothing"],
}
#: variants that do everything right: each must pass the promises listed
CONTROLS = {"good_password": ["test_refused_credentials_are_not_retried_and_say_so"]}
#: defect -> words its failure message must contain (what was expected and what came back, not bare ids)
IN_WORDS = {
    "one_table": "count() says", "truncates_names": "came back changed", "case_folds_names": "folds the case",
    "remembers_last_collection": "count() says", "normalises_unicode": "never normalised", "creates_on_open": "created",
    "leaks_connections": "does not close it", "drops_open_files": "garbage collector", "shared_scratch": "meant for others",
    "retries_bad_requests": "is_transient() must say no", "retries_refused_password": "expected AuthenticationError",
    "leaks_password": "shows the refused credentials", "claims_shared_but_locks": "says shared=True",
    "unlocked_not_shared": "says shared=False", "caches_aliases": "after set_alias", "drops_then_sets_alias": "must be atomic",
    "wrong_vectors": "came back", "no_storage_path": "storage_path", "inner_product": "other than cosine",
    "keeps_old_vector": "kept the old one", "unsorted_when_filtered": "best first", "top_k_ignored_when_filtered": "top_k=3",
    "stale_filtered_count": "filtered count", "deletes_in_memory_only": "came back after reopening",
    "overlapping_pages": "overlaps", "drop_keeps_records": "old records", "close_forgets_its_connection": "still referenced",
}  # fmt: skip


def test_the_suite_fails_each_broken_backend_on_the_promise_it_breaks(tmp_path):
    (tmp_path / "broken_backends.py").write_text(BROKEN)
    (tmp_path / "test_broken.py").write_text(SUITE)
    targets = sorted({t for tests in EXPECTED.values() for t in tests})
    # the reference runs every promise a variant breaks; each variant only the promises it must break
    runs = {"numpy": targets, **EXPECTED, **CONTROLS}
    nodes = [f"test_broken.py::Test_{v}::{t}" for v, tests in runs.items() for t in tests]
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
    for variant, must_pass in CONTROLS.items():
        assert set(must_pass) == passed.get(variant), f"{variant} does it right but failed: {messages}"
    for variant, must_fail in EXPECTED.items():
        assert set(must_fail) <= failed.get(variant, set()), f"{variant} was not caught: {failed.get(variant)}"
    for variant, words in IN_WORDS.items():
        assert words in messages[variant, EXPECTED[variant][0]], (variant, messages[variant, EXPECTED[variant][0]][:1500])
    # and the failure message points at the defect, with values (the suite's asserts are rewritten)
    assert "is in state 'released'" in messages["no_load", EXPECTED["no_load"][0]]
    # a driver's own exception fails as the promise, the call it was in and what came back
    leaked = messages["leaks_driver_errors", EXPECTED["leaks_driver_errors"][0]]
    for words in ("promise: every filter key is applied in search and count", "call: backend.count('conformance_",
                  "filter={'domain': ", 'what came back: broken_backends.DuplicateTable: relation "last_loaded_collection"',
                  "map the driver's exception in translate_error()"):  # fmt: skip
        assert words in leaked, leaked[-3000:]
    spec = messages["loses_spec", EXPECTED["loses_spec"][0]]
    assert "target_domain='photo'" in spec and "target_domain='sketch'" in spec


def test_a_failing_promise_never_prints_the_backend_password(tmp_path):
    """pytest shows a failing test's arguments, the values an assert compared and what was
    captured; with a server URI that holds a password, each of them once showed it."""
    password = "Suite-Planted-Pw-7731"
    (tmp_path / "test_leak.py").write_text(textwrap.dedent(f"""
        import pytest
        from clair_vec.plugin import register_secret

        @pytest.fixture
        def backend_uri():
            register_secret({password!r})  # as a backend does with its URI
            return "http://root:{password}@127.0.0.1:9"

        def test_promise(backend_uri):
            print("connecting to", backend_uri)
            assert backend_uri == "http://elsewhere"
    """))
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rA", str(tmp_path / "test_leak.py")],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)  # fmt: skip
    assert out.returncode == 1 and "1 failed" in out.stdout, out.stdout[-2000:]
    assert password not in out.stdout + out.stderr and "http://***@127.0.0.1:9" in out.stdout, out.stdout[-3000:]


def test_an_error_of_the_suite_itself_is_not_blamed_on_the_backend(tmp_path):
    """Only what a backend call raised is reported as "the backend broke a promise": an error in
    a promise's own code after the call returned stays as it is, and so does an expected one."""
    (tmp_path / "test_own.py").write_text(textwrap.dedent("""
        import pytest
        from clair_vec.errors import CollectionNotFoundError
        from clair_vec.plugin import BackendConformance

        class TestOwn(BackendConformance):
            backend_name = "numpy"

            @pytest.fixture
            def backend_uri(self, tmp_path):
                return str(tmp_path / "store")

            def test_own_bug(self, backend):
                backend.list_collections()
                {}["missing"]

            @pytest.mark.xfail(raises=CollectionNotFoundError, strict=True)
            def test_expected(self, backend):
                backend.count("conformance_nothing_here")
    """))
    env = {**os.environ, "CLAIR_VEC_PLUGINS": "clair_vec_numpy", "PYTHONPATH": str(ROOT / "plugins" / "example-numpy")}
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_own.py", "-k", "own_bug or expected"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert "1 failed" in out.stdout and "1 xfailed" in out.stdout and "KeyError: 'missing'" in out.stdout, out.stdout[-3000:]
    assert "the backend broke a promise" not in out.stdout.split("short test summary")[-1], out.stdout[-3000:]
