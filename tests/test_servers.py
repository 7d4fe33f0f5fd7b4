"""The conformance suite and the user flows against real servers.

Addresses come from ``MILVUS_URI`` / ``MILVUS_LITE_URI`` / ``QDRANT_URL`` when set (``make test``
starts a Milvus 2.3.5 standalone server and a ``milvus-lite server`` through tests/servers.py),
else from testcontainers where a Docker engine answers (Milvus 3.0.2, Qdrant 1.20.0, the tags in
docker/*.yml), else the tests skip and say why. No Qdrant server installs without Docker.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml
from conftest import docker_or_skip, run_cli

from clair_vec.store.testing import PREFIX, BackendConformance, FreshNamespace

DOCKER = Path(__file__).resolve().parents[1] / "docker"


def compose_image(file: str, service: str) -> str:
    """The image tag pinned in docker/*.yml: one source of truth for users and these tests."""
    return yaml.safe_load((DOCKER / file).read_text())["services"][service]["image"]


# pymilvus 3.0.x speaks to Milvus 3.0; qdrant-client 1.20 to Qdrant 1.20 (SDK and server minors match)
MILVUS_IMAGE = compose_image("milvus.yml", "milvus")
QDRANT_IMAGE = compose_image("qdrant.yml", "qdrant")


@pytest.fixture(scope="module")
def qdrant_url():
    if os.environ.get("QDRANT_URL"):
        yield os.environ["QDRANT_URL"]
        return
    docker_or_skip()
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.waiting_utils import wait_for_logs

    with DockerContainer(QDRANT_IMAGE).with_exposed_ports(6333) as c:
        wait_for_logs(c, "Qdrant gRPC listening", timeout=120)
        yield f"http://{c.get_container_host_ip()}:{c.get_exposed_port(6333)}"


@pytest.fixture(scope="module")
def milvus_uri():
    if os.environ.get("MILVUS_URI"):
        yield os.environ["MILVUS_URI"]
        return
    docker_or_skip()
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.waiting_utils import wait_for_logs

    c = (DockerContainer(MILVUS_IMAGE).with_command("milvus run standalone").with_exposed_ports(19530)
         .with_env("ETCD_USE_EMBED", "true").with_env("COMMON_STORAGETYPE", "local"))  # fmt: skip
    with c:
        wait_for_logs(c, "Proxy successfully started", timeout=300)
        yield f"http://{c.get_container_host_ip()}:{c.get_exposed_port(19530)}"


@pytest.fixture(scope="module")
def milvus_lite_uri():
    if not os.environ.get("MILVUS_LITE_URI"):
        pytest.skip("MILVUS_LITE_URI is not set: run through `make test` (tests/servers.py starts `milvus-lite server`)")
    return os.environ["MILVUS_LITE_URI"]


@pytest.mark.docker
class TestQdrantServer(BackendConformance):
    backend_name = "qdrant"

    @pytest.fixture
    def backend_uri(self, qdrant_url):
        return qdrant_url


class MilvusNamespace:
    """A fresh Milvus database per test, for the promise that opening a backend creates nothing."""

    @pytest.fixture
    def fresh_namespace(self, backend_uri, backend_options):
        from pymilvus import MilvusClient

        db = f"{PREFIX}{uuid.uuid4().hex[:10]}"
        token = backend_options.get("token", "")
        admin = MilvusClient(uri=backend_uri, token=token)
        admin.create_database(db)
        inside = MilvusClient(uri=backend_uri, token=token, db_name=db)

        def contents() -> list[str]:
            return sorted(inside.list_collections()) + sorted(inside.list_aliases().get("aliases") or [])

        try:
            yield FreshNamespace(backend_uri, {**backend_options, "db_name": db}, contents)
        finally:
            for name in inside.list_collections():
                inside.drop_collection(name)
            inside.close()
            admin.drop_database(db)
            admin.close()


class TestMilvusServer(MilvusNamespace, BackendConformance):
    backend_name = "milvus"

    @pytest.fixture
    def backend_uri(self, milvus_uri):
        return milvus_uri


class TestMilvusLiteServerProcess(MilvusNamespace, BackendConformance):
    """A Lite store served by `milvus-lite server`: how several processes share one Lite store."""

    backend_name = "milvus"

    @pytest.fixture
    def backend_uri(self, milvus_lite_uri):
        return milvus_lite_uri


def test_a_server_collection_gets_hnsw_from_the_start_and_flush_waits_until_it_is_built(milvus_uri):
    """A server cannot switch a loaded collection's index without releasing it under other
    clients, so the automatic index is HNSW from creation there (index_threshold=None keeps it
    exact). The server builds it in the background and answers from a temporary index until
    then, so flush, which ends an indexing run, returns once nothing is left to index."""
    import numpy as np

    from clair_vec.store.backend import CollectionInfo, Record
    from clair_vec.store.plugins import get_backend

    vectors = np.random.default_rng(0).normal(size=(3000, 16)).astype(np.float32)  # segments above 1024 rows get indexed
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    for kind, threshold in (("HNSW", 20_000), ("FLAT", None)):
        name = f"{PREFIX}{kind.lower()}_{uuid.uuid4().hex[:8]}"
        with get_backend("milvus", milvus_uri, index_threshold=threshold) as be:
            try:
                be.create_collection(CollectionInfo(name, 16, "m"))
                be.upsert(name, [Record(f"{i:04x}", v, {"domain": "photo", "label": "", "path": ""}) for i, v in enumerate(vectors)])
                be.flush(name)
                described = be.client.describe_index(name, "vector")
                assert described["index_type"] == kind and int(described.get("pending_index_rows") or 0) == 0
                assert described["indexed_rows"] == described["total_rows"] == 3000
                with get_backend("milvus", milvus_uri) as other:  # a new handle searches by the collection's index
                    hits = other.search(name, vectors[:20], top_k=1)
                    assert [row[0].id for row in hits] == [f"{i:04x}" for i in range(20)]
            finally:
                be.drop_collection(name)


def test_index_then_search_in_new_processes_against_the_server(milvus_uri, model_dir, shapes_root):
    """The README flow as separate commands against a real server: index, search, re-index."""
    import uuid

    name = f"g_{uuid.uuid4().hex[:8]}"
    photos = [str(shapes_root / "photo" / c) for c in ("heart", "arrow")]
    common = ["--model", str(model_dir), "--collection", name, "--uri", milvus_uri]
    out = run_cli("index", *common, "--label-from-folder", *photos)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.splitlines()[-1])["indexed"] == 16
    query = str(sorted((shapes_root / "sketch" / "heart").iterdir())[0])
    out = run_cli("search", *common, "--domain", "sketch", "--top-k", "16", query)
    assert out.returncode == 0, out.stderr
    hits = json.loads(out.stdout.splitlines()[-1])["hits"]
    assert len(hits) == 16 and {h["label"] for h in hits} == {"heart", "arrow"}
    again = run_cli("index", *common, "--label-from-folder", *photos)
    assert json.loads(again.stdout.splitlines()[-1]) | {"skipped": []} == {
        "collection": name, "backend": "milvus", "indexed": 0, "already_present": 16, "replaced": 0, "moved": 0, "pruned": 0,
        "skipped": [], "duplicates": [], "ignored": []}
    from clair_vec import get_backend

    with get_backend("milvus", milvus_uri) as be:
        be.drop_collection(name)


def test_search_after_a_server_restart_waits_for_the_collection_to_load(model_dir, shapes_root):
    """Index into the server, restart it, search in a new process: right after a restart the
    collection is still loading; the search waits for it instead of failing."""
    from servers import MilvusServer

    pidfile = os.environ.get("MILVUS_SERVER_PIDFILE")
    if not pidfile:
        pytest.skip("MILVUS_SERVER_PIDFILE is not set: run through `make test` (tests/servers.py), which can restart its server")
    server = MilvusServer.from_pidfile(pidfile)
    common = ["--model", str(model_dir), "--collection", "restarted", "--uri", server.uri]
    out = run_cli("index", *common, "--label-from-folder", str(shapes_root / "photo" / "heart"))
    assert out.returncode == 0, out.stderr
    server.stop()
    try:
        server.start()
    finally:
        server.write_pidfile(pidfile)  # whatever happened, the harness stops the server that runs now
    query = str(sorted((shapes_root / "sketch" / "heart").iterdir())[0])
    out = run_cli("search", *common, "--domain", "sketch", "--top-k", "3", query)
    assert out.returncode == 0, out.stderr
    hits = json.loads(out.stdout.splitlines()[-1])["hits"]
    assert len(hits) == 3 and all(h["label"] == "heart" for h in hits)
    from clair_vec import get_backend

    with get_backend("milvus", server.uri) as be:
        assert be.drop_collection("restarted")


def test_unreachable_servers_fail_with_a_clear_error():
    from clair_vec_qdrant import QdrantClientBackend

    from clair_vec.errors import BackendUnavailableError

    with pytest.raises(BackendUnavailableError, match="cannot reach Qdrant at .http://127.0.0.1:9.*Start the server or check the address"):
        QdrantClientBackend("http://127.0.0.1:9", timeout=2)


def test_unreachable_milvus_fails_fast_with_a_clear_error():
    from clair_vec_milvus import MilvusBackend

    from clair_vec.errors import BackendUnavailableError

    with pytest.raises(BackendUnavailableError, match=r"cannot reach Milvus at 'http://127.0.0.1:9'.*\.db"):
        MilvusBackend("http://127.0.0.1:9", timeout=2)


STICKY = '''
from clair_vec.errors import BackendUnavailableError
from clair_vec.plugin import hookimpl
from clair_vec_milvus import MilvusBackend


class NeverReconnects(MilvusBackend):
    """Once its server was gone, it stays broken until it is reopened."""

    name = "milvus_sticky"
    lost = False

    def _call(self, fn, *args):
        if self.lost:
            raise BackendUnavailableError("the connection was lost")
        try:
            return super()._call(fn, *args)
        except BackendUnavailableError:
            self.lost = True
            raise


@hookimpl
def clair_vec_register_backends(register):
    register("milvus_sticky", NeverReconnects)
'''


def test_the_suite_fails_a_handle_that_stays_broken_after_its_server_came_back(milvus_lite_uri, tmp_path):
    """The promise that a handle works again when its server is back, run against a variant of
    the Milvus backend that never reconnects: it must fail, in words."""
    (tmp_path / "sticky.py").write_text(STICKY)
    (tmp_path / "test_sticky.py").write_text(
        "import pytest\nfrom clair_vec.plugin import BackendConformance\n\n\n"
        "class TestSticky(BackendConformance):\n    backend_name = 'milvus_sticky'\n\n"
        f"    @pytest.fixture\n    def backend_uri(self):\n        return {milvus_lite_uri!r}\n"
    )
    env = {**os.environ, "CLAIR_VEC_PLUGINS": "sticky", "PYTHONPATH": str(tmp_path)}
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_sticky.py", "-k", "comes_back"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 1 and "1 failed" in out.stdout, out.stdout[-3000:]
    assert "the same handle's count() raised BackendUnavailableError" in out.stdout, out.stdout[-3000:]
    assert "a handle must reconnect by itself" in out.stdout
