"""`clair-vec backends --check`: the conformance suite against a deployment, as a separate process
an operator runs: exit 0 when every promise holds, 1 naming the broken ones, nothing left behind."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def check(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "clair_vec.cli", "backends", "--check", *args], capture_output=True,
                          text=True, timeout=600, env={**os.environ, **(env or {})})  # fmt: skip


def test_check_an_embedded_store_and_leave_nothing_behind(tmp_path):
    store = tmp_path / "new" / "q"
    out = check("qdrant", "--uri", str(store), "-k", "stay_apart or alias or vectors_by_id or shared_says")
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert lines[0] == f"backend 'qdrant' at {store}: 8 promises of the backend contract checked"
    assert "  holds    collections stay apart while a handle moves between them" in lines
    assert "  holds    shared says whether a second process can write" in lines
    assert ("  skipped  an alias moved by another process is seen by an open handle  (an embedded store opens in one "
            "process at a time: no other process can move its aliases)") in lines  # fmt: skip
    assert lines[-1].startswith("7 hold, 0 broken, 1 skipped")
    assert not (tmp_path / "new").exists(), "the check left the store it created"


def test_a_broken_plugin_is_listed_with_what_it_breaks(tmp_path):
    (tmp_path / "one_table_plugin.py").write_text(textwrap.dedent('''
        from clair_vec.plugin import hookimpl
        from clair_vec_numpy import NumpyBackend

        class OneTable(NumpyBackend):
            """Every collection's records in the first collection's table."""
            name = "onetable"

            def _count(self, name, flt):
                return super()._count(sorted(self.data)[0], flt)

        @hookimpl
        def clair_vec_register_backends(register):
            register("onetable", OneTable)
    '''))
    env = {"CLAIR_VEC_PLUGINS": "one_table_plugin",
           "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT / "plugins" / "example-numpy")])}  # fmt: skip
    existing = tmp_path / "store"
    out = check("onetable", "--uri", str(existing), "-k", "stay_apart or upsert_is_idempotent", env=env)
    assert out.returncode == 1, out.stdout + out.stderr[-3000:]
    assert "  holds    upsert is idempotent by id" in out.stdout
    assert "  BROKEN   collections stay apart while a handle moves between them" in out.stdout
    assert "holds 25 records, but count() says 60: data of another collection (or none of its own) is counted there" in out.stdout
    assert out.stdout.splitlines()[-1] == "broken promises: collections stay apart while a handle moves between them"
    assert not existing.exists()


def test_check_a_milvus_server_and_leave_nothing_on_it():
    uri = os.environ.get("MILVUS_URI")
    if not uri:
        pytest.skip("MILVUS_URI is not set: run through `make test` (tests/servers.py starts a Milvus 2.3.5 server)")
    from pymilvus import MilvusClient

    client = MilvusClient(uri=uri)
    client.create_collection("conformance_made_by_someone_else", dimension=4)  # named like the suite's: not its to drop
    before = sorted(client.list_collections())
    out = check("milvus", "--uri", uri, "--option", "timeout=5", "-k", "refused_connection or every_read_and_write or shared_says")
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    assert "3 hold, 0 broken, 0 skipped" in out.stdout
    assert sorted(client.list_collections()) == before and not (client.list_aliases().get("aliases") or [])
    client.drop_collection("conformance_made_by_someone_else")
    client.close()


def test_a_backend_whose_open_creates_a_collection_fails_the_check_given_an_empty_namespace(tmp_path):
    """--fresh-option points the check at an empty namespace the operator made; a backend that
    creates something when it opens is then caught, whatever its engine."""
    (tmp_path / "eager_plugin.py").write_text(textwrap.dedent('''
        import os
        from clair_vec.plugin import CollectionInfo, hookimpl
        from clair_vec_numpy import NumpyBackend

        class Eager(NumpyBackend):
            """A namespace per option `ns`, and a 'default' collection made in it on open."""
            name = "eager"

            def __init__(self, uri=None, ns="main", **options):
                super().__init__(os.path.join(uri, ns), **options)
                if not self.has_collection("default"):
                    self.create_collection(CollectionInfo("default", 4, "m"))

        @hookimpl
        def clair_vec_register_backends(register):
            register("eager", Eager)
    '''))
    env = {"CLAIR_VEC_PLUGINS": "eager_plugin",
           "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT / "plugins" / "example-numpy")])}  # fmt: skip
    store = tmp_path / "server"
    skipped = check("eager", "--uri", str(store), "-k", "fresh_server_namespace", env=env)
    assert skipped.returncode == 0 and "0 hold, 0 broken, 1 skipped" in skipped.stdout, skipped.stdout + skipped.stderr[-2000:]
    out = check("eager", "--uri", str(store), "--fresh-option", "ns=check_empty", "-k", "fresh_server_namespace", env=env)
    assert out.returncode == 1, out.stdout + out.stderr[-3000:]
    assert "  BROKEN   opening a fresh server namespace creates nothing" in out.stdout


def test_an_unreachable_uri_can_be_given_for_any_engine(tmp_path):
    out = check("qdrant", "--uri", str(tmp_path / "store"), "--unreachable-uri", "http://127.0.0.1:9", "-k", "refused_connection")
    assert out.returncode == 0 and "1 hold, 0 broken, 0 skipped" in out.stdout, out.stdout + out.stderr[-2000:]
