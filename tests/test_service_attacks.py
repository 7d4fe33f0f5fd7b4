"""What an attacker or an unlucky client sends the service, and what it must answer: no oracle for
the database password, no database address in an answer, a thumbnail only of what is on disk now,
HTTP's conventions (HEAD, Allow, media types, security headers), Host names a rebound DNS name
cannot pass, image formats and sizes the decoder is allowed to take, and decoding that cannot
take the host's memory. In-process through the ASGI app (Starlette's TestClient)."""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import pytest
from conftest import UNSEEN
from fastapi.testclient import TestClient
from PIL import Image

import clair_vec
from clair_vec.errors import BackendUnavailableError
from clair_vec.retrieval.retriever import Retriever
from clair_vec.service.app import create_app
from clair_vec.store.redaction import register_secret

PASSWORD = "Guessable-Pw-81c2e"


@pytest.fixture(scope="module")
def gallery(model_dir, shapes_root, tmp_path_factory):
    """A gallery indexed from copies of its photos, so a test may replace or delete one."""
    root = tmp_path_factory.mktemp("attack")
    photos = root / "photos"
    for c in UNSEEN[:2]:
        shutil.copytree(shapes_root / "photo" / c, photos / c)
    uri = str(root / "g.db")
    clair_vec.index("g", [photos], model=model_dir, uri=uri, label_from_folder=True, progress=False)
    return uri, photos


@pytest.fixture(scope="module")
def retriever(model_dir, gallery):
    r = Retriever(model_dir, uri=gallery[0])
    yield r
    r.close()


@pytest.fixture
def client(retriever):
    with TestClient(create_app(retriever, "g")) as c:
        yield c


def png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def sketch(shapes_root) -> bytes:
    return (shapes_root / "sketch" / UNSEEN[0] / "0000.png").read_bytes()


def test_an_id_that_is_the_database_password_is_answered_like_any_other(client):
    register_secret(PASSWORD)  # as a backend does with the password of its URI
    guess, other = client.get(f"/similar/{PASSWORD}"), client.get("/similar/Another-Guess-0000")
    assert guess.status_code == other.status_code and guess.status_code in (404, 422)
    assert guess.json()["detail"].replace(PASSWORD, "X") == other.json()["detail"].replace("Another-Guess-0000", "X")
    assert "***" not in guess.text


def test_a_database_outage_answer_names_neither_the_address_nor_the_driver(retriever, client, monkeypatch, shapes_root):
    def down(*_a, **_k):
        raise BackendUnavailableError("cannot reach milvus at http://***@10.77.0.9:19530: _InactiveRpcError(StatusCode.UNAVAILABLE)")

    monkeypatch.setattr(retriever, "count", down)
    monkeypatch.setattr(retriever, "run", down)
    ready = client.get("/readyz")
    found = client.post("/search", files={"image": ("q.png", sketch(shapes_root), "image/png")}, data={"domain": "sketch"})
    for answer in (ready, found):
        assert answer.status_code == 503 and answer.headers["retry-after"] == "5"
        for word in ("10.77.0.9", "19530", "InactiveRpcError", "BackendUnavailableError", "milvus at"):
            assert word not in answer.text, answer.text
        assert "log" in answer.json()["detail"]


def test_a_thumbnail_is_what_is_on_disk_now(client, gallery):
    from clair_vec.store.ids import content_digest, record_id

    _, photos = gallery
    path = sorted((photos / UNSEEN[0]).glob("*.png"))[0]
    original = path.read_bytes()
    rid = record_id("photo", content_digest(original))
    assert client.get(f"/images/{rid}").status_code == 200
    path.unlink()
    assert client.get(f"/images/{rid}").status_code == 404  # the cache must not answer for a deleted file
    path.write_bytes(png(Image.new("RGB", (64, 64), (200, 10, 10))))  # another picture under the same name
    assert client.get(f"/images/{rid}").status_code == 404
    path.write_bytes(original)
    answer = client.get(f"/images/{rid}")
    assert answer.status_code == 200 and answer.headers["cache-control"] == "no-cache"


def test_http_conventions(client):
    head = client.head("/healthz")
    assert head.status_code == 200 and head.content == b""
    assert client.head("/info").status_code == 200
    wrong = client.put("/search")
    assert wrong.status_code == 405 and wrong.headers["allow"] == "POST"
    page = client.get("/")
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"] and page.headers["x-frame-options"] == "DENY"
    for answer in (page, head, wrong, client.get("/info")):
        assert answer.headers["x-content-type-options"] == "nosniff"
    assert 'method="HEAD",route="/healthz"' in client.get("/metrics").text  # counted as what it was


def test_media_types_are_read_as_rfc_9110_says(client):
    body = json.dumps({"text": [UNSEEN[0]], "top_k": 2})
    assert client.post("/search", content=body, headers={"content-type": "APPLICATION/JSON; charset=UTF-8"}).status_code == 200
    assert client.post("/search", content=body, headers={"content-type": "application/jsonx"}).status_code == 415
    bare = client.post("/search", content=body, headers={"content-type": ""})
    assert bare.status_code == 415 and "multipart/form-data" in bare.json()["detail"]


def test_a_number_with_thousands_of_digits_is_a_plain_422(client):
    digits = "9" * 5000
    for answer in (client.post("/search", content=f'{{"text": "a", "top_k": {digits}}}', headers={"content-type": "application/json"}),
                   client.post("/search", data={"text": "a", "top_k": digits}),
                   client.get(f"/similar/{'0' * 32}?top_k={digits}")):  # fmt: skip
        assert answer.status_code == 422, answer.text
        assert "set_int_max_str_digits" not in answer.text and digits not in answer.text and "top_k" in answer.text or "digits" in answer.text


def test_a_rebound_host_name_is_refused_on_loopback(retriever):
    from clair_vec.service.security import default_allowed_hosts

    app = create_app(retriever, "g", allowed_hosts=default_allowed_hosts("127.0.0.1"))
    with TestClient(app, base_url="http://127.0.0.1:8601") as c:
        assert c.get("/info").status_code == 200
        assert c.get("/info", headers={"host": "localhost:8601"}).status_code == 200
        for path in ("/info", "/images/" + "0" * 32):
            evil = c.get(path, headers={"host": "evil.example:8601", "origin": "http://evil.example:8601"})
            assert evil.status_code == 400 and "--allowed-host" in evil.json()["detail"]
        assert c.get("/info", headers={"host": "LocalHost.:8601"}).status_code == 200  # case and a trailing dot
    assert default_allowed_hosts("0.0.0.0") is None and default_allowed_hosts("0.0.0.0", ("search.example",)) == ("search.example",)
    assert "localhost" in default_allowed_hosts("LOCALHOST") and "::1" in default_allowed_hosts("[::1]")
    proxied = create_app(retriever, "g", allowed_hosts=default_allowed_hosts("127.0.0.1", ("Search.Example:443",)))
    with TestClient(proxied, base_url="https://search.example") as c:
        assert c.get("/info").status_code == 200  # an --allowed-host given with a port matches its name


def _png_header(width: int, height: int) -> bytes:
    """A PNG that announces ``width`` x ``height`` pixels and holds none (no decoder ever runs)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + chunk(b"IEND", b"")


def test_an_image_over_the_pixel_limit_is_413_however_large(client):
    for side in (7000, 20000):  # under and over Pillow's own decompression-bomb refusal
        answer = client.post("/search", files={"image": ("q.png", _png_header(side, side), "image/png")}, data={"domain": "sketch"})
        assert answer.status_code == 413 and "Mpx" in answer.json()["detail"], (side, answer.text)


def test_only_the_listed_image_formats_are_opened(client, monkeypatch):
    from PIL import EpsImagePlugin

    opened = []
    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", lambda self: opened.append(1))
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    answer = client.post("/search", files={"image": ("q.eps", eps, "application/postscript")}, data={"domain": "sketch"})
    assert answer.status_code == 400 and "PNG" in answer.json()["detail"] and not opened


def test_a_png_cut_short_is_refused(client, shapes_root):
    whole = png(Image.open(io.BytesIO(sketch(shapes_root))).convert("RGB").resize((600, 600)))
    answer = client.post("/search", files={"image": ("q.png", whole[:-12], "image/png")}, data={"domain": "sketch"})
    assert answer.status_code == 400 and "truncated" in answer.json()["detail"]
    assert client.post("/search", files={"image": ("q.png", whole, "image/png")}, data={"domain": "sketch"}).status_code == 200


def test_comment_lines_of_a_labels_file_are_not_labels(tmp_path):
    from clair_vec.retrieval.vocabulary import read_labels

    f = tmp_path / "labels.txt"
    f.write_text("# animals\ncat\n  # not a label either\n\\#1 hits\nC#\n")
    assert read_labels(f) == ["cat", "#1 hits", "C#"]


def test_qdrant_edge_refuses_a_disk_margin_that_would_let_a_write_crash(tmp_path):
    from clair_vec import get_backend

    with pytest.raises(ValueError, match="at least 4"):
        get_backend("qdrant", str(tmp_path / "q"), disk_margin_mb=0)
    assert not (tmp_path / "q").exists()


MEMORY = textwrap.dedent("""
    import gc, io, os, sys, threading, time
    import numpy as np
    from PIL import Image
    from clair_vec.service.requests import decode_upload
    page = os.sysconf("SC_PAGE_SIZE")
    rss = lambda: int(open("/proc/self/statm").read().split()[1]) * page
    w, h = int(sys.argv[1]), int(sys.argv[2])  # under the 40 Mpx limit: the worst images the limits admit, 16-bit grey
    buf = io.BytesIO(); Image.fromarray((np.arange(w * h) % 65536).astype(np.uint16).reshape(h, w)).save(buf, "PNG")
    data = buf.getvalue(); gc.collect(); time.sleep(0.2)
    base = rss(); peak = [base]; done = threading.Event()
    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss()); time.sleep(0.002)
    s = threading.Thread(target=sample); s.start()
    uploads = [threading.Thread(target=decode_upload, args=(data,)) for _ in range(16)]
    [t.start() for t in uploads]; [t.join() for t in uploads]
    gc.collect(); time.sleep(0.5); done.set(); s.join()
    print((peak[0] - base) / 2**20, (rss() - base) / 2**20, len(data))
""")


@pytest.mark.parametrize(("width", "height"), [(6300, 6300), (800, 20000)], ids=["square", "long-and-thin"])
def test_sixteen_worst_case_uploads_at_once_stay_within_the_decode_budget(width, height):
    """A 400 KB PNG of 6300x6300 16-bit pixels once cost 1 GB to decode, and sixteen at once 16 GB.
    A long thin one is not reduced (its short side is what the model sees), so it is the costlier."""
    out = subprocess.run([sys.executable, "-c", MEMORY, str(width), str(height)], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "CLAIR_VEC_DECODE_BUDGET_MB": "256"})  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    peak, after, size = (float(x) for x in out.stdout.split())
    assert size < 1_000_000 and peak <= 500 and after <= 100, (peak, after)


def test_large_images_decode_reduced_and_small_ones_exactly(tmp_path):
    from clair_vec.datasets.images import DECODE_MIN_SIDE, decode_image, to_rgb

    small = Image.new("RGB", (300, 200), (1, 2, 3))
    assert decode_image(png(small), "s").size == (300, 200)
    big = decode_image(png(Image.new("RGB", (4000, 3000), (9, 120, 240))), "b")
    assert min(big.size) >= DECODE_MIN_SIDE and big.size == (667, 500) and big.getpixel((10, 10)) == (9, 120, 240)
    grey16 = Image.fromarray(__import__("numpy").full((1000, 1000), 65535, dtype="uint16"))
    assert decode_image(png(grey16), "g").getpixel((0, 0)) == to_rgb(grey16).getpixel((0, 0)) == (255, 255, 255)


def test_the_page_still_works_under_its_content_security_policy():
    """Nothing the page needs comes from elsewhere: no script, style, font or image URL but its own."""
    html = (Path(clair_vec.__file__).parent / "service" / "web" / "index.html").read_text()
    for needle in ("<script src=", "<link ", "@import", "http://", "https://"):
        assert needle not in html, needle


def test_the_openapi_document_describes_the_bodies_and_every_answer(retriever):
    """A schema-driven client or fuzzer reaches past the first example only if the document says
    what POST /search takes and that every error is {"detail": "<words>"}."""
    with TestClient(create_app(retriever, "g", docs=True)) as c:
        spec = c.get("/openapi.json").json()
        search = spec["paths"]["/search"]["post"]
        assert set(search["requestBody"]["content"]) == {"multipart/form-data", "application/json"}
        assert {"400", "404", "413", "415", "422", "503"} <= set(search["responses"])
        for path, ops in spec["paths"].items():
            for method, op in ops.items():
                for code, answer in op["responses"].items():
                    if code.startswith("4") or (code == "503" and path != "/readyz"):
                        schema = answer["content"]["application/json"]["schema"]
                        assert schema["properties"]["detail"] == {"type": "string"}, (method, path, code, schema)
        sent = c.get("/images/" + "0" * 32, params={"size": "huge"})  # FastAPI's own validation answers too
        assert sent.status_code == 422 and isinstance(sent.json()["detail"], str)
        assert "HTTPValidationError" not in json.dumps(spec)


def test_a_reduced_16_bit_image_keeps_its_exif_orientation():
    import numpy as np

    from clair_vec.datasets.images import decode_image

    im = Image.fromarray(np.full((1000, 1800), 30000, dtype=np.uint16))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to show
    out = io.BytesIO()
    im.save(out, "PNG", exif=exif.tobytes())
    assert decode_image(out.getvalue(), "sideways").size == (500, 900)  # reduced by 2, then turned upright


def test_a_skipped_promise_with_a_secret_in_its_reason_keeps_pytest_working(tmp_path):
    """A skip's report is (path, line, reason): scrubbed in place, pytest's summary and junitxml still work."""
    (tmp_path / "test_skip.py").write_text(
        "import pytest\nfrom clair_vec.plugin import register_secret\n"
        "def test_s():\n    register_secret('Skip-Planted-Pw-55')\n    pytest.skip('no server at http://admin:Skip-Planted-Pw-55@db:1')\n"
    )
    out = subprocess.run([sys.executable, "-m", "pytest", "-rs", "-p", "no:cacheprovider", "--junitxml", str(tmp_path / "j.xml"),
                          str(tmp_path / "test_skip.py")], capture_output=True, text=True, timeout=120, cwd=tmp_path)  # fmt: skip
    assert out.returncode == 0 and "1 skipped" in out.stdout, out.stdout[-2000:] + out.stderr[-2000:]
    assert "Skip-Planted-Pw-55" not in out.stdout + (tmp_path / "j.xml").read_text()


def test_a_milvus_uri_with_a_user_alone_sends_it_as_the_api_key(monkeypatch):
    """pymilvus' own rule: http://KEY@host carries an API key (Zilliz Cloud); the URI pymilvus gets
    holds no credentials, the token does."""
    import pymilvus

    from clair_vec import get_backend

    seen = {}

    class FakeClient:
        def __init__(self, uri, token="", **kw):
            seen.update(uri=uri, token=token)

        def close(self):
            pass

    monkeypatch.setattr(pymilvus, "MilvusClient", FakeClient)
    with get_backend("milvus", "https://0123456789abcdefAPIKEY@in03.example.com:19530"):
        pass
    assert seen == {"uri": "https://in03.example.com:19530", "token": "0123456789abcdefAPIKEY"}
    with get_backend("milvus", "http://root:p%40ss%3Aw0rd@db:19530"):
        pass
    assert seen == {"uri": "http://db:19530", "token": "root:p@ss:w0rd"}
