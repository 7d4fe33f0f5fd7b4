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
