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
failure names what the backend gets wrong. No torch needed.

The module is also a pytest plugin (entry point ``pytest11``), so pytest rewrites its asserts
and a failure shows the values compared.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import traceback
import uuid
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any, ClassVar

import numpy as np
import pytest

from clair_vec.errors import (
    BackendUnavailableError,
    CollectionMismatchError,
    CollectionNotFoundError,
    InvalidCollectionNameError,
    StoreLockedError,
    TransientBackendError,
)
from clair_vec.store.backend import Backend, CollectionInfo, Record

DIM = 16
#: payload strings a backend must store, return and filter on unchanged
TRICKY = ("café", "猫", "emoji 🎨", 'say "cheese"', "back\\slash", "it's", "new\nline", "tab\there", "\\u00e9 literally")


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
    def backend_factory(self, backend_uri, backend_options) -> Callable[[], Backend]:
        if not self.backend_name:
            pytest.fail(f"{type(self).__name__} must set backend_name to the name its plugin registers")
        return lambda: open_backend(self.backend_name, backend_uri, backend_options)

    @pytest.fixture
    def backend(self, backend_factory, info):
        b = backend_factory()
        yield b
        b.close()
        # servers outlive the test: leave nothing behind (a fresh handle, as the test's may be closed)
        cleanup = backend_factory()
        try:
            cleanup.drop_collection(info.name)
        finally:
            cleanup.close()

    @pytest.fixture
    def info(self) -> CollectionInfo:
        # unique per test, so suites may share one server
        return CollectionInfo(name=f"conformance_{uuid.uuid4().hex[:10]}", dim=self.dim, model="test-model", target_domain="photo")

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
        info = CollectionInfo(f"spec_{uuid.uuid4().hex[:10]}", self.dim, "model-Ω", metric="cosine", target_domain="sketch",
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
        assert [row[0][0] for row in out["hits"]] == [filled[7].id, filled[8].id]
        assert out["existing"] == sorted(ids)
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

    def test_a_second_process_never_harms_an_open_writer(self, backend, backend_uri, backend_options, info, filled):
        out = in_new_process(self.backend_name, backend_uri, backend_options, "count", collection=info.name)
        if "error" in out:  # embedded engines: one process at a time, said clearly
            assert out.get("is_locked"), f"a second opener must get StoreLockedError, got {out['error']}: {out['message']}"
            assert "process" in out["message"] and "server" in out["message"], out["message"]
        else:
            assert out["count"] == len(filled)
        more = make_records(20, seed=5, dim=self.dim, prefix="more")
        assert backend.upsert(info.name, more) == 20
        backend.flush(info.name)
        assert backend.count(info.name) == len(filled) + 20
        assert backend.search(info.name, more[3].vector, top_k=1)[0][0].id == more[3].id

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
            assert [h.id for h in row] == expected
            np.testing.assert_allclose([h.score for h in row], np.sort(sims)[::-1][:5], atol=1e-4)

    def test_search_returns_payload_and_respects_top_k(self, backend, info, filled):
        row = backend.search(info.name, filled[3].vector, top_k=3)[0]
        assert len(row) == 3
        assert row[0].id == filled[3].id
        assert row[0].payload == filled[3].payload

    def test_top_k_beyond_the_matches_returns_only_the_matches(self, backend, info, filled):
        assert len(backend.search(info.name, filled[0].vector, top_k=len(filled) + 25)[0]) == len(filled)
        matching = [r for r in filled if r.payload["label"] == "c2" and r.payload["domain"] == "photo"]
        row = backend.search(info.name, filled[0].vector, top_k=50, filter={"label": "c2", "domain": "photo"})[0]
        assert sorted(h.id for h in row) == sorted(r.id for r in matching)

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
        assert sorted(h.id for h in row) == sorted(r.id for r in matching)
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
        assert listed == {r.id: r.payload for r in filled}
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
            assert gone.id not in {h.id for h in row}
            assert len(row) == len(filled) - 2
        assert backend.get(info.name, ids[:2]) == {}
        assert ids[0] not in dict(backend.records(info.name))
        assert backend.drop_collection(info.name) is True
        assert not backend.has_collection(info.name)


def _info_named(name: str, dim: int) -> CollectionInfo:
    """A CollectionInfo whose name skipped validation, to show the backend checks it too."""
    info = object.__new__(CollectionInfo)
    for k, v in {"name": name, "dim": dim, "model": "m", "metric": "cosine", "target_domain": "photo", "extra": {}}.items():
        object.__setattr__(info, k, v)
    return info
