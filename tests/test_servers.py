"""The conformance suite against real Milvus and Qdrant servers in Docker (testcontainers).

Skipped, with the reason, where no Docker engine answers (CI here has none); runs in full where
one does. Image tags are pinned to the server releases the pinned clients speak to.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from clair_vec.testing import BackendConformance

DOCKER = Path(__file__).resolve().parents[1] / "docker"


def compose_image(file: str, service: str) -> str:
    """The image tag pinned in docker/*.yml: one source of truth for users and these tests."""
    return yaml.safe_load((DOCKER / file).read_text())["services"][service]["image"]


# pymilvus 3.0.x speaks to Milvus 3.0; qdrant-client 1.20 to Qdrant 1.20 (SDK and server minors match)
MILVUS_IMAGE = compose_image("milvus.yml", "milvus")
QDRANT_IMAGE = compose_image("qdrant.yml", "qdrant")


def _docker_or_skip():
    try:
        import docker

        docker.from_env(timeout=3).ping()
    except Exception as exc:  # no socket, daemon down, permission denied
        pytest.skip(f"no Docker engine answers ({type(exc).__name__}: {exc}); server tests need one")


@pytest.fixture(scope="module")
def qdrant_url():
    _docker_or_skip()
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.waiting_utils import wait_for_logs

    with DockerContainer(QDRANT_IMAGE).with_exposed_ports(6333) as c:
        wait_for_logs(c, "Qdrant gRPC listening", timeout=120)
        yield f"http://{c.get_container_host_ip()}:{c.get_exposed_port(6333)}"


@pytest.fixture(scope="module")
def milvus_uri():
    _docker_or_skip()
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.waiting_utils import wait_for_logs

    c = (DockerContainer(MILVUS_IMAGE).with_command("milvus run standalone").with_exposed_ports(19530)
         .with_env("ETCD_USE_EMBED", "true").with_env("COMMON_STORAGETYPE", "local"))  # fmt: skip
    with c:
        wait_for_logs(c, "Proxy successfully started", timeout=300)
        yield f"http://{c.get_container_host_ip()}:{c.get_exposed_port(19530)}"


@pytest.mark.docker
class TestQdrantServer(BackendConformance):
    @pytest.fixture
    def backend_factory(self, qdrant_url, request):
        from clair_vec_qdrant import QdrantClientBackend

        yield lambda: QdrantClientBackend(qdrant_url)
        b = QdrantClientBackend(qdrant_url)
        b.drop_collection("conformance")
        b.close()


@pytest.mark.docker
class TestMilvusServer(BackendConformance):
    @pytest.fixture
    def backend_factory(self, milvus_uri):
        from clair_vec_milvus import MilvusBackend

        yield lambda: MilvusBackend(milvus_uri)
        b = MilvusBackend(milvus_uri)
        b.drop_collection("conformance")
        b.close()


def test_unreachable_servers_fail_with_a_clear_error():
    from clair_vec_qdrant import QdrantClientBackend

    from clair_vec.errors import BackendUnavailableError

    with pytest.raises(BackendUnavailableError, match="cannot reach Qdrant.*docker compose"):
        QdrantClientBackend("http://127.0.0.1:9", timeout=2)


def test_unreachable_milvus_fails_fast_with_a_clear_error():
    from clair_vec_milvus import MilvusBackend

    from clair_vec.errors import BackendUnavailableError

    with pytest.raises(BackendUnavailableError, match=r"cannot reach Milvus at 'http://127.0.0.1:9'.*\.db"):
        MilvusBackend("http://127.0.0.1:9", timeout=2)
