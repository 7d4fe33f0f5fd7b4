"""Conformance suite for clair_vec backends: subclass it in your plugin's tests.

::

    from clair_vec.testing import BackendConformance

    class TestMyBackend(BackendConformance):
        @pytest.fixture
        def backend_factory(self, tmp_path):
            # every call opens the *same* storage: the suite reopens it to check persistence
            return lambda: MyBackend(uri=str(tmp_path / "store"))

Every test states one promise of the :class:`clair_vec.backend.Backend` contract, so a failure
names what the backend gets wrong. No torch needed.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from .backend import Backend, CollectionInfo, Record
from .errors import CollectionMismatchError, CollectionNotFoundError, TransientBackendError

DIM = 16


def make_records(n: int, *, seed: int = 0, dim: int = DIM, prefix: str = "r") -> list[Record]:
    rng = np.random.default_rng(seed)
    vecs = rng.normal(size=(n, dim)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    domains = ("photo", "sketch")
    return [
        Record(f"{prefix}{i:06d}", vecs[i], {"domain": domains[i % 2], "label": f"c{i % 5}", "path": f"/img/{i}.png"})
        for i in range(n)
    ]


class BackendConformance:
    """The behaviour every backend must show. Override ``backend_factory``."""

    dim = DIM

    @pytest.fixture
    def backend_factory(self, tmp_path):  # pragma: no cover - always overridden
        raise NotImplementedError("override backend_factory to return a callable that opens your backend")

    @pytest.fixture
    def backend(self, backend_factory):
        b = backend_factory()
        yield b
        b.close()

    @pytest.fixture
    def info(self) -> CollectionInfo:
        return CollectionInfo(name="conformance", dim=self.dim, model="test-model", target_domain="photo")

    @pytest.fixture
    def filled(self, backend: Backend, info: CollectionInfo) -> list[Record]:
        backend.create_collection(info)
        records = make_records(60, dim=self.dim)
        assert backend.upsert(info.name, records) == 60
        return records

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

    def test_spec_and_data_survive_reopening(self, backend_factory, backend, info, filled):
        backend.flush(info.name)
        assert backend.count(info.name) == len(filled)
        backend.close()
        again = backend_factory()
        try:
            assert again.open_collection(info.name) == info
            assert again.count(info.name) == len(filled)
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
        with pytest.raises(TransientBackendError):
            backend.upsert(info.name, make_records(1, dim=self.dim, prefix="x"))
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
        assert row[0].payload["path"] == filled[3].payload["path"]
        assert row[0].payload["domain"] == filled[3].payload["domain"]

    def test_filters_on_domain_and_label(self, backend, info, filled):
        q = np.stack([r.vector for r in filled[:4]])
        for row in backend.search(info.name, q, top_k=10, filter={"domain": "sketch", "label": ["c1", "c3"]}):
            assert row and all(h.payload["domain"] == "sketch" and h.payload["label"] in ("c1", "c3") for h in row)
        expected = sum(1 for r in filled if r.payload["domain"] == "sketch" and r.payload["label"] in ("c1", "c3"))
        assert backend.count(info.name, filter={"domain": "sketch", "label": ["c1", "c3"]}) == expected
        with pytest.raises(ValueError, match="cannot filter"):
            backend.search(info.name, q, filter={"colour": "red"})

    def test_existing_ids_delete_and_drop(self, backend, info, filled):
        ids = [r.id for r in filled[:5]]
        assert backend.existing_ids(info.name, ids + ["absent"]) == set(ids)
        assert backend.delete(info.name, ids[:2] + ["absent"]) == 2
        assert backend.count(info.name) == len(filled) - 2
        assert backend.existing_ids(info.name, ids) == set(ids[2:])
        assert backend.drop_collection(info.name) is True
        assert not backend.has_collection(info.name)
