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
    assert found["milvus"][1] == "milvus"  # the name's own plugin keeps it
    errors = {p.name: p.error for p in plugin_manager.plugins() if not p.loaded}
    assert "RuntimeError while registering backends: config file missing" in errors["raising_plugin"]
    assert "registers backend 'milvus', which belongs to 'milvus' (clair-vec-milvus 0.1.0)" in errors["clashing_plugin"]
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


PAYLOAD_PLUGIN = """
from clair_vec.plugin import hookimpl
from clair_vec_numpy import NumpyBackend

class Mine(NumpyBackend):
    name = "{backend}"

@hookimpl
def clair_vec_register_backends(register):
    register("{backend}", Mine)

@hookimpl
def clair_vec_prepare_payload(payload):
    return {{"from_{backend}": 1}}
"""


def test_a_backend_name_stays_with_its_own_plugin_and_one_two_others_claim_is_refused_naming_both(monkeypatch, tmp_path):
    """The first plugin found used to win a name: a distribution sorted before clair-vec-milvus
    took `milvus` (and the user's data) with one warning, and of two plugins sharing an entry-point
    name the second vanished without a word."""
    site = tmp_path / "site"
    fake_distribution(site, "aaa-fast-milvus", "1.0", {"fastmilvus": "aaa_fast_milvus"},
                      {"aaa_fast_milvus": PAYLOAD_PLUGIN.format(backend="milvus")})  # fmt: skip
    fake_distribution(site, "alpha-db", "1.0", {"mydb": "alpha_db"}, {"alpha_db": textwrap.dedent('''
        from clair_vec.plugin import hookimpl
        from clair_vec_numpy import NumpyBackend

        @hookimpl
        def clair_vec_register_backends(register):
            register("mydb", NumpyBackend)
            register("alpha", NumpyBackend)
    ''')})  # fmt: skip
    fake_distribution(site, "beta-db", "2.0", {"mydb": "beta_db"}, {"beta_db": textwrap.dedent('''
        from clair_vec.plugin import hookimpl
        from clair_vec_numpy import NumpyBackend

        @hookimpl
        def clair_vec_register_backends(register):
            register("mydb", NumpyBackend)
            register("beta", NumpyBackend)
    ''')})  # fmt: skip
    monkeypatch.syspath_prepend(str(site))
    found = plugin_manager.backends()
    assert found["milvus"][1] == "milvus"  # clair-vec-milvus keeps its name
    skipped = {p.name: p.error for p in plugin_manager.plugins() if not p.loaded}
    assert "registers backend 'milvus', which belongs to 'milvus' (clair-vec-milvus" in skipped["fastmilvus"]
    assert plugin_manager.extra_payload({"path": "p"}, "photo", "m") == {}  # a skipped plugin runs no hook either
    assert {"alpha", "beta"} <= set(found)  # one entry-point name, two distributions: both load
    with pytest.raises(UnknownBackendError, match=r"registered by more than one plugin: 'mydb' \(alpha-db 1.0\) and 'mydb' "
                       r"\(beta-db 2.0\)"):  # fmt: skip
        plugin_manager.get_backend("mydb")
    assert plugin_manager.clashes() == {"mydb": ["'mydb' (alpha-db 1.0)", "'mydb' (beta-db 2.0)"]}


@pytest.mark.parametrize("body, error", [
    ("from clair_vec.store.plugins import backends\nbackends()\n", "looked up clair_vec's backends while plugins were loading"),
    ("raise SystemExit('please install libfoo first')\n", "it exited at import (please install libfoo first)"),
])  # fmt: skip
def test_a_plugin_that_looks_backends_up_or_exits_at_import_is_skipped_by_name(tmp_path, body, error):
    """The first hung every command for ever (the loader's lock, taken again by the same thread);
    the second ended every command with the plugin's words and no name."""
    site = fake_distribution(tmp_path / "site", "clair-vec-odd", "0.2", {"odd": "clair_vec_odd"}, {"clair_vec_odd": body})
    out = subprocess.run([*CLI, "backends"], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(site)})  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "milvus" in out.stdout and "odd (clair-vec-odd 0.2): " in out.stdout and error in out.stdout


def test_register_refuses_what_it_cannot_use_and_a_factory_must_make_a_backend(monkeypatch, tmp_path):
    (tmp_path / "odd_register.py").write_text(textwrap.dedent('''
        from clair_vec.plugin import hookimpl
        from clair_vec_numpy import NumpyBackend

        @hookimpl
        def clair_vec_register_backends(register):
            register(42, NumpyBackend)
    '''))
    (tmp_path / "odd_factory.py").write_text(textwrap.dedent('''
        from clair_vec.plugin import hookimpl

        @hookimpl
        def clair_vec_register_backends(register):
            register("nothing", lambda uri=None, **kw: None)
            register("no_uri", lambda path=None: None)
    '''))
    (tmp_path / "twice.py").write_text(textwrap.dedent('''
        from clair_vec.plugin import hookimpl
        from clair_vec_numpy import NumpyBackend

        @hookimpl
        def clair_vec_register_backends(register):
            register("dup", NumpyBackend)
            register("dup", NumpyBackend)
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("CLAIR_VEC_PLUGINS", "odd_register,odd_factory,twice")
    errors = {p.name: p.error for p in plugin_manager.plugins() if not p.loaded}
    assert "the name must be a non-empty string" in errors["odd_register"] and "42" in errors["odd_register"]
    assert "registers backend 'dup' twice" in errors["twice"]
    with pytest.raises(UnknownBackendError, match="did you mean"):  # sorting names no longer meets an int
        plugin_manager.get_backend("qdrnt")
    with pytest.raises(UnknownBackendError, match=r"'nothing' \(plugin 'odd_factory'\).*returned NoneType, not a clair_vec Backend"):
        plugin_manager.get_backend("nothing")
    with pytest.raises(UnknownBackendError, match=r"'no_uri' \(plugin 'odd_factory'\).*does not take uri="):
        plugin_manager.get_backend("no_uri")


def test_a_payload_hook_that_fails_or_returns_what_no_engine_stores_is_refused_naming_its_plugin(monkeypatch, tmp_path):
    from clair_vec.errors import PluginHookError

    (tmp_path / "bad_payload.py").write_text(textwrap.dedent('''
        from clair_vec.plugin import hookimpl

        @hookimpl
        def clair_vec_prepare_payload(payload, domain):
            if domain == "sketch":
                raise KeyError("exif")
            return {"nested": {"a": 1}} if domain == "photo" else ["owner", "me"]
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("CLAIR_VEC_PLUGINS", "bad_payload")
    with pytest.raises(PluginHookError, match="plugin 'bad_payload' .* failed in its clair_vec_prepare_payload hook: KeyError"):
        plugin_manager.extra_payload({"path": "p"}, "sketch", "m")
    with pytest.raises(PluginHookError, match="'bad_payload'.*JSON scalars.*field 'nested' is a dict"):
        plugin_manager.extra_payload({"path": "p"}, "photo", "m")
    with pytest.raises(PluginHookError, match="'bad_payload'.*it returned a list"):
        plugin_manager.extra_payload({"path": "p"}, "clipart", "m")


def test_a_collection_created_hook_that_fails_leaves_no_collection_so_the_next_run_calls_it_again(monkeypatch, tmp_path):
    """The collection used to stay: the next run found it existing, never called the hook again,
    and the plugin's grant or index was silently never made."""
    from clair_vec.errors import PluginHookError
    from clair_vec.method.model_card import ModelCard
    from clair_vec.retrieval.indexing import prepare_collection

    (tmp_path / "grant_plugin.py").write_text(textwrap.dedent('''
        import os
        from clair_vec.plugin import hookimpl

        CALLS = []

        @hookimpl
        def clair_vec_collection_created(collection):
            CALLS.append(collection)
            if os.environ.get("GRANT_FAILS"):
                raise PermissionError("cannot grant access")
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("CLAIR_VEC_PLUGINS", "grant_plugin")
    monkeypatch.setenv("GRANT_FAILS", "1")
    import grant_plugin

    card = ModelCard("m-1", 4, "photo", ["photo", "sketch"], "clair-tiny", ["cat"])
    be = plugin_manager.get_backend("numpy")
    try:
        # another run that found the collection made began to fill it before this run's hook failed:
        # not this run's to drop
        monkeypatch.setattr(grant_plugin, "CALLS", _FillingList(be))
        with pytest.raises(PluginHookError, match="the new collection 'busy' was kept \\(it already holds 1 records\\)"):
            prepare_collection(be, "busy", card)
        assert be.count("busy") == 1
        monkeypatch.setattr(grant_plugin, "CALLS", [])
        with pytest.raises(PluginHookError, match="'grant_plugin' .*collection_created hook: PermissionError: cannot grant "
                           "access; the new collection 'g' was dropped again"):  # fmt: skip
            prepare_collection(be, "g", card)
        assert not be.has_collection("g")
        monkeypatch.delenv("GRANT_FAILS")
        prepare_collection(be, "g", card)
        assert grant_plugin.CALLS == ["g", "g"] and be.has_collection("g")
    finally:
        be.close()


class _FillingList(list):
    """A hook's call list that, as another indexing run would, writes a record first."""

    def __init__(self, be):
        super().__init__()
        self.be = be

    def append(self, collection):
        from clair_vec.plugin import Record

        self.be.upsert(collection, [Record("other-run", [1.0, 0, 0, 0], {"domain": "photo"})])
        super().append(collection)


def test_a_hook_wrapper_is_refused_at_load_by_name(monkeypatch, tmp_path):
    """Each plugin's hook is called on its own (to name the one that fails), which a pluggy
    wrapper cannot take: it made every write fail with 'it returned a generator'."""
    (tmp_path / "wrapping_plugin.py").write_text(textwrap.dedent('''
        from clair_vec.plugin import hookimpl

        @hookimpl(wrapper=True)
        def clair_vec_prepare_payload(payload):
            result = yield
            return result
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("CLAIR_VEC_PLUGINS", "wrapping_plugin")
    errors = {p.name: p.error for p in plugin_manager.plugins() if not p.loaded}
    assert "implements ['clair_vec_prepare_payload'] as a wrapper" in errors["wrapping_plugin"]
    assert plugin_manager.extra_payload({"path": "p"}, "photo", "m") == {}


def test_an_error_no_one_foresaw_is_one_line_without_the_password(tmp_path):
    """A plugin's driver error that clair_vec does not translate used to be a raw traceback, with
    the URI's password in its last line."""
    (tmp_path / "leaky_plugin.py").write_text(textwrap.dedent('''
        from clair_vec.plugin import hookimpl
        from clair_vec_numpy import NumpyBackend

        class Leaky(NumpyBackend):
            name = "leaky"

            def __init__(self, uri=None, **options):
                super().__init__(None, **options)
                self.where = uri

            def _list_aliases(self):
                raise RuntimeError(f"grpc handshake failed for {self.where}")

        @hookimpl
        def clair_vec_register_backends(register):
            register("leaky", Leaky)
    '''))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT / "plugins" / "example-numpy")]),
           "CLAIR_VEC_PLUGINS": "leaky_plugin"}  # fmt: skip
    out = subprocess.run([*CLI, "alias", "list", "--backend", "leaky", "--uri", "http://clair:S3cr3tPw@127.0.0.1:9/"],
                         capture_output=True, text=True, timeout=120, env=env)  # fmt: skip
    assert out.returncode == 1 and "S3cr3tPw" not in out.stdout + out.stderr, out.stderr
    assert out.stderr.strip().splitlines() == [
        "clair-vec: error: RuntimeError: grpc handshake failed for http://***@127.0.0.1:9/ (run with -v for the traceback)"]
