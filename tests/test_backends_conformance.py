"""The conformance suite run against every backend on its embedded engine."""

from __future__ import annotations

import pytest
from clair_vec_milvus import MilvusBackend
from clair_vec_numpy import NumpyBackend
from clair_vec_qdrant import QdrantClientBackend, QdrantEdgeBackend

from clair_vec.testing import BackendConformance


class TestMilvusLite(BackendConformance):
    @pytest.fixture
    def backend_factory(self, tmp_path):
        return lambda: MilvusBackend(uri=str(tmp_path / "milvus.db"))


class TestQdrantEdge(BackendConformance):
    @pytest.fixture
    def backend_factory(self, tmp_path):
        return lambda: QdrantEdgeBackend(uri=str(tmp_path / "qdrant"))


class TestQdrantClientLocalMode(BackendConformance):
    @pytest.fixture
    def backend_factory(self, tmp_path):
        return lambda: QdrantClientBackend(uri=f"local:{tmp_path / 'qdrant-local'}")


class TestNumpyReference(BackendConformance):
    @pytest.fixture
    def backend_factory(self, tmp_path):
        return lambda: NumpyBackend(uri=str(tmp_path / "np"))
