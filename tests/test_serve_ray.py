"""The search app on Ray Serve: two replicas on a local Ray, against the Milvus server that
`make test` starts, answer exactly what the single-process service answers."""

from __future__ import annotations

import os

import httpx
import pytest
from conftest import UNSEEN
from servers import free_port

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def server_uri():
    uri = os.environ.get("MILVUS_URI") or os.environ.get("MILVUS_LITE_URI")
    if not uri:
        pytest.skip("replicas need a database server: set MILVUS_URI (run through `make test`, which starts one)")
    return uri


def test_two_replicas_answer_like_the_single_process_service(server_uri, model_dir, shapes_root):
    import uuid

    from fastapi.testclient import TestClient
    from ray import serve

    from clair_vec.retriever import Retriever
    from clair_vec.serve_ray import run
    from clair_vec.service import create_app

    name = f"served_{uuid.uuid4().hex[:8]}"
    with Retriever(model_dir, uri=server_uri) as r:
        r.index(name, [shapes_root / "photo" / c for c in UNSEEN], label_from_folder=True, progress=False)
        local = TestClient(create_app(r, name))
        queries = [(shapes_root / "sketch" / c / "0001.png").read_bytes() for c in UNSEEN]
        expected = [local.post("/search", files={"image": ("q.png", q)}, data={"domain": "sketch", "top_k": "8"}).json()["hits"]
                    for q in queries]  # fmt: skip
    port = free_port()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        run(model_dir, name, backend="milvus", uri=server_uri, host="127.0.0.1", port=port, replicas=2, blocking=False,
            gallery_roots=None, max_upload_bytes=10 * 2**20)  # fmt: skip
        status = serve.status().applications["clair_vec"]
        assert status.status == "RUNNING"
        deployment = next(iter(status.deployments.values()))
        assert deployment.replica_states.get("RUNNING") == 2
        url = f"http://127.0.0.1:{port}"
        served_by = set()
        with httpx.Client(timeout=60) as client:
            assert client.get(f"{url}/readyz").json()["count"] == 32
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
        assert len(served_by) == 2  # 16 requests over two replicas: both took some (all on one: p = 2**-15)
    finally:
        serve.shutdown()
        ray.shutdown()
        with Retriever(model_dir, uri=server_uri) as r:
            r.backend.drop_collection(name)
