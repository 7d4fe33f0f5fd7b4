"""`clair-vec serve --ray`: two replicas against the Milvus server that `make test` starts answer
exactly what the single-process service answers; SIGTERM stops the service and every Ray process
it started. The service runs as its own process, as users run it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import httpx
import pytest
from conftest import UNSEEN
from servers import free_port

pytest.importorskip("ray")


@pytest.fixture(scope="module")
def server_uri():
    uri = os.environ.get("MILVUS_URI") or os.environ.get("MILVUS_LITE_URI")
    if not uri:
        pytest.skip("replicas need a database server: set MILVUS_URI (run through `make test`, which starts one)")
    return uri


def serve(model_dir, collection: str, uri: str, port: int, env: dict, replicas: int = 2, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "clair_vec.cli", "serve", "--ray", "--replicas", str(replicas),
                             "--model", str(model_dir), "--collection", collection, "--uri", uri, "--port", str(port), "--replica-header",
                             *extra],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # fmt: skip


def wait_ready(proc: subprocess.Popen, url: str, replicas: int, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    seen: set[str] = set()
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"clair-vec serve --ray exited with {proc.returncode}:\n{proc.stdout.read()[-4000:]}")
        try:
            r = httpx.get(f"{url}/readyz", timeout=5)
            if r.status_code == 200:
                seen.add(r.headers.get("x-served-by", ""))
                if len(seen) >= min(replicas, 1):
                    return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    proc.kill()
    pytest.fail(f"clair-vec serve --ray was not ready within {timeout:.0f} s")


def stop(proc: subprocess.Popen, timeout: float = 120) -> str:
    """SIGTERM, as a supervisor stops a service; returns what it printed."""
    proc.send_signal(signal.SIGTERM)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"clair-vec serve --ray did not stop within {timeout} s of SIGTERM:\n{out[-3000:]}")
    return out


def test_two_replicas_answer_like_the_single_process_service(ray_head, server_uri, model_dir, shapes_root):
    from fastapi.testclient import TestClient

    from clair_vec.retrieval.retriever import Retriever
    from clair_vec.service.app import create_app

    name = f"served_{uuid.uuid4().hex[:8]}"
    with Retriever(model_dir, uri=server_uri) as r:
        r.index(name, [shapes_root / "photo" / c for c in UNSEEN], label_from_folder=True, progress=False)
        local = TestClient(create_app(r, name))
        queries = [(shapes_root / "sketch" / c / "0001.png").read_bytes() for c in UNSEEN]
        expected = [local.post("/search", files={"image": ("q.png", q)}, data={"domain": "sketch", "top_k": "8"}).json()["hits"]
                    for q in queries]  # fmt: skip
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # a replica runs one torch thread unless told (Ray sets OMP_NUM_THREADS from its CPU share)
    proc = serve(model_dir, name, server_uri, port, ray_head.env, 2, "--threads", "2")
    try:
        wait_ready(proc, url, 2)
        served_by = set()
        with httpx.Client(timeout=60) as client:
            assert client.get(f"{url}/readyz").json()["count"] == 32
            assert {client.get(f"{url}/info").json()["cpu_threads"] for _ in range(8)} == {2}
            for _ in range(4):
                for q, want in zip(queries, expected, strict=True):
                    r = client.post(f"{url}/search", files={"image": ("q.png", q)}, data={"domain": "sketch", "top_k": "8"})
                    assert r.status_code == 200, r.text
                    got = r.json()["hits"]
                    assert [h["score"] for h in got] == pytest.approx([h["score"] for h in want], abs=1e-5)
                    # the same hits; only images of equal score may trade places
                    for g, w in zip(got, want, strict=True):
                        assert g["id"] == w["id"] or g["score"] == pytest.approx(w["score"], abs=1e-6)
                    served_by.add(r.headers["x-served-by"])
            bad = client.post(f"{url}/search", files={"image": ("q.png", b"nope")}, data={"domain": "sketch"})
            assert bad.status_code == 400 and "not an image" in bad.json()["detail"]
        # Ray Serve routes to the replica with the shorter queue: one-at-a-time requests may all land
        # on one; 32 at once cannot (a replica takes at most 5 at a time by default)
        from concurrent.futures import ThreadPoolExecutor

        def post(q: bytes) -> str:
            with httpx.Client(timeout=120) as c:
                r = c.post(f"{url}/search", files={"image": ("q.png", q)}, data={"domain": "sketch", "top_k": "8"})
                assert r.status_code == 200, r.text
                return r.headers["x-served-by"]

        with ThreadPoolExecutor(32) as pool:
            served_by |= set(pool.map(post, queries * (32 // len(queries) + 1)))
        assert len(served_by) == 2, served_by
    finally:
        out = stop(proc)
        with Retriever(model_dir, uri=server_uri) as r:
            r.backend.drop_collection(name)
    assert proc.returncode == 0, out[-3000:]
    assert "Traceback" not in out


def _processes_with(marker: str) -> list[str]:
    """Processes whose environment carries ``marker`` (Ray hands its environment to all it starts)."""
    found = []
    for env in os.listdir("/proc"):
        if not env.isdigit() or int(env) == os.getpid():
            continue
        try:
            if marker.encode() in open(f"/proc/{env}/environ", "rb").read():
                found.append(open(f"/proc/{env}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")[:120])
        except OSError:
            continue
    return found


def test_sigterm_stops_the_service_and_every_ray_process_it_started(server_uri, model_dir, shapes_root, tmp_path):
    """Without RAY_ADDRESS the service starts its own local Ray; SIGTERM must leave none of it."""
    name = f"sigterm_{uuid.uuid4().hex[:8]}"
    from clair_vec.retrieval.retriever import Retriever

    with Retriever(model_dir, uri=server_uri) as r:
        r.index(name, [shapes_root / "photo" / UNSEEN[0]], label_from_folder=True, progress=False)
    marker = f"/tmp/ray-sig{os.getpid()}"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_TMPDIR"] = marker
    port = free_port()
    proc = serve(model_dir, name, server_uri, port, env, replicas=1)
    try:
        wait_ready(proc, f"http://127.0.0.1:{port}", 1)
        assert len(_processes_with(f"RAY_TMPDIR={marker}")) >= 3  # raylet, GCS, the replica, ...
        out = stop(proc)
        assert proc.returncode == 0 and "Traceback" not in out, out[-3000:]
        deadline = time.monotonic() + 30
        while (left := _processes_with(f"RAY_TMPDIR={marker}")) and time.monotonic() < deadline:
            time.sleep(1)
        assert left == [], f"Ray processes outlived the service: {left}"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        with Retriever(model_dir, uri=server_uri) as r:
            r.backend.drop_collection(name)
