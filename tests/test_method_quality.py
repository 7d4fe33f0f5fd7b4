"""What makes the method earn its place: a confidence filter that filters, a stand-in CLIP that never
saw CLAIR's images, per-domain centring carried by the model, and the default method on real images."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
import torch.nn.functional as F

from clair_vec.datasets.folders import scan_folder
from clair_vec.datasets.web_pool import carve_web_pool, domain_weights, parse_mix
from clair_vec.errors import CheckpointError, DatasetError
from clair_vec.method.centering import DomainCenters
from clair_vec.method.config import ClairConfig
from clair_vec.method.pseudo_labels import pseudo_label


def _hashes(root) -> set[str]:
    return {hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*.png") if p.is_file()} | {
        hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*.jpg") if p.is_file()}


# ---------------------------------------------------------------------- the confidence filter
def _noisy_zero_shot(n_classes: int, n: int = 600, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images near their class text, each by its own margin: the surer an image, the likelier right."""
    g = torch.Generator().manual_seed(seed)
    text = F.normalize(torch.randn(n_classes, 32, generator=g), dim=-1)
    truth = torch.randint(n_classes, (n,), generator=g)
    clarity = torch.rand(n, 1, generator=g)
    feats = F.normalize(clarity * text[truth] + 0.6 * torch.randn(n, 32, generator=g) / 32**0.5 * 4, dim=-1)
    return feats, text, truth


@pytest.mark.parametrize("n_classes", [2, 3, 5, 7, 20, 100])
def test_the_default_filter_drops_labels_and_keeps_the_more_accurate_ones_at_every_class_count(n_classes):
    feats, text, truth = _noisy_zero_shot(n_classes)
    cfg = ClairConfig()
    pl = pseudo_label(feats, text, 100.0, method=cfg.confidence, norm=cfg.confidence_norm, threshold=cfg.confidence_threshold)
    right = pl.labels == truth
    assert 0 < int(pl.kept.sum()) < len(truth)  # a filter that keeps everything filters nothing
    assert pl.kept.float().mean().item() == pytest.approx(1 - cfg.confidence_threshold, abs=0.02)
    assert right[pl.kept].float().mean() > right[~pl.kept].float().mean() + 0.05


@pytest.mark.parametrize("n_classes", [2, 3, 5])
def test_the_spec_filter_drops_nothing_with_few_classes_which_is_why_it_is_not_the_default(n_classes):
    feats, text, _ = _noisy_zero_shot(n_classes)
    pl = pseudo_label(feats, text, 100.0, norm="class", threshold=0.2)
    assert bool(pl.kept.all())  # softmax confidence >= 1/C >= 0.2, divided by the class maximum: never below 0.2


# ---------------------------------------------------------------------- the stand-in CLIP's web pool
def test_the_demo_web_pool_covers_every_class_in_the_web_mix_and_shares_no_image_with_the_data(tmp_path):
    from clair_vec.datasets.shapes import SHAPES, make_shapes_dataset, make_web_pool

    data = make_shapes_dataset(tmp_path / "data", per_class=3, seed=5)
    web = make_web_pool(tmp_path / "web", per_class=10, seed=5)
    pool = scan_folder(web)
    assert pool.classes == sorted(SHAPES)  # unseen classes included, as web CLIP has seen them
    unseen = (data / "unseen_classes.txt").read_text().split()
    assert len(unseen) == 6 and set(unseen) <= set(pool.classes)
    share = {d: len(pool.by_domain(d)) / len(pool) for d in pool.domains}
    assert share == pytest.approx({"photo": 0.8, "sketch": 0.1, "clipart": 0.1}, abs=0.01)
    assert not _hashes(data) & _hashes(web)


def test_a_real_dataset_is_carved_into_a_pool_and_clair_data_disjoint_by_content(tmp_path):
    from clair_vec.datasets import real

    root = real.pacs_mini(tmp_path / "pacs", unseen=["dog", "house"], web_share=0.4, seed=1)
    assert root == tmp_path / "pacs" / "data" and (root / "unseen_classes.txt").is_file()
    pool, data = scan_folder(tmp_path / "pacs" / "web"), scan_folder(root)
    assert not _hashes(tmp_path / "pacs" / "web") & _hashes(root)
    assert len(pool) + len(data) == 40
    assert len(pool.by_domain("photo")) >= max(len(pool.by_domain(d)) for d in pool.domains)  # mostly photos
    # byte-identical copies under two names stay on one side
    copy = tmp_path / "dup" / "photo" / "dog"
    copy.mkdir(parents=True)
    src = sorted((tmp_path / "pacs" / "data" / "photo").rglob("*.jpg")) + sorted((tmp_path / "pacs" / "web" / "photo").rglob("*.jpg"))
    for i in range(2):
        (copy / f"same{i}.jpg").write_bytes(src[0].read_bytes())
    (tmp_path / "dup" / "sketch" / "dog").mkdir(parents=True)
    (tmp_path / "dup" / "sketch" / "dog" / "x.jpg").write_bytes(src[-1].read_bytes())
    p, r = carve_web_pool(scan_folder(tmp_path / "dup"), 0.5, seed=0)
    names = {i.path.rsplit("/", 1)[-1] for i in p.items}
    assert names in ({"same0.jpg", "same1.jpg"}, {"x.jpg"}, set(), {"same0.jpg", "same1.jpg", "x.jpg"})


def test_web_mix_parsing_and_weights():
    assert parse_mix("photo=0.8, sketch=0.1") == {"photo": 0.8, "sketch": 0.1}
    assert domain_weights(["clipart", "photo", "sketch"]) == pytest.approx({"photo": 0.8, "clipart": 0.1, "sketch": 0.1})
    assert domain_weights(["caltech", "labelme", "sun"]) == pytest.approx({d: 1 / 3 for d in ("caltech", "labelme", "sun")})
    assert domain_weights(["photo", "sketch"], {"photo": 1.0}) == {"photo": 1.0, "sketch": 0.0}
    for bad in ("photo", "photo=2", "photo=0.7,sketch=0.5", "=0.1"):
        with pytest.raises(DatasetError, match="--mix"):
            parse_mix(bad)


def test_bootstrap_clip_refuses_a_dataset_clair_is_scored_on(shapes_root, tmp_path):
    from conftest import run_cli

    out = run_cli("bootstrap-clip", "--data", str(shapes_root), "--out", str(tmp_path / "clip.pt"), "--steps", "2")
    assert out.returncode == 2 and "_classes.txt: it looks like a dataset CLAIR" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "clip.pt").exists()


# ---------------------------------------------------------------------- centring
def test_centres_are_each_domains_mean_and_apply_subtracts_then_normalises():
    g = torch.Generator().manual_seed(0)
    feats = {"photo": torch.randn(50, 8, generator=g) + 3, "sketch": torch.randn(40, 8, generator=g) - 2}
    centers = DomainCenters.fit(feats, lambda v, _d: v)
    torch.testing.assert_close(centers.centers["photo"], feats["photo"].mean(0))
    out = centers.apply(feats["sketch"], "sketch")
    torch.testing.assert_close(out, F.normalize(feats["sketch"] - feats["sketch"].mean(0), dim=-1))
    assert torch.equal(centers.apply(feats["photo"], "clipart"), feats["photo"])  # no centre: unchanged
    assert not DomainCenters() and centers


@pytest.fixture(scope="module")
def unchecked_dir(shapes_root, tmp_path_factory):
    """The default method trained without selection: the head, centred, with the text map."""
    from clair_vec.training.job import train_local

    cfg = ClairConfig(clip_model="clair-tiny", clip_pretrained=None, epochs=1, batch_size=48)
    return train_local(shapes_root, cfg, val_fraction=0.0, progress=False).save(tmp_path_factory.mktemp("unchecked") / "m")


def test_a_trained_model_carries_its_centres_through_save_load_and_into_its_id(unchecked_dir, tmp_path):
    from clair_vec.method.model import ClairModel

    model = ClairModel.load(unchecked_dir)
    assert model.config.domain_center and set(model.centers.centers) == set(model.domains)
    again = ClairModel.load(model.save(tmp_path / "m"))
    assert again.model_id == model.model_id
    for d in model.domains:
        torch.testing.assert_close(again.centers.centers[d], model.centers.centers[d])
    uncentred = ClairModel(model.foundation, model.head, model.mapping, model.classes, model.text_embeddings, model.config,
                           routing=model.routing)  # fmt: skip
    assert uncentred.model_id != model.model_id  # another vector space: a collection refuses to mix them
    state = torch.load(tmp_path / "m" / "clair.pt", weights_only=True)
    state["centers"][model.pivot] = torch.zeros(3)
    torch.save(state, tmp_path / "m" / "clair.pt")
    with pytest.raises(CheckpointError, match=f"centers.{model.pivot}"):
        ClairModel.load(tmp_path / "m")


def test_old_checkpoints_without_centres_still_load_uncentred(unchecked_dir, tmp_path):
    from clair_vec.method.model import ClairModel

    model = ClairModel.load(unchecked_dir)
    path = model.save(tmp_path / "old")
    state = torch.load(path / "clair.pt", weights_only=True)
    del state["centers"]
    torch.save(state, path / "clair.pt")
    meta = json.loads((path / "clair.json").read_text())
    for key in ("domain_center", "head_zero_init"):
        del meta["config"][key]
    meta["model_id"] = ClairModel(model.foundation, model.head, model.mapping, model.classes, model.text_embeddings,
                                  model.config, routing=model.routing).model_id  # fmt: skip
    (path / "clair.json").write_text(json.dumps(meta))
    old = ClairModel.load(path)
    assert not old.centers and old.config.domain_center is False
