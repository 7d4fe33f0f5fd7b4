"""Plugin discovery (entry points and the env fallback), hooks, and the example third-party plugin."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from clair_vec import plugin_manager
from clair_vec.errors import UnknownBackendError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def fresh_manager():
    plugin_manager.reset()
    yield
    plugin_manager.reset()


def test_builtin_backends_come_from_entry_points():
    found = plugin_manager.backends()
    assert found["milvus"][1] == "milvus" and found["qdrant"][1] == "qdrant"  # plugin names = entry-point names
    pm = plugin_manager.get_plugin_manager()
    assert {"milvus", "qdrant"} <= {name for name, _ in pm.list_name_plugin()}


def test_env_fallback_loads_modules_without_entry_points(monkeypatch, tmp_path):
    plugin = tmp_path / "my_env_plugin.py"
    plugin.write_text(textwrap.dedent('''
        from clair_vec import hookimpl
        from clair_vec_numpy import NumpyBackend

        class Renamed(NumpyBackend):
            name = "envnumpy"

        @hookimpl
        def clair_vec_register_backends(register):
            register("envnumpy", Renamed)

        @hookimpl
        def clair_vec_prepare_payload(payload, domain):
            return {"shard": domain.upper(), "domain": "overwrite attempt"}
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("CLAIR_VEC_PLUGINS", "my_env_plugin")
    b = plugin_manager.get_backend("envnumpy")
    assert b.name == "envnumpy"
    extra = plugin_manager.extra_payload({"domain": "sketch", "path": "p"}, "sketch", "m")
    assert extra == {"shard": "SKETCH"}  # built-in keys cannot be overwritten


def test_bad_plugin_module_and_misspelled_hook_fail_loudly(monkeypatch, tmp_path):
    monkeypatch.setenv("CLAIR_VEC_PLUGINS", "no_such_module_xyz")
    with pytest.raises(UnknownBackendError, match="no_such_module_xyz"):
        plugin_manager.get_plugin_manager()
    plugin_manager.reset()
    (tmp_path / "typo_plugin.py").write_text(
        "from clair_vec import hookimpl\n@hookimpl\ndef clair_vec_register_backend(register):\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("CLAIR_VEC_PLUGINS", "typo_plugin")
    with pytest.raises(Exception, match="clair_vec_register_backend"):
        plugin_manager.get_plugin_manager()


def test_example_plugin_installs_and_is_discovered(tmp_path):
    """The guide's plugin, pip-installed as a real distribution, is found through its entry point."""
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
         "--target", str(target), str(ROOT / "plugins" / "example-numpy")],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    code = textwrap.dedent("""
        import numpy as np, clair_vec
        from clair_vec.backend import CollectionInfo, Record
        from clair_vec.plugin_manager import backends
        assert backends()["numpy"][1] == "numpy", backends()
        b = clair_vec.get_backend("numpy")
        b.create_collection(CollectionInfo("c", 3, "m"))
        b.upsert("c", [Record("a", np.array([1, 0, 0]), {"domain": "photo"})])
        print(b.search("c", np.array([[1, 0, 0]]), top_k=1)[0][0].id)
    """)
    env = {**os.environ, "PYTHONPATH": str(target)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "a"


def test_cli_lists_backends_and_reports_errors_cleanly(tmp_path):
    from clair_vec.cli import main

    assert main(["backends"]) == 0
    assert main(["search", "--collection", "c", "--domain", "sketch", "--model", str(tmp_path / "none"), "x.png"]) == 2
