"""`clair-vec serve`: every endpoint and every bad input, through an HTTP test client; start-up errors
in a real process. The browser test is test_browser.py, Ray Serve test_serve_ray.py."""

from __future__ import annotations

import base64
import io
import os
import shutil

import pytest
import torch
from conftest import UNSEEN, run_cli
from PIL import Image

import clair_vec
from clair_vec.retrieval.retriever import Retriever
from clair_vec.service.app import create_app

fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402


@pytest.fixture(scope="module")
def gallery(shapes_root, tmp_path_factory):
    """The unseen-class photos, copied so tests may tamper with them."""
    root = tmp_path_factory.mktemp("gallery")
    for c in UNSEEN:
        shutil.copytree(shapes_root / "photo" / c, root / c)
    return root


@pytest.fixture(scope="module")
def store(model_dir, gallery, tmp_path_factory):
    uri = str(tmp_path_factory.mktemp("store") / "g.db")
    s = clair_vec.index("gallery", [gallery], model=model_dir, uri=uri, label_from_folder=True, progress=False)
    assert s.indexed == 4 * 8
    return uri


@pytest.fixture(scope="module")
def retriever(model_dir, store):
    r = Retriever(model_dir, uri=store)
    yield r
    r.close()


@pytest.fixture(scope="module")
def client(retriever, gallery):
    return TestClient(create_app(retriever, "gallery", max_upload_bytes=200_000))


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def sketch(shapes_root) -> bytes:
    return (shapes_root / "sketch" / "heart" / "0000.png").read_bytes()


def test_health_ready_info_and_collections(client, retriever):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["count"] == 32 and ready.json()["model"] == retriever.model.model_id
    info = client.get("/info").json()
    assert info["domains"] == ["clipart", "photo", "sketch"] and info["gallery_domain"] == "photo"
    assert info["query_domains"] == ["clipart", "sketch"]
    assert info["cpu_threads"] == torch.get_num_threads()
    assert client.get("/collections").json() == {"collections": ["gallery"], "serving": "gallery", "backend": "milvus"}


def test_search_multipart_and_json_answer_the_same_hits_as_the_library(client, retriever, sketch, shapes_root):
    r = client.post("/search", files={"image": ("q.png", sketch, "image/png")}, data={"domain": "sketch", "top_k": "5"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["hits"]) == 5 and body["took_ms"] > 0
    hit = body["hits"][0]
    assert {"id", "score", "path", "label", "domain", "image_url"} <= set(hit) and "vector" not in hit
    assert hit["image_url"] == f"images/{hit['id']}"
    expected = retriever.search("gallery", [shapes_root / "sketch" / "heart" / "0000.png"], domain="sketch", top_k=5)[0]
    assert [h["id"] for h in body["hits"]] == [h.id for h in expected]
    as_json = client.post("/search", json={"image": base64.b64encode(sketch).decode(), "domain": "sketch", "top_k": 5})
    assert [h["id"] for h in as_json.json()["hits"]] == [h.id for h in expected]
    data_url = "data:image/png;base64," + base64.b64encode(sketch).decode()
    assert client.post("/search", json={"image": data_url, "domain": "sketch"}).json()["hits"][0]["id"] == expected[0].id
    assert len(client.post("/search", json={"image": data_url, "domain": "sketch"}).json()["hits"]) == 10  # default top_k


def test_label_filters(client, sketch):
    r = client.post("/search", files={"image": ("q.png", sketch)}, data={"domain": "sketch", "top_k": "50", "label": ["arrow", "heart"]})
    labels = [h["label"] for h in r.json()["hits"]]
    assert len(labels) == 16 and set(labels) == {"arrow", "heart"}
    r = client.post("/search", json={"image": base64.b64encode(sketch).decode(), "domain": "sketch", "label": "arrow", "top_k": 50})
    assert {h["label"] for h in r.json()["hits"]} == {"arrow"}


@pytest.mark.parametrize(
    ("kwargs", "status", "message"),
    [
        ({"files": {"image": ("q.txt", b"hello, not an image")}, "data": {"domain": "sketch"}}, 400, "not an image"),
        ({"files": {"image": ("q.png", b"")}, "data": {"domain": "sketch"}}, 400, "empty"),
        ({"files": {"image": ("big.png", b"\0" * 300_000)}, "data": {"domain": "sketch"}}, 413, "limit is 0.2 MiB"),
        ({"files": {"image": ("q.png", "SKETCH")}, "data": {"domain": "x-ray"}}, 422, "unknown domain 'x-ray'.*'clipart', 'photo', 'sketch'"),
        ({"files": {"image": ("q.png", "SKETCH")}, "data": {}}, 422, "domain is required"),
        ({"files": {"image": ("q.png", "SKETCH")}, "data": {"domain": "sketch", "top_k": "0"}}, 422, "top_k must be an integer from 1 to 200, got 0"),
        ({"files": {"image": ("q.png", "SKETCH")}, "data": {"domain": "sketch", "top_k": "1000"}}, 422, "from 1 to 200, got 1000"),
        ({"files": {"image": ("q.png", "SKETCH")}, "data": {"domain": "sketch", "top_k": "ten"}}, 422, "got 'ten'"),
        ({"data": {"domain": "sketch", "image": "not a file"}}, 400, "'image' must be a file"),
        ({"json": {"image": "!!!notbase64", "domain": "sketch"}}, 400, "not valid base64"),
        ({"json": {"domain": "sketch"}}, 422, "the query is empty: give an image, a text or a stored id"),
        ({"json": {"image": "SKETCH64", "domain": "sketch", "label": 3}}, 422, '"label" must be'),
        ({"content": b"raw bytes", "headers": {"content-type": "image/png"}}, 415, "multipart/form-data"),
    ],
)
def test_bad_input_gets_a_clear_error_never_a_traceback(client, sketch, kwargs, status, message):
    import re

    if "files" in kwargs and kwargs["files"]["image"][1] == "SKETCH":
        kwargs = {**kwargs, "files": {"image": ("q.png", sketch)}}
    if "json" in kwargs and kwargs["json"].get("image") == "SKETCH64":
        kwargs = {**kwargs, "json": {**kwargs["json"], "image": base64.b64encode(sketch).decode()}}
    r = client.post("/search", **kwargs)
    assert r.status_code == status, r.text
    assert re.search(message, r.json()["detail"]), r.json()
    assert "Traceback" not in r.text


def test_oversized_body_is_refused_before_it_is_read(client):
    r = client.post("/search", content=b"x" * 400_000, headers={"content-type": "multipart/form-data; boundary=x"})
    assert r.status_code == 413 and "MiB" in r.json()["detail"]


def test_thumbnails_serve_only_the_indexed_bytes(client, gallery, tmp_path):
    hits = client.post("/search", files={"image": ("q.png", png(Image.new("RGB", (64, 64), "white")))},
                       data={"domain": "sketch", "top_k": "32"}).json()["hits"]  # fmt: skip
    first = hits[0]
    r = client.get(f"/{first['image_url']}")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(r.content)).size[0] <= 160
    assert Image.open(io.BytesIO(client.get(f"/{first['image_url']}?size=64").content)).size[0] <= 64
    assert client.get(f"/{first['image_url']}?size=99999").status_code == 422
    # ids never reach the file system: traversal, absolute paths and unknown ids are all just "no such record"
    for bad in ("..%2F..%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd", "%2e%2e%2f%2e%2e%2fetc%2fpasswd", "0" * 32, "ZZ" * 16):
        assert client.get(f"/images/{bad}").status_code == 404, bad
    # a gallery file swapped for a symlink to a file outside the gallery: its bytes no longer match
    secret = tmp_path / "secret.png"
    Image.new("RGB", (32, 32), "red").save(secret)
    victim = gallery / hits[1]["label"] / hits[1]["path"]  # hits show file names, not server paths
    saved = tmp_path / "saved.png"
    shutil.copy(victim, saved)
    victim.unlink()
    os.symlink(secret, victim)
    try:
        r = client.get(f"/images/{hits[1]['id']}")
        assert r.status_code == 404 and "changed since it was indexed" in r.json()["detail"]
    finally:
        victim.unlink()
        shutil.copy(saved, victim)
    assert client.get(f"/images/{hits[1]['id']}").status_code == 200


def test_gallery_roots_confine_thumbnails(retriever, gallery, tmp_path, sketch):
    app = TestClient(create_app(retriever, "gallery", gallery_roots=[str(gallery / "heart")]))
    hits = app.post("/search", files={"image": ("q.png", sketch)}, data={"domain": "sketch", "top_k": "32"}).json()["hits"]
    inside = [h for h in hits if h["label"] == "heart"]
    outside = [h for h in hits if h["label"] != "heart"]
    assert app.get(f"/images/{inside[0]['id']}").status_code == 200
    r = app.get(f"/images/{outside[0]['id']}")
    assert r.status_code == 404 and "outside the served gallery" in r.json()["detail"]


def test_metrics_count_requests_by_status_and_report_latency_and_gallery_size(client, sketch):
    client.post("/search", files={"image": ("q.png", sketch)}, data={"domain": "sketch"})
    client.post("/search", files={"image": ("q.png", sketch)}, data={"domain": "nope"})
    text = client.get("/metrics").text
    assert 'clair_vec_http_requests_total{method="POST",route="/search",status="200"}' in text
    assert 'clair_vec_http_requests_total{method="POST",route="/search",status="422"}' in text
    assert 'clair_vec_http_request_seconds_bucket{le="0.5",route="/search"}' in text
    assert 'clair_vec_gallery_size{collection="gallery"} 32.0' in text


def test_the_page_is_self_contained(client):
    html = client.get("/").text
    assert "<canvas" in html and 'id="undo"' in html and 'id="clear"' in html and 'id="drop"' in html
    assert "http://" not in html and "https://" not in html and "//cdn" not in html  # nothing from outside


def test_the_backend_is_opened_once_for_many_searches(model_dir, store, sketch, monkeypatch):
    from clair_vec_milvus import MilvusBackend

    opened = []
    original = MilvusBackend.__init__

    def counting(self, *a, **kw):
        opened.append(1)
        original(self, *a, **kw)

    monkeypatch.setattr(MilvusBackend, "__init__", counting)
    with Retriever(model_dir, uri=store) as r:
        app = TestClient(create_app(r, "gallery"))
        for _ in range(5):
            assert app.post("/search", files={"image": ("q.png", sketch)}, data={"domain": "sketch"}).status_code == 200
    assert len(opened) == 1


def test_serve_refuses_to_start_without_the_collection(model_dir, gallery, tmp_path):
    store = str(tmp_path / "other.db")  # the module's store is held open by this process
    clair_vec.index("gallery", [gallery / "heart"], model=model_dir, uri=store, progress=False)
    out = run_cli("serve", "--model", str(model_dir), "--collection", "missing", "--uri", store, "--port", "9")
    assert out.returncode == 2
    assert "cannot serve: no collection 'missing'" in out.stderr and "gallery" in out.stderr and "Traceback" not in out.stderr
    out = run_cli("serve", "--model", str(model_dir), "--collection", "gallery", "--uri", store, "--replicas", "2")
    assert out.returncode == 2 and "--replicas needs --ray" in out.stderr
    out = run_cli("serve", "--model", str(model_dir), "--collection", "gallery", "--uri", store, "--ray", "--replicas", "2")
    assert out.returncode == 2 and "need a database server" in out.stderr


def test_threads_set_the_torch_threads_of_the_serving_process_and_a_bad_count_is_refused_first(model_dir, store):
    from clair_vec.service.app import open_retriever

    before = torch.get_num_threads()
    try:
        for bad in (0, -1, 1.5, True):
            with pytest.raises(ValueError, match="threads must be a whole number of at least 1"):
                open_retriever(model_dir, "gallery", backend=None, uri=store, threads=bad)
        assert torch.get_num_threads() == before
        n = 2 if before == 1 else 1  # not what the process had: the setting must be what changed it
        with open_retriever(model_dir, "gallery", backend=None, uri=store, threads=n) as r:
            assert torch.get_num_threads() == n
            assert TestClient(create_app(r, "gallery")).get("/info").json()["cpu_threads"] == n
    finally:
        torch.set_num_threads(before)
    out = run_cli("serve", "--model", str(model_dir), "--collection", "gallery", "--uri", store, "--threads", "0")
    assert out.returncode == 2 and "--threads" in out.stderr and "Traceback" not in out.stderr


def test_limits_hold_for_streamed_bodies_and_allow_base64_up_to_the_limit(client):
    def chunks():  # no Content-Length: the limit must hold as the body streams in
        for _ in range(40):
            yield b"x" * 10_000

    r = client.post("/search", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "limit is 0.2 MiB" in r.json()["detail"]
    image = png(Image.new("RGB", (1, 1), "white")) + b"\0" * 180_000  # a PNG with trailing bytes, under 200 kB
    r = client.post("/search", json={"image": base64.b64encode(image).decode(), "domain": "sketch"})
    assert r.status_code == 200, r.text  # base64 is 4/3 larger than the image: still within the limit


def test_a_database_outage_is_a_counted_503_not_a_traceback(retriever, sketch, monkeypatch):
    from clair_vec.errors import BackendUnavailableError

    app = TestClient(create_app(retriever, "gallery"), raise_server_exceptions=False)

    def down(*a, **k):
        raise BackendUnavailableError("milvus at /x still failed after 4 attempts: connection refused")

    monkeypatch.setattr(retriever.backend, "search", down)
    r = app.post("/search", files={"image": ("q.png", sketch)}, data={"domain": "sketch"})
    assert r.status_code == 503 and "does not answer" in r.json()["detail"] and "Traceback" not in r.text
    assert r.headers["retry-after"] == "5"
    monkeypatch.setattr(retriever.backend, "count", down)
    assert app.get("/readyz").status_code == 503
    text = app.get("/metrics").text
    assert 'clair_vec_http_requests_total{method="POST",route="/search",status="503"} 1.0' in text
    assert 'route="/readyz",status="503"' in text
