"""Approximate indexes: Qdrant Edge builds its graph when asked, and the ANN benchmark's own
arithmetic (the exact answer it scores recall against, the galleries it draws)."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from clair_vec.benchmarks import ann
from clair_vec.store.backend import CollectionInfo, Record
from clair_vec.store.plugins import get_backend

pytest.importorskip("qdrant_edge")


def _fill(be, vectors):
    be.create_collection(CollectionInfo("g", vectors.shape[1], "m"))
    be.upsert("g", [Record(f"{i:08x}", v, {"domain": "photo", "label": "", "path": ""}) for i, v in enumerate(vectors)])
    be.flush("g")


def _indexed(be) -> int:
    return be._shard("g").info().indexed_vectors_count


def test_qdrant_edge_builds_its_graph_at_flush_past_the_threshold_and_a_new_handle_finds_it(tmp_path):
    gallery, queries = ann.clustered(3000, 64, 30, 1.0, seed=0)
    uri = str(tmp_path / "q")
    be = get_backend("qdrant", uri, index_threshold=5000, full_scan_threshold_kb=1)  # searches walk the graph once built
    try:
        _fill(be, gallery)
        assert _indexed(be) == 0  # below the threshold: flush only seals, search scans
    finally:
        be.close()
    be = get_backend("qdrant", uri, index_threshold=1000, hnsw_ef=64)
    try:
        be.flush("g")
        assert _indexed(be) == 3000
        exact = ann.exact_top(gallery, queries, 10)
        hits = be.search("g", queries, top_k=10)
        recall = np.mean([len({int(h.id, 16) for h in row} & set(ex.tolist())) / 10 for row, ex in zip(hits, exact, strict=True)])
        assert recall >= 0.9
    finally:
        be.close()
    be = get_backend("qdrant", uri)  # a handle with the default options reads the graph another one built
    try:
        assert _indexed(be) == 3000 and be.count("g") == 3000
    finally:
        be.close()


@pytest.mark.parametrize("option, value", [("index_threshold", -1), ("hnsw_m", 0), ("hnsw_ef", "64"), ("hnsw_ef_construct", True)])
def test_qdrant_edge_refuses_an_index_option_that_is_no_count(tmp_path, option, value):
    with pytest.raises(ValueError, match=option):
        get_backend("qdrant", str(tmp_path / "q"), **{option: value})


def test_milvus_lite_refuses_an_index_type_it_cannot_build_before_a_collection_exists(tmp_path):
    """Lite took index_type=BOGUS at creation and failed only in its background build: `reindex`
    exited 0 with a collection no search could use."""
    uri = str(tmp_path / "s.db")
    with pytest.raises(ValueError, match=r"index_type 'BOGUS' is not one Milvus Lite builds; use one of FLAT, BRUTE_FORCE, AUTOINDEX, HNSW"):
        get_backend("milvus", uri, index_type="BOGUS")
    for bad in ("abc", -1, 0, True):  # was "cannot reach Milvus at ...": the store was fine, the option was not
        with pytest.raises(ValueError, match="timeout must be a number of seconds > 0"):
            get_backend("milvus", uri, timeout=bad)
    be = get_backend("milvus", uri, index_type="ivf_flat")  # Milvus spells them in capitals; a user may not
    try:
        assert be.index_type == "IVF_FLAT"
    finally:
        be.close()


def test_the_exact_answer_the_benchmark_scores_against_is_numpy_s_full_sort_across_blocks():
    rng = np.random.default_rng(1)
    big = rng.normal(size=(230_000, 8)).astype(np.float32)
    queries = rng.normal(size=(6, 8)).astype(np.float32)
    big[[5, 199_999, 200_000, 229_999]] = queries[0] * 50  # the best rows sit in both blocks
    top = ann.exact_top(big, queries, 10)
    want = np.argsort(-(queries @ big.T), axis=1, kind="stable")[:, :10]
    assert set(top[0, :4].tolist()) == {5, 199_999, 200_000, 229_999}
    assert [set(r) for r in top.tolist()] == [set(r) for r in want.tolist()]


def test_the_synthetic_gallery_is_unit_vectors_in_clusters_and_queries_are_not_gallery_rows():
    gallery, queries = ann.clustered(2000, 48, 10, 1.0, seed=0)
    assert gallery.shape == (2000, 48) and queries.shape == (200, 48)
    assert np.allclose(np.linalg.norm(gallery, axis=1), 1, atol=1e-5)
    nearest = (queries @ gallery.T).max(axis=1)
    assert 0.3 < float(np.median(nearest)) < 0.999  # close to a cluster, never a copy of a row


def test_the_benchmark_reports_exact_recall_for_exact_search_on_qdrant_edge(tmp_path, capsys):
    out = tmp_path / "rows.jsonl"
    assert ann.main(["--vectors", "6000", "--dim", "512", "--clusters", "30", "--engines", "qdrant-edge", "--ef", "32,256",
                     "--out", str(out)]) == 0  # fmt: skip
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    exact = [r for r in rows if r["index"].startswith("exact")]
    graph = [r for r in rows if r["index"].startswith("HNSW")]
    default = [r for r in rows if r["index"] == "default"]
    assert len(exact) == 1 and exact[0]["recall@10"] >= 0.999 and exact[0]["queries"] == 200
    assert len(default) == 1 and default[0]["recall@10"] >= 0.999  # below 20,000 vectors the default scans
    assert {r["search"] for r in graph} == {"ef 32", "ef 256"} and all(r["recall@10"] >= 0.9 for r in graph)
    assert "| qdrant-edge | 6,000 | HNSW m16 efc100 | ef 256 |" in capsys.readouterr().out


def test_a_slow_index_is_measured_within_the_budget_on_at_least_20_queries(tmp_path, monkeypatch):
    """A FLAT million-vector gallery on Milvus Lite answers in seconds a query: recall and QPS
    stop at the budget rather than run 200 + 200 + 400 queries."""
    be = get_backend("qdrant", str(tmp_path / "q"))
    calls = []
    real = be.search

    def slow(name, vectors, top_k):
        calls.append(len(vectors))
        time.sleep(0.01)
        return real(name, vectors, top_k=top_k)

    monkeypatch.setattr(ann, "get_backend", lambda *a, **k: be)
    monkeypatch.setattr(be, "search", slow)
    gallery, queries = ann.clustered(500, 32, 5, 1.0, seed=0)
    rows = ann.run_variant(ann.Variant("qdrant-edge", "exact", {}), "unused", gallery, queries,
                           ann.exact_top(gallery, queries, 10), 10, budget_s=0.05)  # fmt: skip
    assert rows[0]["queries"] == 20 and rows[0]["recall@10"] >= 0.999
    # warm-up, 20 for recall, then each QPS run stops at its deadline: 1 + 20 + 200 + 400 without a budget
    assert len(calls) < 1 + 20 + 5 + 16 * 5


def _milvus_fill(be, vectors, name="g"):
    be.create_collection(CollectionInfo(name, vectors.shape[1], "m"))
    be.upsert(name, [Record(f"{i:08x}", v, {"domain": "photo", "label": "", "path": ""}) for i, v in enumerate(vectors)])
    be.flush(name)


def test_milvus_lite_turns_a_default_collection_into_hnsw_at_the_flush_that_reaches_the_threshold(tmp_path):
    pytest.importorskip("milvus_lite")
    gallery, queries = ann.clustered(1500, 32, 15, 1.0, seed=0)
    uri = str(tmp_path / "m.db")
    with get_backend("milvus", uri, index_threshold=1000) as be:
        _milvus_fill(be, gallery[:900])
        assert be.client.describe_index("g", "vector")["index_type"] == "FLAT"  # below: exact
        be.upsert("g", [Record(f"{i:08x}", v, {"domain": "photo", "label": "", "path": ""}) for i, v in enumerate(gallery[900:], 900)])
        be.flush("g")
        assert be.client.describe_index("g", "vector")["index_type"] == "HNSW"
    with get_backend("milvus", uri, index_type="FLAT", index_threshold=1000) as be:  # asked for FLAT: kept
        _milvus_fill(be, gallery, name="asked")
        assert be.client.describe_index("asked", "vector")["index_type"] == "FLAT"
    with get_backend("milvus", uri) as be:  # a new handle searches the grown index, every record there
        assert be.count("g") == 1500
        exact = ann.exact_top(gallery, queries, 10)
        hits = be.search("g", queries, top_k=10)
        assert np.mean([len({int(h.id, 16) for h in row} & set(ex.tolist())) / 10 for row, ex in zip(hits, exact, strict=True)]) >= 0.95
        assert len(be.search("g", queries[:1], top_k=1500)[0]) == 1500  # ef follows top_k
    with pytest.raises(ValueError, match="index_threshold"):
        get_backend("milvus", uri, index_threshold=-5)


def test_milvus_keeps_an_explicit_flat_and_collections_made_before_the_automatic_index(tmp_path):
    pytest.importorskip("milvus_lite")
    gallery, _ = ann.clustered(1200, 16, 12, 1.0, seed=2)
    uri = str(tmp_path / "m.db")
    with get_backend("milvus", uri, index_type="FLAT") as be:
        _milvus_fill(be, gallery, name="chosen")
    with get_backend("milvus", uri, index_threshold=1000) as be:  # a later run with the default options
        be.flush("chosen")
        assert be.client.describe_index("chosen", "vector")["index_type"] == "FLAT"
    for bad in ({"index_params": 16}, {"search_params": [1]}):
        with pytest.raises(ValueError, match="must be a JSON object"):
            get_backend("milvus", uri, **bad)


def test_a_failed_milvus_re_index_leaves_the_collection_searchable_and_says_what_failed(tmp_path, monkeypatch):
    pytest.importorskip("milvus_lite")
    from clair_vec_milvus.schema import MilvusCollections

    gallery, queries = ann.clustered(1200, 16, 12, 1.0, seed=3)
    uri = str(tmp_path / "m.db")
    real = MilvusCollections._make_index

    def refuse_hnsw(self, name, kind, params):
        if kind == "HNSW":
            raise OSError("No space left on device")
        return real(self, name, kind, params)

    monkeypatch.setattr(MilvusCollections, "_make_index", refuse_hnsw)
    with get_backend("milvus", uri, index_threshold=1000) as be:
        with pytest.raises(Exception, match="is full .*no space left on device"):  # the first failure, as DiskFullError
            _milvus_fill(be, gallery)
    monkeypatch.undo()
    with get_backend("milvus", uri) as be:  # a new process's view: loaded, exact, every record
        assert be.client.describe_index("g", "vector")["index_type"] == "FLAT"
        assert be.count("g") == 1200 and len(be.search("g", queries[:1], top_k=1200)[0]) == 1200


def test_qdrant_edge_leaves_the_graph_for_later_when_the_disk_cannot_hold_it(tmp_path, monkeypatch, caplog):
    from clair_vec.store import disk_space

    gallery, queries = ann.clustered(3000, 64, 30, 1.0, seed=4)
    uri = str(tmp_path / "q")
    be = get_backend("qdrant", uri, index_threshold=1000)
    try:
        be.create_collection(CollectionInfo("g", 64, "m"))
        be.upsert("g", [Record(f"{i:08x}", v, {"domain": "photo", "label": "", "path": ""}) for i, v in enumerate(gallery)])
        monkeypatch.setattr(disk_space, "free_bytes", lambda path: 65 * 2**20)  # the margin, and not the graph
        be.flush("g")
        assert _indexed(be) == 0 and "not building the HNSW graph of 'g' now" in caplog.text
        assert be.count("g") == 3000 and len(be.search("g", queries[:1], top_k=3000)[0]) == 3000
        monkeypatch.undo()
        be.flush("g")  # room again: the next flush builds it
        assert _indexed(be) == 3000
    finally:
        be.close()


def test_a_milvus_lite_collection_left_without_an_index_is_searched_and_then_grown(tmp_path):
    """kill -9 between dropping the FLAT index and creating the HNSW one leaves no index at all."""
    pytest.importorskip("milvus_lite")
    gallery, queries = ann.clustered(1200, 16, 12, 1.0, seed=5)
    uri = str(tmp_path / "m.db")
    with get_backend("milvus", uri, index_threshold=5000) as be:
        _milvus_fill(be, gallery)
        be.client.release_collection("g")
        be.client.drop_index("g", "vector")
    with get_backend("milvus", uri, index_threshold=1000) as be:
        assert len(be.search("g", queries[:1], top_k=1200)[0]) == 1200  # loads and scans
        be.flush("g")
        assert be.client.describe_index("g", "vector")["index_type"] == "HNSW"
        assert be.count("g") == 1200



def test_the_benchmark_measures_a_collection_s_own_vectors_holding_200_out_as_queries(tmp_path, capsys):
    gallery, _ = ann.clustered(700, 32, 7, 1.0, seed=6)
    source = str(tmp_path / "source")
    with get_backend("qdrant", source) as be:
        _fill(be, gallery)
    out = tmp_path / "rows.jsonl"
    assert ann.main(["--from-collection", "g", "--from-backend", "qdrant", "--from-uri", source, "--engines", "qdrant-edge",
                     "--only", "exact,default", "--out", str(out)]) == 0  # fmt: skip
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["index"] for r in rows] == ["default", "exact (no graph)"]
    assert all(r["n"] == 500 and r["queries"] == 200 and r["recall@10"] >= 0.999 for r in rows)
    with get_backend("qdrant", source) as be:  # the source is read, never changed
        assert be.count("g") == 700
    with pytest.raises(SystemExit, match="holds 700 vectors: more than the 700 held out"):
        ann.from_collection("qdrant", source, "g", 700, seed=0)


def test_a_milvus_lite_gallery_too_large_for_lite_is_told_once_where_to_go(tmp_path, monkeypatch, caplog):
    pytest.importorskip("milvus_lite")
    from clair_vec_milvus import writes

    monkeypatch.setattr(writes, "LITE_LARGE_ROWS", 100)
    gallery, _ = ann.clustered(150, 16, 3, 1.0, seed=7)
    with get_backend("milvus", str(tmp_path / "m.db")) as be:
        _milvus_fill(be, gallery[:90])
        assert "Milvus Lite collection" not in caplog.text  # below: nothing said
        be.upsert("g", [Record(f"{i:08x}", v, {"domain": "photo", "label": "", "path": ""}) for i, v in enumerate(gallery[90:], 90)])
        be.flush("g")
        be.flush("g")
    said = [r.getMessage() for r in caplog.records if "Milvus Lite collection 'g' holds 150 vectors" in r.getMessage()]
    assert len(said) == 1 and "use Qdrant Edge (--backend qdrant) or a Milvus server" in said[0]


def test_a_server_flush_waits_for_the_index_and_gives_up_with_a_warning(tmp_path, monkeypatch, caplog):
    """What a server's describe_index says, played to a Lite handle that takes itself for a server:
    pending rows are waited for; a failed build or a build past index_timeout is a warning and the
    flush returns (the records are there); a transient error while asking is "not yet"."""
    pytest.importorskip("milvus_lite")
    from pymilvus.exceptions import MilvusException

    gallery, _ = ann.clustered(50, 16, 2, 1.0, seed=8)
    with get_backend("milvus", str(tmp_path / "m.db"), index_timeout=0.2) as be:
        _milvus_fill(be, gallery)
        be.lite = False
        answers = iter([MilvusException(message="rpc deadline exceeded"), {"pending_index_rows": 50}, {"pending_index_rows": 0}])

        def told(name, field):
            answer = next(answers)
            if isinstance(answer, Exception):
                raise answer
            return answer

        monkeypatch.setattr(be.client, "describe_index", told)
        monkeypatch.setattr(time, "sleep", lambda s: None)
        be.flush("g")
        assert next(answers, "all asked") == "all asked" and "not indexed" not in caplog.text
        monkeypatch.setattr(be.client, "describe_index", lambda name, field: {"state": "Failed", "index_state_fail_reason": "disk"})
        be.flush("g")
        assert "failed to index 'g'" in caplog.text and "(disk)" in caplog.text
        monkeypatch.setattr(be.client, "describe_index", lambda name, field: {"pending_index_rows": 7})
        be.flush("g")  # never done: gives up at index_timeout
        assert "rows still not indexed after 0 s" in caplog.text
    for bad in (None, "soon", -1):
        with pytest.raises(ValueError, match="index_timeout must be a number of seconds >= 0"):
            get_backend("milvus", str(tmp_path / "m.db"), index_timeout=bad)
