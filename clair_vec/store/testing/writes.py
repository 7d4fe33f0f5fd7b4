"""Writes: upserts are idempotent by id; a wrong dimension or another model's vectors are refused
before anything is written; large writes go in bounded batches; transient errors are retried a
bounded number of times (and nothing else is); embedded stores check free space before writing."""

from __future__ import annotations

import json

import numpy as np
import pytest

from clair_vec.errors import BackendUnavailableError, CollectionMismatchError, DiskFullError, TransientBackendError
from clair_vec.store.backend import Record
from clair_vec.store.testing.support import Promises, make_records


class WritePromises(Promises):
    """What is written lands once, whole and checked, or not at all."""

    def test_upsert_is_idempotent_by_id(self, backend, info, filled):
        assert backend.upsert(info.name, filled[:10]) == 10
        assert backend.count(info.name) == len(filled)
        changed = Record(filled[0].id, filled[1].vector, {**filled[0].payload, "label": "relabelled"})
        backend.upsert(info.name, [changed])
        assert backend.count(info.name) == len(filled)
        hit = backend.search(info.name, filled[1].vector[None], top_k=2, filter={"label": "relabelled"})[0]
        assert [h.id for h in hit] == [filled[0].id]
        assert hit[0].score > 0.999, (
            f"an upsert of an existing id with a new vector kept the old one (cosine to the new {hit[0].score:.3f}): "
            "an upsert replaces the whole record"
        )

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
