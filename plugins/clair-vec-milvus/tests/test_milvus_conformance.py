"""The conformance suite against this plugin's embedded engine, Milvus Lite, opened through the
plugin system as users open it. (The clair_vec repository runs it against a Milvus server and a
`milvus-lite server` process too: tests/test_servers.py.)"""

from __future__ import annotations

import pytest

from clair_vec.plugin import BackendConformance


class TestMilvusLite(BackendConformance):
    backend_name = "milvus"

    @pytest.fixture
    def backend_uri(self, tmp_path):
        return str(tmp_path / "milvus.db")

    @pytest.fixture
    def fresh_uri(self, tmp_path):
        return str(tmp_path / "never" / "made.db")


class TestMilvusLiteHNSW(TestMilvusLite):
    """The same promises with an approximate index: searched with the ``ef`` its index calls for."""

    @pytest.fixture
    def backend_options(self):
        return {"index_type": "HNSW", "index_params": {"M": 16, "efConstruction": 200}}
