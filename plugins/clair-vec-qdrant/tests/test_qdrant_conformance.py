"""The conformance suite against this plugin's in-process engines, opened through the plugin
system as users open them: Qdrant Edge (the default) and qdrant-client's local mode. (Qdrant
servers: the clair_vec repository's tests/test_servers.py, where Docker runs.)"""

from __future__ import annotations

import pytest

from clair_vec.plugin import BackendConformance


class TestQdrantEdge(BackendConformance):
    backend_name = "qdrant"

    @pytest.fixture
    def backend_uri(self, tmp_path):
        return str(tmp_path / "qdrant")

    @pytest.fixture
    def fresh_uri(self, tmp_path):
        return str(tmp_path / "never" / "qdrant")


class TestQdrantEdgeGraph(TestQdrantEdge):
    """The same promises when every flush builds the HNSW graph and searches walk it (segments of
    any size: the full-scan threshold is 1 KB), filtered searches included."""

    @pytest.fixture
    def backend_options(self):
        return {"index_threshold": 0, "hnsw_ef": 16, "full_scan_threshold_kb": 1}


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
