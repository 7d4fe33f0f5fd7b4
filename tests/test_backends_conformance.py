"""The conformance suite run against every backend on its embedded engine (servers: test_servers.py)."""

from __future__ import annotations

import pytest

from clair_vec.store import plugins as plugin_manager
from clair_vec.store.testing import BackendConformance


class TestMilvusLite(BackendConformance):
    backend_name = "milvus"

    @pytest.fixture
    def backend_uri(self, tmp_path):
        return str(tmp_path / "milvus.db")

    @pytest.fixture
    def fresh_uri(self, tmp_path):
        return str(tmp_path / "never" / "made.db")


class TestQdrantEdge(BackendConformance):
    backend_name = "qdrant"

    @pytest.fixture
    def backend_uri(self, tmp_path):
        return str(tmp_path / "qdrant")

    @pytest.fixture
    def fresh_uri(self, tmp_path):
        return str(tmp_path / "never" / "qdrant")


class TestQdrantClientLocalMode(BackendConformance):
    backend_name = "qdrant"

    @pytest.fixture
    def backend_uri(self, tmp_path):
        return f"local:{tmp_path / 'qdrant-local'}"

    @pytest.fixture
    def fresh_uri(self, tmp_path):
        return f"local:{tmp_path / 'never' / 'local'}"

    @pytest.fixture
    def fresh_path(self, fresh_uri):
        return fresh_uri.removeprefix("local:")


class TestNumpyReference(BackendConformance):
    """The guide's example plugin, loaded the way a worker without entry points loads it."""

    backend_name = "numpy"

    @pytest.fixture(autouse=True)
    def numpy_plugin(self, monkeypatch):
        monkeypatch.setenv("CLAIR_VEC_PLUGINS", "clair_vec_numpy")
        plugin_manager.reset()
        yield
        plugin_manager.reset()

    @pytest.fixture
    def backend_uri(self, tmp_path):
        return str(tmp_path / "np")

    @pytest.fixture
    def fresh_uri(self, tmp_path):
        return str(tmp_path / "never" / "np")
