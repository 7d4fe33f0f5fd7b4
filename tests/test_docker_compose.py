"""docker/*.yml are valid compose files (`docker compose config` needs no engine)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

DOCKER = Path(__file__).resolve().parents[1] / "docker"


def compose_cli() -> list[str]:
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    pytest.skip("no compose CLI (docker compose / docker-compose); .ci/run installs Debian's docker-compose")


@pytest.mark.parametrize("name", sorted(p.name for p in DOCKER.glob("*.yml")))
def test_compose_file_validates(name):
    out = subprocess.run([*compose_cli(), "-f", str(DOCKER / name), "config", "-q"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_validation_catches_a_broken_file(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text("services:\n  x:\n    image: busybox\n    ports: 12\n")
    out = subprocess.run([*compose_cli(), "-f", str(bad), "config", "-q"], capture_output=True, text=True)
    assert out.returncode != 0


def test_server_images_are_pinned_to_the_client_versions():
    from importlib.metadata import version

    import yaml

    milvus = yaml.safe_load((DOCKER / "milvus.yml").read_text())["services"]["milvus"]["image"]
    qdrant = yaml.safe_load((DOCKER / "qdrant.yml").read_text())["services"]["qdrant"]["image"]
    assert milvus.split(":v")[1].split(".")[:1] == version("pymilvus").split(".")[:1]  # pymilvus 3.x <-> Milvus 3.x
    assert qdrant.split(":v")[1].split(".")[:2] == version("qdrant-client").split(".")[:2]  # minor versions match
