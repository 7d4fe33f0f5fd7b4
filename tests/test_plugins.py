"""Plugin discovery (entry points and the env fallback), broken plugins, hooks, and the example plugin."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from clair_vec.errors import UnknownBackendError
from clair_vec.store import plugins as plugin_manager

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "clair_vec.cli"]


@pytest.fixture(autouse=True)
def fresh_manager():
    plugin_manager.reset()
    yield
    plugin_manager.reset()


def fake_distribution(site: Path, dist: str, version: str, entry_points: dict[str, str], modules: dict[str, str]) -> Path:
    """An installed distribution as pip leaves it: a module and a .dist-info with entry points."""
    site.mkdir(parents=True, exist_ok=True)
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text("[clair_vec]\n" + "".join(f"{k} = {v}\n" for k, v in entry_points.items()))
    for name, code in modules.items():
        (site / f"{name}.py").write_text(textwrap.dedent(code))
    return site


def test_builtin_backends_come_from_entry_points():
    found = plugin_manager.backends()
    assert found["milvus"][1] == "milvus" and found["qdrant"][1] == "qdrant"  # plugin names = entry-point names
    pm = plugin_manager.get_plugin_manager()
    assert {"milvus", "qdrant"} <= {name for name, _ in pm.list_name_plugin()}
    infos = {p.name: p for p in plugin_manager.plugins()}
    assert infos["milvus"].distribution == "clair-vec-milvus" and infos["milvus"].version == "0.1.0"
    assert infos["qdrant"].distribution == "clair-vec-qdrant"  # each built-in backend is a distribution of its own
    assert infos["milvus"].hooks == ["clair_vec_register_backends"] and infos["milvus"].backends == ["milvus"]


def test_env_fallback_loads_modules_without_entry_points(monkeypatch, tmp_path):
    plugin = tmp_path / "my_env_plugin.py"
    plugin.write_text(textwrap.dedent('''
        from clair_vec.plugin import hookimpl
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
    info = next(p for p in plugin_manager.plugins() if p.name == "my_env_plugin")
    assert info.source == "CLAIR_VEC_PLUGINS" and info.hooks == ["clair_vec_prepare_payload", "clair_vec_register_backends"]


def test_broken_env_module_and_misspelled_hook_are_reported_and_skipped(monkeypatch, tmp_path, caplog):
    (tmp_path / "typo_plugin.py").write_text(
        "from clair_vec.plugin import hookimpl\n@hookimpl\ndef clair_vec_register_backend(register):\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("CLAIR_VEC_PLUGINS", "no_such_module_xyz,typo_plugin")
    found = plugin_manager.backends()
    assert {"milvus", "qdrant"} <= set(found)  # the others keep working
    broken = {p.name: p.error for p in plugin_manager.plugins() if not p.loaded}
    assert "ModuleNotFoundError" in broken["no_such_module_xyz"]
    assert "clair_vec_register_backend" in broken["typo_plugin"] and "not clair_vec hooks" in broken["typo_plugin"]
    warnings = [r.getMessage() for r in caplog.records if "failed to load" in r.getMessage()]
    assert len(warnings) == 2  # once each, by name
    plugin_manager.backends()
    assert len([r for r in caplog.records if "failed to load" in r.getMessage()]) == 2
    with pytest.raises(UnknownBackendError, match="unavailable.*No module named 'no_such_module_xyz'"):
        plugin_manager.get_backend("no_such_module_xyz")
    with pytest.raises(UnknownBackendError, match="failed to load: .*no_such_module_xyz"):
        plugin_manager.get_backend("elastic")


def test_a_plugin_whose_registration_raises_or_clashes_is_skipped(monkeypatch, tmp_path):
    (tmp_path / "raising_plugin.py").write_text(textwrap.dedent('''
        from clair_vec.plugin import hookimpl

        @hookimpl
        def clair_vec_register_backends(register):
            register("half", object)
            raise RuntimeError("config file missing")
    '''))
    (tmp_path / "clashing_plugin.py").write_text(textwrap.dedent('''
        from clair_vec.plugin import hookimpl
        from clair_vec_numpy import NumpyBackend

        @hookimpl
        def clair_vec_register_backends(register):
            register("milvus", NumpyBackend)
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("CLAIR_VEC_PLUGINS", "raising_plugin,clashing_plugin")
    found = plugin_manager.backends()
    assert "half" not in found  # nothing of a plugin that failed half-way
    assert found["milvus"][1] == "milvus"  # the first registration stands
    errors = {p.name: p.error for p in plugin_manager.plugins() if not p.loaded}
    assert "RuntimeError while registering backends: config file missing" in errors["raising_plugin"]
    assert "already registered by 'milvus'" in errors["clashing_plugin"]
    assert plugin_manager.get_backend("qdrant", str(tmp_path / "q")).name == "qdrant"


def test_a_plugin_with_a_missing_dependency_does_not_break_the_others(tmp_path):
    """The reported case: a third-party backend whose dependency is not installed. In a new
    process, as users run it: the CLI still lists and uses the built-in backends."""
    site = fake_distribution(
        tmp_path / "site", "clair-vec-lancedb", "0.3.1", {"lancedb": "clair_vec_lancedb"},
        {"clair_vec_lancedb": "import lancedb_that_is_not_installed\n"},
    )  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run([*CLI, "backends"], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "milvus" in out.stdout and "qdrant" in out.stdout and "clair-vec-milvus  " in out.stdout
    assert "lancedb (clair-vec-lancedb 0.3.1): ModuleNotFoundError" in out.stdout
    assert out.stderr.count("'lancedb'") == 1  # reported once, by name
    listed = json.loads(subprocess.run([*CLI, "backends", "--json"], capture_output=True, text=True, env=env,
                                       timeout=120).stdout)  # fmt: skip
    by_name = {p["name"]: p for p in listed}
    assert by_name["lancedb"]["error"] and by_name["qdrant"]["error"] is None and by_name["qdrant"]["backends"] == ["qdrant"]
    use = textwrap.dedent(f"""
        import numpy as np
        from clair_vec import get_backend
        from clair_vec.plugin import CollectionInfo, Record
        b = get_backend("qdrant", {str(tmp_path / "q")!r})
        b.create_collection(CollectionInfo("c", 3, "m"))
        b.upsert("c", [Record("a", np.array([1, 0, 0]), {{"domain": "photo"}})])
        print(b.search("c", np.array([[1, 0, 0]]), top_k=1)[0][0].id)
        b.close()
        try:
            get_backend("lancedb")
        except Exception as exc:
            print(type(exc).__name__, exc)
    """)
    out = subprocess.run([sys.executable, "-c", use], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    first, second = out.stdout.strip().splitlines()
    assert first == "a"
    assert second.startswith("UnknownBackendError backend 'lancedb' is unavailable") and "clair-vec-lancedb 0.3.1" in second


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
        from clair_vec.plugin import CollectionInfo, Record
        from clair_vec.store.plugins import backends
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
    listing = subprocess.run([*CLI, "backends"], env=env, capture_output=True, text=True, cwd=tmp_path).stdout
    assert any(line.split()[:4] == ["numpy", "numpy", "clair-vec-numpy", "0.1.0"] for line in listing.splitlines()), listing


def test_cli_lists_backends_and_reports_errors_cleanly(tmp_path, capsys):
    from clair_vec.cli import main

    assert main(["backends"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["BACKEND", "PLUGIN", "DISTRIBUTION", "VERSION", "HOOKS"]
    assert any(r.split()[:4] == ["milvus", "milvus", "clair-vec-milvus", "0.1.0"] and r.endswith("clair_vec_register_backends")
               for r in table)  # fmt: skip
    assert main(["search", "--collection", "c", "--domain", "sketch", "--model", str(tmp_path / "none"), "x.png"]) == 2
    assert "not a clair_vec checkpoint" in capsys.readouterr().err
