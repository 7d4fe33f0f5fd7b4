"""Conformance suite for clair_vec backends: subclass it in your plugin's tests.

::

    from clair_vec.testing import BackendConformance

    class TestMyBackend(BackendConformance):
        backend_name = "mydb"                      # the name your plugin registers

        @pytest.fixture
        def backend_uri(self, tmp_path):           # every handle opens this same storage
            return str(tmp_path / "store")

The suite opens the backend the way users do, ``clair_vec.get_backend(backend_name, uri)``,
so it also proves the plugin is registered. Some promises are checked from a *new process*
(spawned, like a second ``clair-vec`` command): what one process wrote, another must be able to
search. Every test states one promise of the :class:`clair_vec.store.backend.Backend` contract, so a
failure names what the backend gets wrong, in words. No torch needed.

Fixtures a plugin may override besides ``backend_uri`` / ``backend_options``: ``fresh_uri`` /
``fresh_path`` (embedded: a store that does not exist yet), ``fresh_namespace`` (servers: an
empty database or namespace, see :class:`FreshNamespace`), ``unreachable_uri`` (a URI where
nothing listens; derived from an ``http(s)`` ``backend_uri`` by default) and
``wrong_credentials`` (options with credentials the server refuses). A promise whose fixture is
None is skipped with the reason. Every collection and alias the suite makes starts with
``conformance_`` and is dropped at the end of its test, so the suite may run against a live
server (``clair-vec backends --check``).

The module is also a pytest plugin (entry point ``pytest11``), so pytest rewrites its asserts
and a failure shows the values compared.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import multiprocessing
import os
import socket
import threading
import time
import traceback
import uuid
import warnings
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any, ClassVar
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import pytest

from clair_vec.errors import (
    AliasError,
    AuthenticationError,
    BackendUnavailableError,
    CapabilityError,
    CollectionMismatchError,
    CollectionNotFoundError,
    DiskFullError,
    InvalidCollectionNameError,
    RecordNotFoundError,
    StoreLockedError,
    TransientBackendError,
)
from clair_vec.store.backend import Backend, CollectionInfo, Record

DIM = 16
#: payload strings a backend must store, return and filter on unchanged
TRICKY = ("café", "猫", "emoji 🎨", 'say "cheese"', "back\\slash", "it's", "new\nline", "tab\there", "\\u00e9 literally")
#: strings that look alike but differ in Unicode normalisation: each is its own label
LOOKALIKES = (
    ("NFC e-acute", "\u00e9"), ("NFD e + combining acute", "e\u0301"),
    ("A-ring", "\u00c5"), ("ANGSTROM SIGN", "\u212b"), ("NFD A + combining ring", "A\u030a"),
    ("ligature fi", "\ufb01"), ("f i", "fi"), ("halfwidth ka", "\uff76"), ("katakana ka", "\u30ab"),
)  # fmt: skip
#: every name the suite gives a collection or an alias starts with this (cleanup sweeps it)
PREFIX = "conformance_"


@dataclass
class FreshNamespace:
    """An empty namespace on a server (a Milvus database, a schema, a tenant) for the promise
    that opening a backend and reading from it creates nothing there. ``contents()`` lists
    everything in the namespace (collections, aliases...) with the server's own client."""

    uri: str | None
    options: dict[str, Any] = field(default_factory=dict)
    contents: Callable[[], list[str]] = list


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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _resources() -> dict[str, int] | None:
    """Open file descriptors (and how many are sockets) and OS threads of this process (Linux)."""
    try:
        fds = os.listdir("/proc/self/fd")
        threads = len(os.listdir("/proc/self/task"))
    except OSError:
        return None
    sockets = 0
    for fd in fds:
        try:
            sockets += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
        except OSError:
            pass
    return {"file descriptors": len(fds), "sockets": sockets, "threads": threads}


def _short(ids: Any) -> str:
    return "[" + ", ".join(str(i)[:8] for i in ids) + "]"


def make_records(n: int, *, seed: int = 0, dim: int = DIM, prefix: str = "r") -> list[Record]:
    """Records with content-hash-like ids: random, so insertion order is not key order (an engine
    that pages in storage order would look right with sorted ids and lose records with real ones)."""
    rng = np.random.default_rng(seed)
    vecs = rng.normal(size=(n, dim)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    domains = ("photo", "sketch")
    return [
        Record(hashlib.sha256(f"{prefix}|{seed}|{i}".encode()).hexdigest()[:32], vecs[i],
               {"domain": domains[i % 2], "label": f"c{i % 5}", "path": f"/img/{prefix}{i}.png", "pseudo_label": f"p{i % 3}"})  # fmt: skip
        for i in range(n)
    ]


def open_backend(name: str, uri: str | None, options: dict[str, Any] | None = None) -> Backend:
    """Open a backend by its registered name, as ``clair_vec.get_backend`` does for users."""
    from clair_vec.store.plugins import get_backend

    return get_backend(name, uri, **(options or {}))


def _child(name: str, uri: str | None, options: dict[str, Any], action: str, args: dict[str, Any]) -> dict[str, Any]:
    """Runs in a spawned process: open the backend afresh, do ``action``, report plain data."""
    try:
        be = open_backend(name, uri, options)
    except Exception as exc:
        return {"error": type(exc).__name__, "message": str(exc), "is_locked": isinstance(exc, StoreLockedError)}
    try:
        c = args.get("collection")
        if action == "write":
            records = [Record(i, np.asarray(v, np.float32), p) for i, v, p in args["records"]]
            written = be.upsert(c, records)
            be.flush(c)
            return {"written": written, "shared": be.shared}
        if action == "set_alias":
            be.set_alias(args["alias"], c)
            return {"aliases": be.aliases()}
        if action == "read":
            q = np.asarray(args["query"], np.float32)
            info = be.open_collection(c)
            hits = be.search(c, q, top_k=args["top_k"])
            return {
                "info": json.loads(info.to_json()),
                "count": be.count(c),
                "hits": [[(h.id, h.score) for h in row] for row in hits],
                "existing": sorted(be.existing_ids(c, args["ids"])),
                "payloads": be.get(c, args["ids"]),
            }
        if action == "count":
            return {"count": be.count(c)}
        raise ValueError(action)
    except Exception as exc:
        return {"error": type(exc).__name__, "message": str(exc), "trace": traceback.format_exc()}
    finally:
        be.close()


def in_new_process(name: str, uri: str | None, options: dict[str, Any], action: str, **args: Any) -> dict[str, Any]:
    """Run one suite action in a freshly spawned interpreter (no state shared with this one)."""
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        return pool.submit(_child, name, uri, options, action, args).result(timeout=300)


class BackendConformance:
    """The behaviour every backend must show. Set ``backend_name``; override ``backend_uri``."""

    #: the name the plugin registers with ``register(name, factory)``
    backend_name: ClassVar[str] = ""
    dim = DIM
    #: how long a refused connection or refused credentials may take to fail, retries included:
    #: a hang guard, far above a sane client timeout
    failure_deadline: ClassVar[float] = 60.0

    @pytest.fixture
    def backend_uri(self, tmp_path) -> str | None:  # pragma: no cover - always overridden
        raise NotImplementedError("override backend_uri to return the storage every handle of the suite opens")

    @pytest.fixture
    def backend_options(self) -> dict[str, Any]:
        """Keyword options passed to the backend factory with the URI."""
        return {}

    @pytest.fixture
    def fresh_uri(self, tmp_path) -> str | None:
        """A storage location that does not exist yet, for embedded engines (None: a server, or a
        backend whose storage is not a file system path; the promise is then skipped)."""
        return None

    @pytest.fixture
    def fresh_path(self, fresh_uri) -> str | None:
        """The file system path behind ``fresh_uri`` (override when the URI is not a bare path)."""
        return fresh_uri

    @pytest.fixture
    def fresh_namespace(self) -> FreshNamespace | None:
        """Servers: an empty database or namespace, and how to list what is in it (None: skip)."""
        return None

    @pytest.fixture
    def unreachable_uri(self, backend_uri) -> str | None:
        """A URI of this backend's kind where nothing listens. Default: an ``http(s)``/``grpc``
        ``backend_uri`` with a free loopback port; None (skip) for embedded stores."""
        parts = urlsplit(backend_uri or "")
        if parts.scheme in ("http", "https", "grpc", "tcp") and parts.netloc:
            return urlunsplit((parts.scheme, f"127.0.0.1:{_free_port()}", parts.path, "", ""))
        return None

    @pytest.fixture
    def wrong_credentials(self) -> dict[str, Any] | None:
        """Options (merged over ``backend_options``) with credentials the server refuses, e.g.
        ``{"token": "root:wrong"}``; None (skip) for a store without authentication."""
        return None

    @pytest.fixture
    def made(self) -> list[str]:
        """Names of the extra collections a test creates: dropped with it, aliases first."""
        return []

    @pytest.fixture
    def backend_factory(self, backend_uri, backend_options) -> Callable[[], Backend]:
        if not self.backend_name:
            pytest.fail(f"{type(self).__name__} must set backend_name to the name its plugin registers")
        return lambda: open_backend(self.backend_name, backend_uri, backend_options)

    @pytest.fixture
    def backend(self, backend_factory, info, made):
        b = backend_factory()
        yield b
        b.close()
        # servers outlive the test: leave nothing behind (a fresh handle, as the test's may be closed)
        cleanup = backend_factory()
        try:
            _drop_all(cleanup, [info.name, *made], info.name)
        finally:
            cleanup.close()

    @pytest.fixture
    def info(self) -> CollectionInfo:
        # unique per test, so suites may share one server
        return CollectionInfo(name=f"{PREFIX}{uuid.uuid4().hex[:10]}", dim=self.dim, model="test-model", target_domain="photo")

    @pytest.fixture
    def filled(self, backend: Backend, info: CollectionInfo) -> list[Record]:
        backend.create_collection(info)
        records = make_records(60, dim=self.dim)
        assert backend.upsert(info.name, records) == 60
        return records

    def _child(self, backend_uri: str | None, backend_options: dict[str, Any], action: str, **args: Any) -> dict[str, Any]:
        out = in_new_process(self.backend_name, backend_uri, backend_options, action, **args)
        assert "error" not in out, f"in a new process: {out['error']}: {out['message']}\n{out.get('trace', '')}"
        return out

    # ------------------------------------------------------------------ registration
    def test_backend_is_found_by_its_registered_name(self, backend):
        from clair_vec.store.plugins import backends

        registered = backends()
        assert self.backend_name in registered, f"{self.backend_name!r} is not registered; registered: {sorted(registered)}"
        assert isinstance(backend, Backend)

    # ------------------------------------------------------------------ collections
    def test_create_then_open_returns_same_spec(self, backend, info):
        assert not backend.has_collection(info.name)
        backend.create_collection(info)
        assert backend.has_collection(info.name)
        assert backend.open_collection(info.name) == info
        assert info.name in backend.list_collections()

    def test_create_is_idempotent_for_same_spec_and_refuses_another(self, backend, info):
        backend.create_collection(info)
        assert backend.create_collection(info) == info
        with pytest.raises(CollectionMismatchError, match="dim"):
            backend.create_collection(CollectionInfo(info.name, info.dim + 1, info.model))
        with pytest.raises(CollectionMismatchError, match="model"):
            backend.create_collection(CollectionInfo(info.name, info.dim, "other-model"))

    def test_missing_collection_is_a_clear_error(self, backend):
        with pytest.raises(CollectionNotFoundError, match="nope"):
            backend.open_collection("nope")
        with pytest.raises(CollectionNotFoundError):
            backend.search("nope", np.zeros((1, self.dim), np.float32))
        assert backend.drop_collection("nope") is False
        assert not backend.has_collection("nope")  # looking never creates

    def test_invalid_collection_names_are_refused_with_one_rule(self, backend):
        for bad in ("", "has-hyphen", "has space", "../escape", "1starts_with_digit", "x" * 256, "naïve"):
            with pytest.raises(InvalidCollectionNameError, match="letters, digits and underscores"):
                backend.create_collection(_info_named(bad, self.dim))
            with pytest.raises(InvalidCollectionNameError):
                backend.search(bad, np.zeros((1, self.dim), np.float32))

    def test_reading_a_store_that_does_not_exist_creates_nothing(self, fresh_uri, fresh_path, backend_options):
        if fresh_uri is None:
            pytest.skip("no fresh_uri: a server, or a store that is not a file system path (override fresh_uri to check)")
        be = open_backend(self.backend_name, fresh_uri, backend_options)
        try:
            with pytest.raises(CollectionNotFoundError):
                be.search("gallery", np.zeros((1, self.dim), np.float32))
            assert be.list_collections() == []
        finally:
            be.close()
        assert not os.path.exists(fresh_path), f"a search created {fresh_path}"

    def test_spec_survives_reopening_in_a_new_process(self, backend_factory, backend_uri, backend_options):
        info = CollectionInfo(f"{PREFIX}spec_{uuid.uuid4().hex[:10]}", self.dim, "model-Ω", metric="cosine", target_domain="sketch",
                              extra={"clip": "ViT-B-32", "nested": {"k": [1, 2.5, None]}, "note": 'café "q" \\ 🎨'})  # fmt: skip
        be = backend_factory()
        try:
            be.create_collection(info)
            be.upsert(info.name, make_records(3, dim=self.dim))
            be.flush(info.name)
        finally:
            be.close()
        try:
            out = self._child(backend_uri, backend_options, "read", collection=info.name,
                              query=np.zeros((1, self.dim)).tolist(), top_k=1, ids=[])  # fmt: skip
            assert CollectionInfo(**out["info"]) == info
            again = backend_factory()
            try:
                assert again.open_collection(info.name) == info
            finally:
                again.close()
        finally:
            cleanup = backend_factory()
            cleanup.drop_collection(info.name)
            cleanup.close()

    def test_a_new_process_can_search_what_another_process_wrote(self, backend, backend_uri, backend_options, info, filled):
        backend.flush(info.name)
        backend.close()
        ids = [r.id for r in filled[:5]]
        q = np.stack([filled[7].vector, filled[8].vector])
        out = self._child(backend_uri, backend_options, "read", collection=info.name, query=q.tolist(), top_k=3,
                          ids=ids + ["absent"])  # fmt: skip
        assert out["count"] == len(filled)
        assert [row[0][0] for row in out["hits"]] == [filled[7].id, filled[8].id], (
            "a new process searched for two stored records and did not find each first: it cannot search what "
            "another process wrote"
        )
        assert out["existing"] == sorted(ids), f"a new process found {len(out['existing'])} of {len(ids)} stored ids"
        assert out["payloads"][ids[0]]["path"] == filled[0].payload["path"]

    def test_spec_and_data_survive_reopening(self, backend_factory, backend, info, filled):
        backend.flush(info.name)
        assert backend.count(info.name) == len(filled)
        backend.close()
        again = backend_factory()
        try:
            assert again.open_collection(info.name) == info
            assert again.count(info.name) == len(filled)
            assert again.search(info.name, filled[4].vector, top_k=1)[0][0].id == filled[4].id
        finally:
            again.close()

    # ------------------------------------------------------------------ writes
    def test_upsert_is_idempotent_by_id(self, backend, info, filled):
        assert backend.upsert(info.name, filled[:10]) == 10
        assert backend.count(info.name) == len(filled)
        changed = Record(filled[0].id, filled[1].vector, {**filled[0].payload, "label": "relabelled"})
        backend.upsert(info.name, [changed])
        assert backend.count(info.name) == len(filled)
        hit = backend.search(info.name, filled[1].vector[None], top_k=2, filter={"label": "relabelled"})[0]
        assert [h.id for h in hit] == [filled[0].id]

    def test_wrong_dimension_is_refused_before_anything_is_written(self, backend, info):
        backend.create_collection(info)
        good = make_records(3, dim=self.dim)
        bad = make_records(1, dim=self.dim + 3, prefix="bad")
        with pytest.raises(CollectionMismatchError, match=f"dimension {self.dim + 3}"):
            backend.upsert(info.name, good + bad)
        assert backend.count(info.name) == 0
        with pytest.raises(CollectionMismatchError):
            backend.search(info.name, np.zeros((1, self.dim + 3), np.float32))

    def test_vectors_of_another_model_are_refused(self, backend, info):
        backend.create_collection(info)
        with pytest.raises(CollectionMismatchError, match="other-model"):
            backend.upsert(info.name, make_records(2, dim=self.dim), model="other-model")
        assert backend.upsert(info.name, make_records(2, dim=self.dim), model=info.model) == 2

    def test_large_writes_are_split_into_bounded_batches(self, backend, info, monkeypatch):
        backend.create_collection(info)
        sizes = []
        original = backend._upsert

        def spy(name, records):
            sizes.append(sum(r.vector.nbytes + len(json.dumps(r.payload)) for r in records))
            counts.append(len(records))
            return original(name, records)

        counts: list[int] = []
        limit = 20 * self.dim * 4
        monkeypatch.setattr(backend, "_upsert", spy)
        monkeypatch.setattr(backend, "max_batch_bytes", limit)
        assert backend.upsert(info.name, make_records(95, dim=self.dim)) == 95
        assert len(counts) >= 5 and sum(counts) == 95
        assert max(sizes) <= limit
        assert backend.count(info.name) == 95

    def test_transient_errors_are_retried_a_bounded_number_of_times(self, backend, info, monkeypatch):
        backend.create_collection(info)
        monkeypatch.setattr(backend, "retry_base_delay", 0.0)
        original, calls = backend._upsert, []

        def flaky(name, records):
            calls.append(1)
            if len(calls) < 3:
                raise TransientBackendError("server busy")
            return original(name, records)

        monkeypatch.setattr(backend, "_upsert", flaky)
        assert backend.upsert(info.name, make_records(4, dim=self.dim)) == 4
        assert len(calls) == 3

        def always(name, records):
            calls.append(1)
            raise TransientBackendError("down")

        monkeypatch.setattr(backend, "_upsert", always)
        calls.clear()
        with pytest.raises(BackendUnavailableError, match=f"still failed after {backend.max_retries + 1} attempts") as err:
            backend.upsert(info.name, make_records(1, dim=self.dim, prefix="x"))
        assert isinstance(err.value.__cause__, TransientBackendError)
        assert len(calls) == backend.max_retries + 1

        def broken(name, records):
            calls.append(1)
            raise RuntimeError("bug, not weather")

        monkeypatch.setattr(backend, "_upsert", broken)
        calls.clear()
        with pytest.raises(RuntimeError):
            backend.upsert(info.name, make_records(1, dim=self.dim, prefix="y"))
        assert len(calls) == 1

    # ------------------------------------------------------------------ reads
    def test_search_matches_brute_force_cosine_ranking(self, backend, info, filled):
        vecs = np.stack([r.vector for r in filled])
        queries = make_records(5, seed=7, dim=self.dim)
        q = np.stack([r.vector for r in queries])
        hits = backend.search(info.name, q, top_k=5)
        assert len(hits) == 5
        for row, sims in zip(hits, q @ vecs.T, strict=True):
            expected = [filled[i].id for i in np.argsort(-sims)[:5]]
            got = [h.id for h in row]
            assert got == expected, (
                f"the top 5 differ from brute-force cosine ranking: got {_short(got)}, expected {_short(expected)} "
                f"({len(set(got) & set(expected))} in common)"
            )
            np.testing.assert_allclose([h.score for h in row], np.sort(sims)[::-1][:5], atol=1e-4)

    def test_search_returns_payload_and_respects_top_k(self, backend, info, filled):
        row = backend.search(info.name, filled[3].vector, top_k=3)[0]
        assert len(row) == 3
        assert row[0].id == filled[3].id
        assert row[0].payload == filled[3].payload

    def test_top_k_beyond_the_matches_returns_only_the_matches(self, backend, info, filled):
        n = len(backend.search(info.name, filled[0].vector, top_k=len(filled) + 25)[0])
        assert n == len(filled), f"top_k={len(filled) + 25} over {len(filled)} records returned {n} hits"
        matching = [r for r in filled if r.payload["label"] == "c2" and r.payload["domain"] == "photo"]
        row = backend.search(info.name, filled[0].vector, top_k=50, filter={"label": "c2", "domain": "photo"})[0]
        outside = [h.id for h in row if h.id not in {r.id for r in matching}]
        assert not outside and len(row) == len(matching), (
            f"top_k=50 with a filter that {len(matching)} records match returned {len(row)} hits, {len(outside)} of them "
            "outside the filter: only the matches may come back"
        )

    def test_empty_query_gives_an_empty_result(self, backend, info, filled):
        assert backend.search(info.name, np.zeros((0, self.dim), np.float32), top_k=3) == []

    @pytest.mark.parametrize("key", ["domain", "label", "path", "pseudo_label"])
    def test_every_filter_key_is_applied_in_search_and_count(self, backend, info, filled, key):
        target = filled[10].payload[key]
        matching = [r for r in filled if r.payload[key] == target]
        assert 0 < len(matching) < len(filled)
        # query with a record the filter excludes: a backend ignoring the key returns it first
        outsider = next(r for r in filled if r.payload[key] != target)
        row = backend.search(info.name, outsider.vector, top_k=len(filled), filter={key: target})[0]
        outside = [h.id for h in row if h.payload.get(key) != target]
        assert sorted(h.id for h in row) == sorted(r.id for r in matching), (
            f"a search filtered on {key}={target!r} returned {len(row)} hits ({len(outside)} outside the filter) where "
            f"{len(matching)} records match: the search ignores or misapplies {key!r}"
        )
        assert all(h.payload[key] == target for h in row)
        assert backend.count(info.name, filter={key: target}) == len(matching)
        both = [target, outsider.payload[key]]
        expected = [r for r in filled if r.payload[key] in both]
        assert backend.count(info.name, filter={key: both}) == len(expected)

    def test_filters_combine_keys_and_refuse_unknown_keys_and_non_strings(self, backend, info, filled):
        q = np.stack([r.vector for r in filled[:4]])
        for row in backend.search(info.name, q, top_k=10, filter={"domain": "sketch", "label": ["c1", "c3"]}):
            assert row and all(h.payload["domain"] == "sketch" and h.payload["label"] in ("c1", "c3") for h in row)
        expected = sum(1 for r in filled if r.payload["domain"] == "sketch" and r.payload["label"] in ("c1", "c3"))
        assert backend.count(info.name, filter={"domain": "sketch", "label": ["c1", "c3"]}) == expected
        with pytest.raises(ValueError, match="cannot filter"):
            backend.search(info.name, q, filter={"colour": "red"})
        for bad in (3, None, {"a": 1}, ["ok", 2.5], True):
            with pytest.raises(ValueError, match="must be strings"):
                backend.search(info.name, q, filter={"label": bad})
            with pytest.raises(ValueError, match="must be strings"):
                backend.count(info.name, filter={"label": bad})

    def test_unicode_quotes_and_backslashes_survive_payloads_and_filters(self, backend, info):
        backend.create_collection(info)
        records = make_records(len(TRICKY) + 4, dim=self.dim, seed=3)
        for r, text in zip(records, TRICKY, strict=False):
            r.payload.update(label=text, path=f"/gallery/{text}.png", note=text)
        backend.upsert(info.name, records)
        stored = backend.get(info.name, [r.id for r in records])
        for r, text in zip(records, TRICKY, strict=False):
            assert stored[r.id]["label"] == text and stored[r.id]["note"] == text
            assert backend.count(info.name, filter={"label": text}) == 1, text
            row = backend.search(info.name, records[-1].vector, top_k=5, filter={"path": f"/gallery/{text}.png"})[0]
            assert [h.id for h in row] == [r.id], text
            assert row[0].payload["label"] == text
        assert backend.count(info.name, filter={"label": list(TRICKY)}) == len(TRICKY)

    def test_get_and_records_return_payloads(self, backend, info, filled):
        got = backend.get(info.name, [filled[2].id, "absent", filled[9].id])
        assert got == {filled[2].id: filled[2].payload, filled[9].id: filled[9].payload}
        backend.flush(info.name)  # pages must hold across sealed storage too
        listed = dict(backend.records(info.name, page_size=7))
        missing = {r.id for r in filled} - set(listed)
        assert listed == {r.id: r.payload for r in filled}, (
            f"records() in pages of 7 listed {len(listed)} of {len(filled)} records ({len(missing)} missing, "
            f"{len(set(listed) - {r.id for r in filled})} unknown) or changed their payloads: paging must visit each once"
        )
        sketches = dict(backend.records(info.name, filter={"domain": "sketch"}, page_size=4))
        assert set(sketches) == {r.id for r in filled if r.payload["domain"] == "sketch"}

    def test_deleted_records_are_gone_from_every_read(self, backend, info, filled):
        ids = [r.id for r in filled[:5]]
        assert backend.existing_ids(info.name, ids + ["absent"]) == set(ids)
        assert backend.delete(info.name, ids[:2] + ["absent"]) == 2
        assert backend.count(info.name) == len(filled) - 2
        assert backend.existing_ids(info.name, ids) == set(ids[2:])
        for gone in filled[:2]:
            row = backend.search(info.name, gone.vector, top_k=len(filled))[0]
            assert gone.id not in {h.id for h in row}, f"a deleted record ({gone.id[:8]}) still comes back from search"
            assert len(row) == len(filled) - 2
        assert backend.get(info.name, ids[:2]) == {}
        assert ids[0] not in dict(backend.records(info.name))
        assert backend.drop_collection(info.name) is True
        assert not backend.has_collection(info.name)

    # ------------------------------------------------------------------ isolation
    def _fill(self, backend: Backend, name: str, n: int, seed: int, made: list[str]) -> list[Record]:
        backend.create_collection(CollectionInfo(name, self.dim, "test-model"))
        made.append(name)
        records = make_records(n, seed=seed, dim=self.dim, prefix=f"s{seed}")
        assert backend.upsert(name, records) == n
        return records

    @staticmethod
    def _answers_for_itself(backend: Backend, name: str, own: list[Record], others: dict[str, list[Record]]) -> None:
        """``name`` holds exactly ``own``: counts, searches, lookups and listings see nothing of ``others``."""
        mine = {r.id for r in own}
        count = backend.count(name)
        assert count == len(own), (
            f"collection {name[:40]!r}... holds {len(own)} records, but count() says {count}: data of another collection "
            "(or none of its own) is counted there"
        )
        hit = backend.search(name, own[0].vector, top_k=1)[0]
        assert hit and hit[0].id == own[0].id, (
            f"searching collection {name[:40]!r}... for one of its own records returned {_short(h.id for h in hit)} "
            f"instead of {own[0].id[:8]}"
        )
        for other, records in others.items():
            row = backend.search(name, records[0].vector, top_k=len(own) + len(records))[0]
            foreign = [h.id for h in row if h.id not in mine]
            assert not foreign, (
                f"searching collection {name[:40]!r}... returned {len(foreign)} records written to collection "
                f"{other[:40]!r}...: collections must not share storage"
            )
            got = backend.get(name, [r.id for r in records[:5]])
            assert got == {}, f"get() on collection {name[:40]!r}... returned records of collection {other[:40]!r}..."
        listed = {i for i, _ in backend.records(name, page_size=50)}
        assert listed == mine, f"records() of {name[:40]!r}... listed {len(listed - mine)} foreign and missed {len(mine - listed)} own records"

    def test_collections_stay_apart_while_a_handle_moves_between_them(self, backend, info, filled, made):
        b = self._fill(backend, f"{info.name}_b", 25, 31, made)
        c = self._fill(backend, f"{info.name}_c", 10, 32, made)
        data = {info.name: filled, f"{info.name}_b": b, f"{info.name}_c": c}
        # one handle, back and forth: a backend that binds a handle to the last collection it used fails here
        for name in (info.name, f"{info.name}_b", info.name, f"{info.name}_c", f"{info.name}_b", f"{info.name}_c", info.name):
            self._answers_for_itself(backend, name, data[name], {k: v for k, v in data.items() if k != name})
        assert backend.drop_collection(f"{info.name}_c")
        made.remove(f"{info.name}_c")
        assert backend.count(info.name) == len(filled) and backend.count(f"{info.name}_b") == len(b), (
            "dropping one collection changed the others"
        )

    def test_names_that_differ_only_in_case_are_two_collections(self, backend, info, made):
        lower = f"{info.name}_case"
        upper = lower.upper()
        first = self._fill(backend, lower, 12, 41, made)
        assert not backend.has_collection(upper), (
            f"collection {upper!r} was never created, but has_collection says it exists: the backend folds the case of "
            f"names, so {lower!r} and {upper!r} would be one collection"
        )
        second = self._fill(backend, upper, 7, 42, made)
        assert {lower, upper} <= set(backend.list_collections()), f"list_collections() shows {backend.list_collections()}"
        self._answers_for_itself(backend, lower, first, {upper: second})
        self._answers_for_itself(backend, upper, second, {lower: first})

    def test_long_names_that_share_a_prefix_are_two_collections(self, backend, info, made):
        stem = f"{info.name}_" + "l" * (255 - len(info.name) - 3)
        one, two = f"{stem}_1", f"{stem}_2"
        assert len(one) == len(two) == 255
        first = self._fill(backend, one, 9, 51, made)
        second = self._fill(backend, two, 6, 52, made)
        assert backend.open_collection(one).name == one and backend.open_collection(two).name == two, (
            "a 255-character collection name came back changed: an engine with shorter identifiers must map long names "
            "(e.g. to a hash) and keep the real name"
        )
        self._answers_for_itself(backend, one, first, {two: second})
        self._answers_for_itself(backend, two, second, {one: first})

    # ------------------------------------------------------------------ strings
    def test_strings_differing_only_in_unicode_normalisation_stay_distinct(self, backend, info):
        backend.create_collection(info)
        records = make_records(len(LOOKALIKES) + 3, dim=self.dim, seed=61)
        for r, (_, text) in zip(records, LOOKALIKES, strict=False):
            r.payload.update(label=text, path=f"/look/{text}.png", note=text)
        backend.upsert(info.name, records)
        stored = backend.get(info.name, [r.id for r in records])
        listed = dict(backend.records(info.name))
        for r, (what, text) in zip(records, LOOKALIKES, strict=False):
            for where, payload in (("get", stored[r.id]), ("records", listed[r.id])):
                assert payload["label"] == text and payload["note"] == text, (
                    f"the label {ascii(text)} ({what}) came back from {where}() as {ascii(payload['label'])}: payload "
                    "strings must be stored byte for byte, never normalised"
                )
            n = backend.count(info.name, filter={"label": text})
            assert n == 1, (
                f"filtering on label {ascii(text)} ({what}) matched {n} records, not 1: strings that look alike but "
                "differ in Unicode normalisation are different labels"
            )
            row = backend.search(info.name, records[-1].vector, top_k=len(records), filter={"path": f"/look/{text}.png"})[0]
            assert [h.id for h in row] == [r.id], (
                f"a search filtered on path {ascii('/look/' + text + '.png')} ({what}) returned {len(row)} hits, not its one record"
            )

    # ------------------------------------------------------------------ servers: opening creates nothing
    def test_opening_a_fresh_server_namespace_creates_nothing(self, fresh_namespace):
        if fresh_namespace is None:
            pytest.skip("no fresh_namespace fixture: an embedded store (see the fresh_uri promise), or a server plugin "
                        "that does not provide an empty namespace to check")  # fmt: skip
        before = fresh_namespace.contents()
        assert before == [], f"fresh_namespace is not empty: {before}"
        be = open_backend(self.backend_name, fresh_namespace.uri, fresh_namespace.options)
        try:
            with pytest.raises(CollectionNotFoundError):
                be.search(f"{PREFIX}missing", np.zeros((1, self.dim), np.float32))
            with pytest.raises(CollectionNotFoundError):
                be.count(f"{PREFIX}missing")
            assert be.list_collections() == [] and be.aliases() == {} and not be.has_collection(f"{PREFIX}missing")
        finally:
            be.close()
        after = fresh_namespace.contents()
        assert after == [], (
            f"opening the backend on an empty namespace and searching a missing collection created {after} there: "
            "nothing may be created before the first collection"
        )

    # ------------------------------------------------------------------ the plugin's own error classification
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

    # ------------------------------------------------------------------ hygiene
    def test_open_close_cycles_and_many_calls_leak_nothing(self, backend_factory, backend, info, filled):
        if _resources() is None:
            pytest.skip("counting file descriptors and threads needs /proc (Linux)")
        backend.flush(info.name)
        backend.close()
        query = filled[1].vector

        def cycle(calls: int) -> None:
            be = backend_factory()
            try:
                for _ in range(calls):
                    be.count(info.name)
                    be.search(info.name, query, top_k=3)
                    be.get(info.name, [filled[2].id])
            finally:
                be.close()

        # warm-up with the same workload as the measurement: engines start their pools and caches
        # once per process, and grow a thread pool to what the busiest call pattern needs
        cycle(1)
        cycle(25)
        gc.collect()
        before = _resources()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(8):
                cycle(1)
            cycle(25)
            gc.collect()
        # a closed client's threads may take a moment to exit: a leak is what is still held after it
        deadline = time.monotonic() + 5
        while True:
            after = _resources()
            grown = {k: after[k] - before[k] for k in before if after[k] - before[k] > 2}
            if not grown or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert not grown, (
            f"after 8 open/close cycles and 75 calls on one handle the process holds more {', '.join(grown)} than "
            f"before ({before} -> {after}): something opens a connection, file or thread per call or per handle and "
            "never closes it"
        )
        leaks = [f"{w.filename}:{w.lineno}: {w.message}" for w in caught if issubclass(w.category, ResourceWarning)]
        assert not leaks, f"open/close cycles left resources for the garbage collector to close: {leaks[:3]}"

    def test_a_handle_shared_by_threads_answers_each_caller(self, backend, info, filled):
        threads = 8
        start = threading.Barrier(threads)
        problems: list[str] = []

        def work(k: int) -> None:
            mine = make_records(4, seed=200 + k, dim=self.dim, prefix=f"thread{k}")
            for r in mine:
                r.payload["label"] = f"thread{k}"
            try:
                start.wait(timeout=60)
                backend.upsert(info.name, mine)
                for _ in range(3):
                    for r in mine:
                        hit = backend.search(info.name, r.vector, top_k=1)[0]
                        if not hit or hit[0].id != r.id:
                            problems.append(f"thread {k} searched for its record {r.id[:8]} and got {_short(h.id for h in hit)}")
                    n = backend.count(info.name, filter={"label": f"thread{k}"})
                    if n != len(mine):
                        problems.append(f"thread {k} counted {n} of its {len(mine)} records")
                    got = backend.get(info.name, [r.id for r in mine])
                    if {i: p.get("label") for i, p in got.items()} != {r.id: f"thread{k}" for r in mine}:
                        problems.append(f"thread {k} looked up its records and got {len(got)} of them, or others' payloads")
            except Exception as exc:
                problems.append(f"thread {k}: {type(exc).__name__}: {exc}")

        workers = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
        for t in workers:
            t.start()
        for t in workers:
            t.join(timeout=300)
        assert not problems, (
            f"{threads} threads calling one handle at once (as the service does) got answers meant for others, or "
            f"errors ({len(problems)} problems):\n  " + "\n  ".join(problems[:8])
        )
        assert backend.count(info.name) == len(filled) + 4 * threads, "writes made from several threads at once were lost"

    # ------------------------------------------------------------------ shared, from behaviour
    def test_shared_says_whether_a_second_process_can_write(self, backend, backend_factory, backend_uri, backend_options,
                                                            info, filled):  # fmt: skip
        """A second process opening the store while this handle writes to it either works (and
        ``shared`` is True) or gets StoreLockedError naming the fix (and ``shared`` is False);
        either way this handle's later writes land."""
        more = make_records(5, seed=71, dim=self.dim, prefix="second")
        out = in_new_process(self.backend_name, backend_uri, backend_options, "write", collection=info.name,
                             records=[(r.id, r.vector.tolist(), r.payload) for r in more])  # fmt: skip
        if "error" in out:
            assert out.get("is_locked"), (
                f"a second process opening the store while this handle has it got {out['error']}: {out['message']}; "
                "expected it to work (a server) or StoreLockedError (an embedded store)"
            )
            assert "process" in out["message"] and "server" in out["message"], (
                f"a StoreLockedError must say the store takes one process at a time and name the fix (a server "
                f"backend): {out['message']}"
            )
            assert backend.shared is False, (
                "a second process was refused (StoreLockedError), so the store is not shared, but the backend says "
                "shared=True: the service would start replicas and Ray bulk indexing would write from every worker"
            )
            self._later_writes_land(backend, info, len(filled))
            return
        assert backend.shared is True, (
            f"a second process opened the store and wrote {out['written']} records while this handle had it open, so "
            "several processes can share it, but the backend says shared=False: the service would refuse replicas, "
            "Ray bulk indexing would funnel every write through one actor, and database calls would block the event loop"
        )
        again = backend_factory()
        try:
            n = again.count(info.name)
        finally:
            again.close()
        assert n == len(filled) + len(more), (
            f"a second process wrote {len(more)} records and said so, but a new handle counts {n}, not "
            f"{len(filled) + len(more)}: writes of one process must reach a shared store"
        )
        self._later_writes_land(backend, info, n)

    def _later_writes_land(self, backend: Backend, info: CollectionInfo, before: int) -> None:
        more = make_records(20, seed=5, dim=self.dim, prefix="more")
        assert backend.upsert(info.name, more) == 20
        backend.flush(info.name)
        n = backend.count(info.name)
        assert n == before + 20, f"after a second process opened the store, this handle wrote 20 records and counts {n - before}"
        assert backend.search(info.name, more[3].vector, top_k=1)[0][0].id == more[3].id

    # ------------------------------------------------------------------ vectors by id
    def test_vectors_by_id_come_back_as_written_and_missing_ids_are_named(self, backend, info, filled):
        ids = [r.id for r in filled[:7]]
        if not backend.supports("vectors"):
            with pytest.raises(CapabilityError, match="_vectors"):
                backend.vectors(info.name, ids)
            pytest.skip("the backend does not implement _vectors (vectors() raises CapabilityError, as it must)")
        got = backend.vectors(info.name, list(reversed(ids)))
        assert list(got) == list(reversed(ids)), f"vectors() must answer in the order asked: {_short(got)}"
        for r in filled[:7]:
            v = got[r.id]
            assert v.dtype == np.float32 and v.shape == (self.dim,), f"vector of {r.id[:8]} came back as {v.dtype} {v.shape}"
            err = float(np.abs(v - r.vector).max())
            assert err < 1e-5, (
                f"the vector stored for {r.id[:8]} came back {err:.2g} away from the unit vector written (float32 "
                "precision expected; engines may normalise, and these vectors are unit length already)"
            )
        with pytest.raises(RecordNotFoundError) as missing:
            backend.vectors(info.name, ids[:2] + ["absent_one", "absent_two"])
        assert missing.value.ids == ["absent_one", "absent_two"], f"RecordNotFoundError.ids is {missing.value.ids}"
        assert "absent_one" in str(missing.value) and "2 of the 4" in str(missing.value), str(missing.value)

    # ------------------------------------------------------------------ aliases
    def _needs_aliases(self, backend: Backend, info: CollectionInfo) -> None:
        if not backend.supports("aliases"):
            with pytest.raises(CapabilityError, match="_set_alias"):
                backend.set_alias(f"{info.name}_alias", info.name)
            assert backend.aliases() == {} and backend.resolve(info.name) == info.name
            pytest.skip("the backend does not implement aliases (set_alias raises CapabilityError, as it must)")

    def test_aliases_are_set_moved_listed_and_dropped(self, backend, info, filled, made):
        self._needs_aliases(backend, info)
        other = self._fill(backend, f"{info.name}_b", 20, 81, made)
        alias = f"{info.name}_live"
        assert alias not in backend.aliases()
        backend.set_alias(alias, info.name)
        assert backend.aliases().get(alias) == info.name, f"after set_alias, aliases() lists {backend.aliases()}"
        assert backend.resolve(alias) == info.name and backend.resolve(info.name) == info.name
        hit = backend.search(alias, filled[3].vector, top_k=1)[0]
        assert hit[0].id == filled[3].id, f"a search through alias {alias!r} did not reach {info.name!r}"
        backend.set_alias(alias, f"{info.name}_b")
        assert backend.aliases().get(alias) == f"{info.name}_b", f"after moving the alias, aliases() lists {backend.aliases()}"
        assert backend.resolve(alias) == f"{info.name}_b"
        hit = backend.search(alias, other[2].vector, top_k=1)[0]
        assert hit[0].id == other[2].id and backend.count(alias) == len(other), (
            f"after moving alias {alias!r} to {info.name + '_b'!r}, reads through it still answered from the old collection"
        )
        assert backend.drop_alias(alias) is True and backend.drop_alias(alias) is False
        assert alias not in backend.aliases(), f"a dropped alias is still listed: {backend.aliases()}"
        with pytest.raises(CollectionNotFoundError):
            backend.search(alias, filled[0].vector)
        assert backend.count(info.name) == len(filled) and backend.count(f"{info.name}_b") == len(other), (
            "moving or dropping an alias changed a collection"
        )

    def test_every_read_and_write_goes_through_an_alias(self, backend, info, filled):
        self._needs_aliases(backend, info)
        alias = f"{info.name}_via"
        backend.set_alias(alias, info.name)
        assert backend.open_collection(alias) == info and backend.has_collection(alias)
        ids = [r.id for r in filled[:4]]
        assert backend.search(alias, filled[5].vector, top_k=1)[0][0].id == filled[5].id
        assert backend.count(alias, filter={"domain": "photo"}) == backend.count(info.name, filter={"domain": "photo"})
        assert backend.get(alias, ids) == {r.id: r.payload for r in filled[:4]}
        assert backend.existing_ids(alias, ids + ["absent"]) == set(ids)
        assert len(dict(backend.records(alias, page_size=25))) == len(filled)
        if backend.supports("vectors"):
            assert list(backend.vectors(alias, ids)) == ids
        new = make_records(3, seed=91, dim=self.dim, prefix="via")
        assert backend.upsert(alias, new) == 3
        backend.flush(alias)
        assert backend.count(info.name) == len(filled) + 3, "records written through an alias did not reach its collection"
        assert backend.delete(alias, [new[0].id]) == 1 and backend.count(info.name) == len(filled) + 2
        with pytest.raises(AliasError, match=alias):
            backend.drop_collection(info.name)  # refused while an alias points at it, naming the alias
        with pytest.raises(AliasError):
            backend.drop_collection(alias)  # an alias is not a collection
        assert backend.count(info.name) == len(filled) + 2

    def test_moving_an_alias_is_atomic_for_a_reader(self, backend, info, filled, made):
        self._needs_aliases(backend, info)
        other = self._fill(backend, f"{info.name}_b", 30, 101, made)
        ids = {info.name: {r.id for r in filled}, f"{info.name}_b": {r.id for r in other}}
        alias = f"{info.name}_swap"
        backend.set_alias(alias, info.name)
        query = make_records(1, seed=102, dim=self.dim)[0].vector
        seen = {name: 0 for name in ids}
        done, stop, problems = [0], threading.Event(), []

        def reader() -> None:
            while not stop.is_set():
                try:
                    row = backend.search(alias, query, top_k=5)[0]
                except Exception as exc:
                    problems.append(f"{type(exc).__name__}: {exc}")
                else:
                    got = {h.id for h in row}
                    owner = [name for name, known in ids.items() if got and got <= known]
                    if owner:
                        seen[owner[0]] += 1
                    else:
                        problems.append(f"a mix of both collections, or nothing: {_short(got)}")
                done[0] += 1

        t = threading.Thread(target=reader, daemon=True)
        t.start()
        try:
            for i in range(10):
                backend.set_alias(alias, f"{info.name}_b" if i % 2 == 0 else info.name)
                mark = done[0]
                deadline = time.monotonic() + 60
                while done[0] < mark + 2 and t.is_alive() and time.monotonic() < deadline:
                    time.sleep(0.002)  # two searches after the move: the second began after it
        finally:
            stop.set()
            t.join(timeout=60)
        assert not problems, (
            f"a reader searching through alias {alias!r} while it moved back and forth got errors or mixed answers "
            f"({len(problems)}): {problems[:3]}; a move must be atomic"
        )
        assert all(seen.values()), f"the reader never saw one of the collections: {seen}"

    def test_an_alias_never_hides_a_collection(self, backend, info, filled, made):
        self._needs_aliases(backend, info)
        other = self._fill(backend, f"{info.name}_b", 5, 111, made)
        with pytest.raises(AliasError, match="never hides"):
            backend.set_alias(f"{info.name}_b", info.name)
        assert backend.resolve(f"{info.name}_b") == f"{info.name}_b" and backend.count(f"{info.name}_b") == len(other)
        alias = f"{info.name}_name"
        backend.set_alias(alias, info.name)
        with pytest.raises(AliasError, match="alias"):
            backend.create_collection(CollectionInfo(alias, self.dim, "test-model"))
        with pytest.raises(AliasError, match="itself an alias"):
            backend.set_alias(f"{info.name}_chain", alias)
        with pytest.raises(CollectionNotFoundError):
            backend.set_alias(f"{info.name}_dangling", f"{PREFIX}no_such_collection")
        with pytest.raises(InvalidCollectionNameError):
            backend.set_alias("bad-alias name", info.name)
        mine = {a: c for a, c in backend.aliases().items() if a.startswith(info.name)}
        assert mine == {alias: info.name}, f"refused aliases were created anyway: {mine}"

    def test_an_alias_moved_by_another_process_is_seen_by_an_open_handle(self, backend, backend_uri, backend_options, info,
                                                                         filled, made):  # fmt: skip
        self._needs_aliases(backend, info)
        if not backend.shared:
            pytest.skip("an embedded store opens in one process at a time: no other process can move its aliases")
        other = self._fill(backend, f"{info.name}_b", 8, 121, made)
        alias = f"{info.name}_moved"
        backend.set_alias(alias, info.name)
        assert backend.search(alias, filled[0].vector, top_k=1)[0][0].id == filled[0].id
        out = in_new_process(self.backend_name, backend_uri, backend_options, "set_alias", collection=f"{info.name}_b",
                             alias=alias)  # fmt: skip
        assert "error" not in out, f"another process could not move the alias: {out.get('error')}: {out.get('message')}"
        hit = backend.search(alias, other[0].vector, top_k=1)[0]
        assert hit and hit[0].id == other[0].id, (
            f"another process moved alias {alias!r} to {info.name + '_b'!r}, but this open handle still answered from "
            f"{info.name!r}: a handle must resolve an alias at every call, never cache it"
        )

    # ------------------------------------------------------------------ limits and disks
    def test_top_k_above_the_engine_limit_is_refused_clearly(self, backend, info, filled):
        limit = backend.max_top_k
        if limit is None:
            row = backend.search(info.name, filled[0].vector, top_k=100_000)[0]
            assert len(row) == len(filled), f"top_k=100000 (no declared max_top_k) returned {len(row)} of {len(filled)} hits"
            return
        with pytest.raises(ValueError, match=f"limit of {limit}"):
            backend.search(info.name, filled[0].vector, top_k=limit + 1)
        assert len(backend.search(info.name, filled[0].vector, top_k=limit)[0]) == len(filled)

    def test_embedded_stores_check_free_space_before_writing(self, backend, info, monkeypatch):
        backend.create_collection(info)
        if backend.storage_path is None:
            if backend.shared:
                pytest.skip("a server: its disk is the server's to watch")
            pytest.fail("an embedded store (shared=False) must return its directory or file from storage_path, so writes "
                        "are checked against the free space of its disk; it returns None")  # fmt: skip
        from clair_vec.store import disk_space

        calls = []
        original = backend._upsert
        monkeypatch.setattr(backend, "_upsert", lambda *a: (calls.append(1), original(*a))[1])
        monkeypatch.setattr(disk_space, "free_bytes", lambda path: 2**20)
        with pytest.raises(DiskFullError, match="not enough free space") as full:
            backend.upsert(info.name, make_records(5, dim=self.dim))
        assert "1.0 MiB free" in str(full.value) and not calls, f"the engine was called before the check: {full.value}"
        monkeypatch.undo()
        assert backend.upsert(info.name, make_records(5, dim=self.dim)) == 5 and backend.count(info.name) == 5


def _drop_all(be: Backend, names: list[str], alias_prefix: str) -> None:
    """Drop the aliases that start with ``alias_prefix`` or point at ``names``, then ``names``."""
    for alias, target in be.aliases().items():
        if alias.startswith(alias_prefix) or target in names:
            be.drop_alias(alias)
    for name in names:
        be.drop_collection(name)


def _info_named(name: str, dim: int) -> CollectionInfo:
    """A CollectionInfo whose name skipped validation, to show the backend checks it too."""
    info = object.__new__(CollectionInfo)
    for k, v in {"name": name, "dim": dim, "model": "m", "metric": "cosine", "target_domain": "photo", "extra": {}}.items():
        object.__setattr__(info, k, v)
    return info
