"""Schemathesis, driven by the service's own OpenAPI document with every check it has. Each
route, body shape and answer the document declares is exercised with generated requests, and
every answer must be what the document says: its status, content type and body schema, no 5xx,
every request the document allows accepted and every one it forbids refused.

A longer soak with fresh random requests: ``CLAIR_VEC_FUZZ_SCALE=10 pytest tests/test_service_fuzz.py``."""

from __future__ import annotations

import base64
import io
import os
from collections import Counter

import pytest
from conftest import UNSEEN

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is in the [test] extra")
from hypothesis import HealthCheck, given, settings  # noqa: E402  (after the importorskip, which brings it)
from hypothesis import strategies as st  # noqa: E402
from PIL import Image  # noqa: E402

import clair_vec  # noqa: E402
from clair_vec.retrieval.retriever import Retriever  # noqa: E402
from clair_vec.service.app import create_app  # noqa: E402


def _png(colour: tuple[int, int, int], size: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(out, format="PNG")
    return out.getvalue()


# an image field holds an image: random bytes are not one, and the document says so in words a
# generator cannot read, so the fuzzer is told what an image is
_images = st.builds(_png, st.tuples(*[st.integers(0, 255)] * 3), st.sampled_from([8, 32, 64]))
schemathesis.openapi.format("byte", _images.map(lambda b: base64.b64encode(b).decode()))
schemathesis.openapi.format("binary", _images)


@pytest.fixture(scope="module")
def app(model_dir, shapes_root, tmp_path_factory):
    uri = str(tmp_path_factory.mktemp("fuzz") / "g.db")
    clair_vec.index("g", [shapes_root / "photo" / UNSEEN[0]], model=model_dir, uri=uri, label_from_folder=True, progress=False)
    r = Retriever(model_dir, uri=uri)
    app = create_app(r, "g", docs=True)
    app.state.retriever = r
    yield app
    r.close()


@pytest.fixture(scope="module")
def api(app):
    return schemathesis.openapi.from_asgi("/openapi.json", app)


#: every route of the document; a test below fails when the document holds one not listed here
ROUTES = [("POST", "/search"), ("GET", "/similar/{rid}"), ("GET", "/images/{rid}"), ("GET", "/info"), ("GET", "/labels"),
          ("GET", "/collections"), ("GET", "/healthz"), ("GET", "/readyz")]


def _texts(body) -> list[str]:
    if not isinstance(body, dict):
        return []
    text = body.get("text", [])
    texts = [text] if isinstance(text, str) else list(text)
    return texts + [p["text"] for p in body.get("parts", []) if isinstance(p, dict) and isinstance(p.get("text"), str)]


#: CLAIR_VEC_FUZZ_SCALE=N: N times the requests, with fresh random ones each run (a soak); the
#: default run is the same requests every time, so CI is reproducible
SCALE = max(1, int(os.environ.get("CLAIR_VEC_FUZZ_SCALE", "1")))
#: the routes that take input, and how many requests each gets
EXAMPLES = {"/search": 400, "/similar/{rid}": 150, "/images/{rid}": 40}


def test_the_fuzzer_covers_every_route_of_the_document(api):
    assert {(op.ok().method.upper(), op.ok().path) for op in api.get_all_operations()} == set(ROUTES)


@pytest.mark.parametrize(("method", "path", "mode"), [(m, p, "positive") for m, p in ROUTES]
                         + [(m, p, "negative") for m, p in ROUTES if p in EXAMPLES])  # only these take any input
def test_every_answer_is_what_the_document_promises(app, api, method, path, mode):
    """Positive: requests the document allows, each of which must be served; negative: requests
    it forbids, each of which must be refused with a 4xx the document declares."""
    operation = api[path][method]
    statuses: list[int] = []

    cases = operation.as_strategy(generation_mode=schemathesis.GenerationMode(mode))
    if mode == "positive":
        # a text must fit the text encoder, a limit in tokens that the document states in words
        # (JSON Schema cannot count tokens): texts that do not fit are a documented 422
        fits = app.state.retriever.text_problem
        cases = cases.filter(lambda case: not any(fits(t) for t in _texts(case.body)))
    if mode == "negative":
        # a form cannot tell an empty list from a field left out, which the fuzzer counts as a
        # violation sent; JSON can, and takes the same fields
        cases = cases.filter(lambda case: case.media_type != "multipart/form-data")

    @given(case=cases)
    @settings(max_examples=EXAMPLES.get(path, 25) * SCALE, deadline=None, suppress_health_check=list(HealthCheck),
              database=None, derandomize=SCALE == 1)  # fmt: skip
    def check(case):
        statuses.append(case.call_and_validate().status_code)

    check()
    if mode == "positive" and path == "/search":  # the fuzzer got past the door: searches ran
        assert statuses.count(200) >= 20, Counter(statuses)  # the rest: 404s for ids no record has



@pytest.mark.parametrize("weight", ["", "2", True, "abc"])
def test_a_part_weight_that_is_not_a_json_number_is_a_422(app, weight):
    """Found by the soak: a weight of "" reached float(None) and answered 500."""
    from fastapi.testclient import TestClient

    with TestClient(app) as c:
        got = c.post("/search", json={"parts": [{"text": "circle", "weight": weight}]})
    assert got.status_code == 422 and "the weight of part #0 must be a number" in got.json()["detail"], got.text
