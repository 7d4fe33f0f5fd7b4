"""The conformance suite against the guide's example plugin. The built-in backends run it in their
own distributions (plugins/clair-vec-*/tests); servers: test_servers.py."""

from __future__ import annotations

import pytest

from clair_vec.store import plugins as plugin_manager
from clair_vec.store.testing import BackendConformance


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
