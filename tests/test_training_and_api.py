"""Training, checkpoints, and the index/search API on the embedded backends."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import clair_vec
from clair_vec.datasets.folders import scan_folder, zero_shot_split
from clair_vec.errors import (
    CollectionMismatchError,
    CollectionNotFoundError,
    DatasetError,
    UnknownBackendError,
    UnknownDomainError,
)
from clair_vec.method.config import ClairConfig
from clair_vec.method.model import ClairModel
from clair_vec.store.plugins import get_backend
from clair_vec.training.features import extract_features
from clair_vec.training.trainer import ClairTrainer

UNSEEN = ["hexagon", "crescent", "arrow", "heart"]


@pytest.fixture(scope="module")
def split(shapes_root):
    return zero_shot_split(scan_folder(shapes_root), unseen=UNSEEN)


@pytest.fixture(scope="module")
def trained(tiny_clip, split, tmp_path_factory):
    seen, _ = split
    feats = extract_features(tiny_clip, seen, n_views=2, progress=False)
    # every term of the objective, the ones off by default included
    cfg = ClairConfig(clip_model="clair-tiny", clip_pretrained=None, epochs=6, batch_size=48, lr=3e-3, w_instance=1.0,
                      w_cluster=1.0, w_domain=1.0, w_prompt=1.0)  # fmt: skip
    trainer = ClairTrainer(cfg, tiny_clip, seen.classes, feats, progress=False)
    history = trainer.fit()
    model = trainer.build_model()
    path = model.save(tmp_path_factory.mktemp("ckpt") / "model")
    return trainer, history, model, path, feats


def test_training_lowers_the_loss_and_uses_only_seen_classes(trained, split):
    trainer, history, model, _, feats = trained
    assert len(history) == 6
    assert history[-1].loss < history[0].loss
    assert set(history[0].terms) == {"inst_disc", "instance", "cluster", "domain", "prompt"}
    assert model.classes == sorted(set(split[0].classes)) and not set(model.classes) & set(UNSEEN)
    assert all(lbl not in UNSEEN for f in feats.values() for lbl in f.labels)
    assert model.domains == ["clipart", "photo", "sketch"] and model.pivot == "photo"


def test_checkpoint_round_trip_reproduces_embeddings(trained):
    _, _, model, path, feats = trained
    again = ClairModel.load(path)
    assert again.model_id == model.model_id
    x = feats["sketch"].clean[:7]
    torch.testing.assert_close(again.embed_features(x, "sketch"), model.embed_features(x, "sketch"))
    assert not torch.allclose(model.embed_features(x, "sketch"), model.embed_features(x, "sketch", map_domain=False))


def test_resume_from_state_continues_identically(tiny_clip, split):
    seen, _ = split
    feats = extract_features(tiny_clip, seen, n_views=2, progress=False)
    cfg = ClairConfig(clip_model="clair-tiny", clip_pretrained=None, epochs=3, batch_size=48, seed=1)
    full = ClairTrainer(cfg, tiny_clip, seen.classes, feats, progress=False)
    full.fit()
    part = ClairTrainer(cfg, tiny_clip, seen.classes, feats, progress=False)
    part.train_epoch()
    state = part.state_dict()
    resumed = ClairTrainer(cfg, tiny_clip, seen.classes, feats, progress=False)
    resumed.load_state_dict(state)
    resumed.fit()
    for a, b in zip(full.head.parameters(), resumed.head.parameters(), strict=True):
        torch.testing.assert_close(a, b)


def test_missing_pivot_domain_is_a_clear_error(tiny_clip, split):
    seen, _ = split
    feats = extract_features(tiny_clip, seen.subset(domains=["sketch", "clipart"]), n_views=1, progress=False)
    with pytest.raises(DatasetError, match="pivot.*'photo'"):
        ClairTrainer(ClairConfig(clip_model="clair-tiny", clip_pretrained=None), tiny_clip, seen.classes, feats)


@pytest.mark.parametrize("backend", ["milvus", "qdrant"])
def test_index_then_search_across_domains(trained, split, tmp_path, backend):
    _, _, model, path, _ = trained
    _, unseen = split
    uri = str(tmp_path / ("m.db" if backend == "milvus" else "q"))
    gallery = [i.path for i in unseen.by_domain("photo")]
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    s = clair_vec.index("gal", gallery + [str(bad)], backend=backend, uri=uri, model=path, label_from_folder=True, progress=False)
    assert s.indexed == len(gallery) and s.already_present == 0
    assert s.skipped == [(str(bad), s.skipped[0][1])] and "not an image in a format clair_vec reads" in s.skipped[0][1]
    # a re-run (e.g. after a crash) stores nothing twice
    again = clair_vec.index("gal", gallery, backend=backend, uri=uri, model=path, progress=False)
    assert again.indexed == 0 and again.already_present == len(gallery)
    be = get_backend(backend, uri)
    try:
        assert be.count("gal") == len(gallery)
        assert be.open_collection("gal").model == model.model_id
    finally:
        be.close()
    queries = [i.path for i in unseen.by_domain("sketch")[:3]]
    hits = clair_vec.search("gal", queries, domain="sketch", top_k=5, backend=backend, uri=uri, model=path)
    assert len(hits) == 3 and all(len(row) == 5 for row in hits)
    row = hits[0]
    assert row[0].score >= row[-1].score
    assert {"path", "domain", "label", "model"} <= set(row[0].payload)
    assert "pseudo_label" not in row[0].payload  # no vocabulary given: no (misleading) tag
    assert row[0].payload["label"] in UNSEEN
    # the backend's ranking equals exact cosine ranking of the same mapped vectors
    g = model.embed_images([__import__("clair_vec.datasets.images", fromlist=["x"]).load_image(p) for p in gallery], "photo")
    q = model.embed_images([__import__("clair_vec.datasets.images", fromlist=["x"]).load_image(queries[0])], "sketch")
    best = gallery[int(np.argmax(g @ q[0]))]
    assert row[0].payload["path"] == best
    filtered = clair_vec.search("gal", queries[:1], domain="sketch", top_k=50, filter={"label": "heart"},
                                backend=backend, uri=uri, model=path)[0]  # fmt: skip
    assert filtered and all(h.payload["label"] == "heart" for h in filtered)


def test_api_errors_say_what_to_do(trained, tmp_path):
    _, _, model, path, _ = trained
    uri = str(tmp_path / "m.db")
    with pytest.raises(UnknownBackendError, match=r"installed backends: \[.*'milvus'.*'qdrant'"):
        clair_vec.index("c", [], backend="elastic", model=path)
    with pytest.raises(UnknownDomainError, match="'x-ray'.*clipart.*photo.*sketch"):
        clair_vec.index("c", [], domain="x-ray", backend="milvus", uri=uri, model=path)
    with pytest.raises(CollectionNotFoundError, match="'never_made'.*index"):
        clair_vec.search("never_made", [np.zeros((8, 8, 3), np.uint8)], domain="sketch", backend="milvus", uri=uri, model=path)
    be = get_backend("milvus", uri)
    try:
        from clair_vec.store.backend import CollectionInfo

        be.create_collection(CollectionInfo("other", model.dim, "some-other-model"))
    finally:
        be.close()
    with pytest.raises(CollectionMismatchError, match="some-other-model"):
        clair_vec.index("other", [np.zeros((8, 8, 3), np.uint8)], backend="milvus", uri=uri, model=path, progress=False)
    with pytest.raises(Exception, match="no CLAIR model given"):
        clair_vec.load_model(None)


def test_in_memory_images_and_arrays_are_indexed(trained, tmp_path):
    _, _, _, path, _ = trained
    from PIL import Image

    arr = (np.random.default_rng(0).random((32, 32, 3))).astype(np.float32)
    s = clair_vec.index("mem", [arr, Image.new("RGB", (20, 20), "red")], backend="qdrant", uri=str(tmp_path / "q"),
                        model=path, progress=False)  # fmt: skip
    assert s.indexed == 2


def test_failure_mid_way_leaves_a_consistent_collection_and_a_rerun_completes_it(trained, split, tmp_path, monkeypatch):
    _, _, _, path, _ = trained
    _, unseen = split
    gallery = [i.path for i in unseen.by_domain("photo")]
    uri = str(tmp_path / "m.db")
    from clair_vec_milvus import MilvusBackend

    original, calls = MilvusBackend._upsert, []

    def dies_on_third_batch(self, name, records):
        calls.append(len(records))
        if len(calls) == 3:
            raise RuntimeError("connection lost")  # not transient: no retry
        return original(self, name, records)

    monkeypatch.setattr(MilvusBackend, "_upsert", dies_on_third_batch)
    with pytest.raises(RuntimeError, match="connection lost"):
        clair_vec.index("gal", gallery, backend="milvus", uri=uri, model=path, batch_size=8, progress=False)
    monkeypatch.setattr(MilvusBackend, "_upsert", original)
    be = get_backend("milvus", uri)
    try:
        assert be.count("gal") == 16  # two whole batches, nothing half-written
    finally:
        be.close()
    done = clair_vec.index("gal", gallery, backend="milvus", uri=uri, model=path, batch_size=8, progress=False)
    assert done.already_present == 16 and done.indexed == len(gallery) - 16
    be = get_backend("milvus", uri)
    try:
        assert be.count("gal") == len(gallery)
    finally:
        be.close()


def test_cli_train_index_search_evaluate(shapes_root, tmp_path, capsys):
    import json

    from clair_vec.cli import main

    out = tmp_path / "model"
    assert main(["train", "--data", str(shapes_root), "--out", str(out), "--clip-model", "clair-tiny",
                 "--clip-pretrained", str(_random_clip(tmp_path)), "--epochs", "1", "--batch-size", "48"]) == 0  # fmt: skip
    assert (out / "clair.json").is_file()
    capsys.readouterr()
    uri = str(tmp_path / "c.db")
    assert main(["index", "--model", str(out), "--collection", "g", "--uri", uri, "--label-from-folder",
                 str(shapes_root / "photo" / "heart"), str(shapes_root / "photo" / "arrow")]) == 0  # fmt: skip
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["indexed"] == 16 and summary["skipped"] == []
    query = str(sorted((shapes_root / "sketch" / "heart").iterdir())[0])
    assert main(["search", "--model", str(out), "--collection", "g", "--uri", uri, "--domain", "sketch",
                 "--top-k", "3", "--filter", "label=heart", query]) == 0  # fmt: skip
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["query"] == query and len(row["hits"]) == 3 and all(h["label"] == "heart" for h in row["hits"])
    assert main(["evaluate", "--model", str(out), "--data", str(shapes_root)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:4] == ["query", "→", "gallery", "queries"] and {t.split()[0] for t in table[2:4]} == {"clipart", "sketch"}
    assert main(["evaluate", "--model", str(out), "--data", str(shapes_root), "--json"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    assert {x["query"] for x in lines} == {"clipart", "sketch"}
    assert all(0 <= x["model"]["mAP@all"] <= 1 and set(x["classes"]) == set(UNSEEN) for x in lines)
    assert main(["search", "--model", str(out), "--collection", "g", "--uri", uri, "--domain", "x-ray", query]) == 2
    assert "unknown domain 'x-ray'" in capsys.readouterr().err


def _random_clip(tmp_path):
    from clair_vec.method.foundation import FoundationModel

    path = tmp_path / "clip.pt"
    torch.save(FoundationModel.load("clair-tiny", None).state_dict(), path)
    return path
