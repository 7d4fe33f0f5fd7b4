"""Queries people ask: text, an image and text together, more / less like a stored hit, paging,
score cut-offs, query expansion, through the library on every built-in backend, the CLI as
separate processes, and HTTP. Rankings are checked against brute-force cosine over the stored
vectors, so "the right answer" is computed, not assumed."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
from conftest import UNSEEN, run_cli
from fastapi.testclient import TestClient

from clair_vec.datasets.images import decode_image
from clair_vec.errors import CapabilityError, RecordNotFoundError
from clair_vec.retrieval.queries import Part, Query, QueryError
from clair_vec.retrieval.retriever import Retriever
from clair_vec.service.app import create_app
from clair_vec.store import plugins
from clair_vec.store.backend import Backend


def _stores(tmp_path_factory) -> list[tuple[str, str]]:
    d = tmp_path_factory.mktemp("queries")
    return [("milvus", str(d / "g.db")), ("qdrant", str(d / "edge")), ("qdrant", f"local:{d / 'local'}"), ("numpy", str(d / "np"))]


@pytest.fixture(scope="module", params=["milvus", "qdrant", "qdrant-local", "numpy"])
def opened(request, model_dir, shapes_root, tmp_path_factory):
    """A retriever on a gallery of the unseen-class photos, one per built-in backend."""
    import os

    os.environ["CLAIR_VEC_PLUGINS"] = "clair_vec_numpy"
    plugins.reset()
    backend, uri = dict(zip(["milvus", "qdrant", "qdrant-local", "numpy"], _stores(tmp_path_factory), strict=True))[request.param]
    r = Retriever(model_dir, backend=backend, uri=uri)
    r.index("g", [shapes_root / "photo" / c for c in UNSEEN], label_from_folder=True, progress=False)
    ids = [rid for rid, _ in r.backend.records("g")]
    stored = r.backend.vectors("g", ids)
    yield r, ids, np.stack([stored[i] for i in ids])
    r.close()
    os.environ.pop("CLAIR_VEC_PLUGINS", None)
    plugins.reset()


def brute(query: np.ndarray, ids: list[str], vectors: np.ndarray, k: int) -> list[str]:
    sims = vectors @ (query / np.linalg.norm(query))
    return [ids[i] for i in np.argsort(-sims, kind="stable")[:k]]


def same_ranking(hits, expected: list[str], vectors, ids, query) -> None:
    """The engine's ranking equals brute force, up to the order of hits whose scores tie."""
    got = [h.id for h in hits]
    score = dict(zip(ids, vectors @ (query / np.linalg.norm(query)), strict=True))
    assert [round(float(score[i]), 4) for i in got] == [round(float(score[i]), 4) for i in expected]
    np.testing.assert_allclose([h.score for h in hits], [score[i] for i in got], atol=1e-4)


def test_the_one_image_query_keeps_its_exact_results(opened, shapes_root):
    r, _, _ = opened
    sketch = shapes_root / "sketch" / "heart" / "0003.png"
    old = r.search("g", [sketch], domain="sketch", top_k=7)[0]
    new = r.query("g", Query.of(Part.image(sketch, "sketch"), top_k=7))
    assert [h.id for h in new] == [h.id for h in old]
    # bit for bit where the engine is deterministic (qdrant-client's local mode is not, between calls)
    assert [h.score for h in new] == pytest.approx([h.score for h in old], abs=1e-6)


def test_text_image_and_stored_ids_combine_as_a_normalised_weighted_sum(opened, shapes_root):
    r, ids, vectors = opened
    sketch = shapes_root / "sketch" / "arrow" / "0001.png"
    e_img = r.model.embed_images([decode_image(sketch.read_bytes(), str(sketch))], "sketch")[0]
    e_txt = r.text_vectors(["arrow"])[0]
    liked, unliked = ids[3], ids[9]
    cases = [
        (Query.of(Part.text("arrow"), top_k=10), e_txt),
        (Query.of(Part.image(sketch, "sketch"), Part.text("arrow", 0.5), top_k=10), e_img + 0.5 * e_txt),
        (Query.of(Part.image(sketch, "sketch"), Part.like(liked), Part.unlike(unliked), top_k=10),
         e_img + vectors[3] - vectors[9]),
    ]  # fmt: skip
    for query, vector in cases:
        hits = r.query("g", query)
        same_ranking(hits, brute(vector, ids, vectors, 10), vectors, ids, vector)


def test_paging_score_cut_off_and_exclusion(opened, shapes_root):
    r, ids, _ = opened
    q = Query.of(Part.image(shapes_root / "sketch" / "heart" / "0000.png", "sketch"), top_k=20)
    every = r.query("g", q)
    page = r.query("g", Query.of(*q.parts, top_k=5, offset=5))
    # records with equal scores may come back in either order (an engine breaks ties as it likes,
    # differently for another limit): compare the ranking by score, and the ids where the scores
    # leave no choice
    assert [h.score for h in page] == pytest.approx([h.score for h in every[5:10]], abs=1e-6)
    assert {h.id for h in page} <= {h.id for h in every} - {h.id for h in every[:5] if h.score > every[5].score + 1e-6}
    cut = every[6].score
    above = r.query("g", Query.of(*q.parts, top_k=20, min_score=cut))
    assert sorted(h.score for h in above) == pytest.approx(sorted(h.score for h in every if h.score >= cut), abs=1e-6)
    assert all(h.score >= cut - 1e-6 for h in above)
    similar = r.query("g", Query.of(Part.like(ids[0]), top_k=5, exclude=frozenset({ids[0]})))
    assert ids[0] not in [h.id for h in similar] and len(similar) == 5


def test_query_expansion_re_queries_with_the_top_hits(opened, shapes_root):
    r, ids, vectors = opened
    sketch = shapes_root / "sketch" / "crescent" / "0002.png"
    first = r.query("g", Query.of(Part.image(sketch, "sketch"), top_k=10))
    expanded = r.query("g", Query.of(Part.image(sketch, "sketch"), top_k=10, rerank="aqe"))
    q = r.model.embed_images([decode_image(sketch.read_bytes(), str(sketch))], "sketch")[0]
    pos = {i: n for n, i in enumerate(ids)}
    v = q + sum(max(h.score, 0.0) ** 3 * vectors[pos[h.id]] for h in first)
    same_ranking(expanded, brute(v, ids, vectors, 10), vectors, ids, v)


def test_bad_queries_say_what_is_wrong(opened):
    r, _, _ = opened
    for query, message in [
        (Query.of(), "the query is empty"),
        (Query.of(Part.text("heart", float("nan"))), "weights must be finite numbers"),
        (Query.of(Part.text("heart", 0)), "the weight of text 'heart' is 0"),
        (Query.of(Part.unlike("0" * 32)), "only negative parts"),
        (Query.of(Part.text("   ")), "a text part must be a non-empty string"),
        (Query.of(Part.image("x.png", "x-ray")), "unknown domain 'x-ray'"),
        (Query.of(Part.like("../../etc")), "is not a record id"),
        (Query.of(Part.text("heart"), top_k=0), "top_k must be an integer >= 1"),
        (Query.of(Part.text("heart"), min_score=1.5), "min_score must be a number from -1 to 1"),
        (Query.of(Part.text("heart"), rerank="magic"), "unknown rerank 'magic'"),
        (Query.of(Part.text("word " * 200)), "tokens long; the text encoder takes"),
        (Query.of(Part.text("heart"), Part.text("heart", -1.0)), "cancel out"),
    ]:
        with pytest.raises(QueryError, match=message):
            r.query("g", query)
    with pytest.raises(RecordNotFoundError, match=f"no record {'ab' * 16} in collection 'g'"):
        r.query("g", Query.of(Part.like("ab" * 16)))


def test_a_backend_without_stored_vectors_says_so(model_dir, shapes_root, tmp_path):
    from clair_vec_numpy import NumpyBackend

    class NoVectors(NumpyBackend):  # an older plugin: written before the primitive existed
        name = "novectors"
        _vectors = Backend._vectors

    be = NoVectors(str(tmp_path / "np"))
    with Retriever(model_dir, backend=be) as r:
        r.index("g", [shapes_root / "photo" / "heart"], progress=False)
        rid = next(iter(r.backend.records("g")))[0]
        with pytest.raises(CapabilityError, match="cannot search by stored id"):
            r.query("g", Query.of(Part.like(rid)))
        assert len(r.query("g", Query.of(Part.text("heart"), top_k=3))) == 3  # text still works
    be.close()


# ---------------------------------------------------------------------- CLI, as separate processes
@pytest.fixture(scope="module")
def cli_store(model_dir, shapes_root, tmp_path_factory):
    uri = str(tmp_path_factory.mktemp("cliq") / "g.db")
    out = run_cli("index", "--model", str(model_dir), "--collection", "g", "--uri", uri, "--label-from-folder",
                  *[str(shapes_root / "photo" / c) for c in UNSEEN])  # fmt: skip
    assert out.returncode == 0, out.stderr
    return uri


def search(model_dir, uri, *args) -> list[dict]:
    out = run_cli("search", "--model", str(model_dir), "--collection", "g", "--uri", uri, *args)
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines()]


def test_cli_text_like_unlike_min_score_and_offset(model_dir, cli_store, shapes_root):
    sketch = str(shapes_root / "sketch" / "heart" / "0000.png")
    (text,) = search(model_dir, cli_store, "--text", "heart", "--top-k", "5")
    assert text["query"] == {"text": ["heart"]} and len(text["hits"]) == 5
    (image,) = search(model_dir, cli_store, "--domain", "sketch", sketch, "--top-k", "12")
    liked = image["hits"][4]["id"]
    (both,) = search(model_dir, cli_store, "--domain", "sketch", sketch, "--text", "heart", "--like", liked,
                     "--unlike", str(shapes_root / "sketch" / "arrow" / "0000.png"), "--top-k", "5")  # fmt: skip
    assert set(both["query"]) == {"images", "text", "like", "unlike"} and len(both["hits"]) == 5
    (paged,) = search(model_dir, cli_store, "--domain", "sketch", sketch, "--top-k", "4", "--offset", "4")
    # records with equal scores may come back in either order: compare the ranking by score, and
    # the ids where the scores leave no choice
    assert [h["score"] for h in paged["hits"]] == pytest.approx([h["score"] for h in image["hits"][4:8]], abs=1e-6)
    assert {h["id"] for h in paged["hits"]} <= {h["id"] for h in image["hits"]} - {h["id"] for h in image["hits"][:4]
                                                                                   if h["score"] > image["hits"][4]["score"] + 1e-6}
    # cut where the scores have a clear gap (a tiny model's near-equal scores move with float noise);
    # without one, a cut well below them all must keep all of them
    scores = [h["score"] for h in image["hits"]]
    gap = next((i for i in range(len(scores) - 1) if scores[i] - scores[i + 1] > 1e-4), None)
    cut = (scores[gap] + scores[gap + 1]) / 2 if gap is not None else scores[-1] - 0.1
    (above,) = search(model_dir, cli_store, "--domain", "sketch", sketch, "--top-k", "12", "--min-score", str(cut))
    assert len(above["hits"]) == (gap + 1 if gap is not None else len(scores)) and all(h["score"] >= cut for h in above["hits"])
    two = search(model_dir, cli_store, "--domain", "sketch", sketch, str(shapes_root / "sketch" / "arrow" / "0001.png"))
    assert [q["query"] for q in two] == [sketch, str(shapes_root / "sketch" / "arrow" / "0001.png")]  # images alone: a query each


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "nothing to search with: give query images, --text TEXT or --like ID"),
        (["--unlike", "ab" * 16], "--unlike says what to avoid"),
        (["QUERY"], "--domain is required with query images"),
        (["--like", "ab" * 16], f"no record {'ab' * 16} in collection 'g'"),
        (["--text", "word " * 200], "tokens long; the text encoder takes"),
        (["--text", "heart", "--min-score", "3"], "min_score must be a number from -1 to 1"),
        (["--text", "heart", "--filter", "label=guitar"], "note: no record in 'g' has label 'guitar'"),
    ],
)
def test_cli_query_errors_are_one_line(model_dir, cli_store, shapes_root, args, message):
    args = [str(shapes_root / "sketch" / "heart" / "0000.png") if a == "QUERY" else a for a in args]
    out = run_cli("search", "--model", str(model_dir), "--collection", "g", "--uri", cli_store, *args)
    assert message in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert out.returncode == (0 if "note:" in message else 2)


# ---------------------------------------------------------------------- HTTP
@pytest.fixture(scope="module")
def http(model_dir, cli_store, tmp_path_factory):
    import shutil

    copy = str(tmp_path_factory.mktemp("httpq") / "g.db")
    shutil.copytree(cli_store, copy)
    r = Retriever(model_dir, uri=copy)
    with TestClient(create_app(r, "g")) as client:
        yield client, r
    r.close()


def test_http_text_parts_and_similar(http, shapes_root):
    client, r = http
    sketch = (shapes_root / "sketch" / "heart" / "0000.png").read_bytes()
    by_text = client.post("/search", json={"text": "heart", "top_k": 6}).json()["hits"]
    assert [h["id"] for h in by_text] == [h.id for h in r.query("g", Query.of(Part.text("heart"), top_k=6))]
    mixed = client.post("/search", json={"parts": [{"image": base64.b64encode(sketch).decode(), "domain": "sketch"},
                                                   {"text": "heart", "weight": 0.5}, {"id": by_text[0]["id"], "weight": -1}],
                                         "top_k": 5})  # fmt: skip
    image = decode_image(sketch, "q.png")
    expected = r.query("g", Query.of(Part.image(image, "sketch"), Part.text("heart", 0.5), Part.unlike(by_text[0]["id"]), top_k=5))
    assert mixed.status_code == 200 and [h["id"] for h in mixed.json()["hits"]] == [h.id for h in expected]
    form = client.post("/search", files={"image": ("q.png", sketch)}, data={"domain": "sketch", "text": "heart", "top_k": "3"})
    assert form.status_code == 200 and len(form.json()["hits"]) == 3
    rid = by_text[2]["id"]
    similar = client.get(f"/similar/{rid}?top_k=4").json()["hits"]
    assert rid not in [h["id"] for h in similar] and len(similar) == 4
    assert [h["id"] for h in similar] == [h.id for h in r.query("g", Query.of(Part.like(rid), top_k=4, exclude=frozenset({rid})))]
    assert client.get(f"/similar/{'ab' * 16}").status_code == 404
    assert "is not a record id" in client.get("/similar/not-an-id").json()["detail"]
    empty = client.post("/search", json={"text": "heart", "label": "guitar"}).json()
    assert empty["hits"] == [] and empty["note"] == "no record in 'g' has label 'guitar'"
