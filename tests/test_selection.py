"""Model selection on rotating folds, decided per query domain (issue 22): a head that hurts one
query domain is not shipped for it, the decision survives save/load and reaches index/search."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import clair_vec
from clair_vec.method.config import ClairConfig
from clair_vec.method.head import ClairHead
from clair_vec.method.mapping import DomainMapping
from clair_vec.method.model import ClairModel
from clair_vec.method.model_card import ModelCard
from clair_vec.method.prompts import hand_crafted_text_embeddings
from clair_vec.training.features import DomainFeatures
from clair_vec.training.folds import FoldRun, class_folds
from clair_vec.training.selection import (
    MAP_NONE,
    MAP_TEXT,
    RAW,
    apply_selection,
    average_fold_heads,
    decide,
    select_on_folds,
    ship,
)
from clair_vec.training.trainer import VAL_KEY

CLASSES = ["circle", "square", "triangle", "star", "cross", "ring"]
DOMAINS = ["clipart", "photo", "sketch"]


# ---------------------------------------------------------------------- folds
def test_folds_are_distinct_random_class_sets():
    classes = [f"c{i}" for i in range(11)]
    folds = class_folds(classes, fraction=0.2, seed=3, max_folds=10)
    assert len(folds) == 10 and all(len(f) == 2 for f in folds) and len({tuple(f) for f in folds}) == 10
    assert folds == class_folds(classes, fraction=0.2, seed=3, max_folds=10) != class_folds(classes, fraction=0.2, seed=4, max_folds=10)
    assert len(class_folds(classes, fraction=0.2, seed=3, max_folds=3)) == 3
    assert len(class_folds(["a", "b", "c", "d"], fraction=0.5, seed=0, max_folds=10)) == 6  # every 2 of 4: no more exist
    assert class_folds(["a", "b", "c"], fraction=0.1, seed=0, max_folds=5) == []  # 2 held out would leave 1 to train on
    assert class_folds(classes, fraction=0.0, seed=0, max_folds=5) == []


def test_covering_folds_hold_every_seen_class_out_before_any_twice():
    # the demo's shape: 18 seen classes, 5 folds of 5. Independent draws (the default; seed 0) leave
    # 4 classes unjudged and hold one out in 4 folds of 5
    classes = [f"c{i:02d}" for i in range(18)]
    for seed in range(20):
        counts = Counter(c for f in class_folds(classes, fraction=0.3, seed=seed, max_folds=5, cover=True) for c in f)
        assert set(counts) == set(classes) and max(counts.values()) == 2, (seed, counts)
    drawn = Counter(c for f in class_folds(classes, fraction=0.3, seed=0, max_folds=5) for c in f)
    assert len(drawn) == 14 and max(drawn.values()) == 4
    # 10 classes in folds of 2: five covering folds partition them exactly
    parts = class_folds([f"c{i}" for i in range(10)], fraction=0.2, seed=1, max_folds=5, cover=True)
    assert sorted(c for f in parts for c in f) == [f"c{i}" for i in range(10)]
    # more folds than one pass holds: runs that would repeat a fold give way to distinct draws
    many = class_folds([f"c{i}" for i in range(6)], fraction=0.3, seed=2, max_folds=8, cover=True)
    assert len(many) == 8 and len({tuple(f) for f in many}) == 8


# ---------------------------------------------------------------------- the decision rule
R, HR, HC = RAW, (1.0, False), (1.0, True)
TRAINED = (HC, MAP_TEXT)


def table(scores: dict) -> dict:
    """Every option of the default paths x maps {none, text}: raw CLIP scores 0.5, the rest as given, else 0.4."""
    out = {}
    for gp in (R, HC):
        for d in ("clipart", "sketch"):
            for qp in (p for p in (R, HR, HC) if p[1] == gp[1]):
                for m in (MAP_NONE, MAP_TEXT):
                    key = (gp, d, qp, m)
                    out[key] = 0.5 if key == (R, d, R, MAP_NONE) else scores.get(key, 0.4)
    return out


def test_a_domain_keeps_raw_clip_unless_the_gain_beats_its_standard_error():
    folds = [table({(R, "clipart", R, MAP_TEXT): 0.60 + e, (R, "sketch", R, MAP_TEXT): s})
             for e, s in ((0.00, 0.70), (0.01, 0.45), (-0.01, 0.40))]  # fmt: skip
    plan = decide(folds, margin=0.005, trained=TRAINED)
    assert plan["gallery"] == R
    clipart, sketch = plan["domains"]["clipart"], plan["domains"]["sketch"]
    assert (clipart["blend"], clipart["centered"], clipart["mapping"], clipart["trusted"]) == (0.0, False, MAP_TEXT, True)
    assert clipart["gain"] == pytest.approx(0.10) and clipart["stderr"] == pytest.approx(0.01 / 3**0.5)
    # sketch: +0.2, -0.05, -0.1 -> a mean gain of +0.017 with a standard error of 0.093: raw CLIP stays, exactly
    assert (sketch["blend"], sketch["centered"], sketch["mapping"], sketch["trusted"]) == (0.0, False, MAP_NONE, False)


def test_the_rule_uses_the_standard_error_not_the_spread_of_single_folds():
    """Six folds gaining 0 to 0.06: their spread (0.023) swallows the mean (0.028), its standard error (0.009) does not."""
    gains = (0.0, 0.06, 0.03, 0.01, 0.05, 0.02)
    plan = decide([table({(R, "clipart", R, MAP_TEXT): 0.5 + g}) for g in gains], margin=0.005, trained=TRAINED)
    assert plan["domains"]["clipart"]["trusted"] and plan["domains"]["clipart"]["mapping"] == MAP_TEXT


def test_the_trained_model_ships_whole_when_trusted_for_every_query_domain():
    better = {(HC, "clipart", HC, MAP_TEXT): 0.6, (HC, "sketch", HC, MAP_TEXT): 0.6,
              (R, "clipart", R, MAP_TEXT): 0.65, (R, "sketch", R, MAP_TEXT): 0.65}  # fmt: skip
    folds = [table(better)] * 2 + [table({k: v - 0.01 for k, v in better.items()})]
    plan = decide(folds, margin=0.0, trained=TRAINED)
    assert plan["gallery"] == HC and {(p["blend"], p["centered"], p["mapping"]) for p in plan["domains"].values()} == {(1.0, True, MAP_TEXT)}


def test_a_changed_gallery_is_refused_when_the_trained_model_validates_below_raw_clip_on_a_domain():
    only_clipart = {(HC, "clipart", HC, MAP_TEXT): 0.9, (R, "sketch", HR, MAP_NONE): 0.6}
    plan = decide([table(only_clipart), table({k: v - 0.01 for k, v in only_clipart.items()})], margin=0.0, trained=TRAINED)
    assert plan["gallery"] == R
    assert plan["domains"]["clipart"]["blend"] == 0.0 and not plan["domains"]["clipart"]["trusted"]
    assert plan["domains"]["clipart"]["best_other"]["blend"] == 1.0  # the record names what nearly shipped
    assert (plan["domains"]["sketch"]["blend"], plan["domains"]["sketch"]["centered"]) == (1.0, False)  # the head, raw gallery


def test_the_trained_model_ships_whole_when_trusted_on_one_domain_and_below_raw_clip_on_none():
    """Demo seed 2: centred CLIP's folds gained +0.002 ± 0.014 (clipart) and +0.022 ± 0.012 (sketch); asking
    for trust on every domain kept raw CLIP, and it gains +0.035 / +0.020 on the unseen classes."""
    def folds(sketch_gains: tuple[float, ...]) -> list[dict]:
        return [table({(HC, "clipart", HC, MAP_TEXT): 0.6 + 0.01 * i, (HC, "sketch", HC, MAP_TEXT): 0.5 + g})
                for i, g in enumerate(sketch_gains)]  # fmt: skip

    plan = decide(folds((0.02, -0.01, 0.005)), margin=0.0, trained=TRAINED)  # sketch +0.005 ± 0.009: noise, not a loss
    assert plan["gallery"] == HC
    clipart, sketch = plan["domains"]["clipart"], plan["domains"]["sketch"]
    assert clipart["trusted"] and "carried" not in clipart
    assert (sketch["blend"], sketch["centered"], sketch["trusted"], sketch["carried"]) == (1.0, True, False, True)
    assert sketch["gain"] == pytest.approx(0.005)
    strict = decide(folds((0.02, -0.01, 0.005)), margin=0.0, trained=TRAINED, rule="all_trusted")
    assert strict["gallery"] == R and strict["domains"]["sketch"]["blend"] == 0.0
    below = decide(folds((0.01, -0.02, 0.005)), margin=0.0, trained=TRAINED)  # sketch -0.002 on the mean: it validates worse
    assert below["gallery"] == R and below["domains"]["sketch"]["blend"] == 0.0 and not below["domains"]["sketch"]["trusted"]
    assert decide([{}, {}], margin=0.0, trained=TRAINED)["gallery"] == HC  # no query domain: nothing to trust, ships as before
    assert ClairConfig().selection_whole == "one_trusted"
    assert ClairConfig.from_dict({}).selection_whole == "all_trusted"  # the rule models trained before it were selected by


def test_centred_raw_clip_ships_whole_when_the_trained_model_is_not_trusted_and_it_is():
    """The method's training-free part (raw CLIP centred per domain, centred text map) is the next
    whole option: it ships when trusted for every domain and the trained model is not; the trained
    model keeps precedence when both are trusted, even if the centred option scores higher."""
    C = (0.0, True)

    def folds(scores: dict) -> list[dict]:
        base = table({})
        for d in ("clipart", "sketch"):
            for qp in (C, HC):
                for gp in (C, HC):
                    for m in (MAP_NONE, MAP_TEXT):
                        base[(gp, d, qp, m)] = 0.4
        out = []
        for shift in (0.0, 0.01, -0.01):
            f = dict(base)
            f.update({k: v + shift for k, v in scores.items()})
            out.append(f)
        return out

    centred = {(C, "clipart", C, MAP_TEXT): 0.6, (C, "sketch", C, MAP_TEXT): 0.6}
    head_one_domain = {(HC, "clipart", HC, MAP_TEXT): 0.7}
    plan = decide(folds({**centred, **head_one_domain}), margin=0.0, trained=TRAINED, whole=[(C, MAP_TEXT)])
    assert plan["gallery"] == C and all((p["blend"], p["centered"], p["mapping"]) == (0.0, True, MAP_TEXT)
                                        for p in plan["domains"].values())  # fmt: skip
    head_both = {(HC, "clipart", HC, MAP_TEXT): 0.55, (HC, "sketch", HC, MAP_TEXT): 0.55}
    plan = decide(folds({**centred, **head_both}), margin=0.0, trained=TRAINED, whole=[(C, MAP_TEXT)])
    assert plan["gallery"] == HC
    plan = decide(folds({**centred, **head_one_domain}), margin=0.0, trained=TRAINED)  # without the option: per domain
    assert plan["gallery"] == R


# ---------------------------------------------------------------------- a head sabotaged on one query domain
def synthetic(dim: int, seed: int = 0) -> tuple[dict[str, DomainFeatures], ClairHead]:
    """Features where one head helps clipart and ruins sketch, and leaves photo (the gallery) alone.

    Class signal lives in dims 8+. Clipart carries a large random nuisance along one direction u of
    that space (raw retrieval is poor); sketch a constant +2 on e0, orthogonal to the gallery and so
    harmless to raw retrieval. The head removes u (clipart gets clean, the others barely change)
    and, wherever e0 is on, adds one big fixed direction (every sketch collapses onto it)."""
    g = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(len(CLASSES), dim, generator=g) * (torch.arange(dim) >= 8), dim=-1)
    e0 = torch.eye(dim)[0]
    u = F.normalize(torch.randn(dim, generator=g) * (torch.arange(dim) >= 8), dim=-1)
    feats = {}
    for d in DOMAINS:
        n = 12
        labels = [c for c in CLASSES for _ in range(n)]
        x = centres.repeat_interleave(n, 0) + 0.05 * torch.randn(len(labels), dim, generator=g) * (torch.arange(dim) >= 8)
        if d == "clipart":
            x = x + 20.0 * torch.randn(len(labels), 1, generator=g) * u
        elif d == "sketch":
            x = x + 2.0 * e0
        x = F.normalize(x, dim=-1)
        feats[d] = DomainFeatures(x, x.new_empty(len(x), 0, dim), labels, [f"{d}/{i}" for i in range(len(x))])
    head = ClairHead(dim, 3, 1.0)
    junk = F.normalize(torch.randn(dim, generator=g) * (torch.arange(dim) >= 8), dim=-1)
    with torch.no_grad():
        head.mlp[0].weight.copy_(torch.stack([u, -u, e0]))
        head.mlp[0].bias.copy_(torch.tensor([0.0, 0.0, -0.1]))
        head.mlp[2].weight.copy_(torch.stack([-u, u, 10.0 * junk], dim=1))
        head.mlp[2].bias.zero_()
    return feats, head


def sabotaged_selection(tiny_clip):
    feats, head = synthetic(tiny_clip.embed_dim)
    folds = class_folds(CLASSES, fraction=0.3, seed=0, max_folds=5)
    runs = [FoldRun(f, [c for c in CLASSES if c not in f], 0.2, [{VAL_KEY: 0.5}], [{"head": head.state_dict(), "prompts": None}])
            for f in folds]  # fmt: skip
    cfg = ClairConfig(clip_model="clair-tiny", clip_pretrained=None, prompt_side="none", domain_center=False,
                     head_activation="relu")  # the hand-built heads are ReLU MLPs
    return select_on_folds(runs, tiny_clip, cfg, feats), feats, head, cfg


def test_a_head_sabotaged_on_one_query_domain_is_not_shipped_for_that_domain(tiny_clip):
    selection, *_ = sabotaged_selection(tiny_clip)
    clipart, sketch = selection["domains"]["clipart"], selection["domains"]["sketch"]
    assert len(selection["folds"]) == 5 and selection["epoch"] == 0
    assert clipart["blend"] > 0 and clipart["trusted"] and clipart["gain"] > 0.2  # the head fixes clipart, on every fold
    assert sketch["blend"] == 0.0  # and is kept away from sketch, where it collapses every query
    assert np.mean(sketch["folds"]["clair"]) < np.mean(sketch["folds"]["raw_clip"]) - 0.2
    assert selection["gallery_blend"] == 0.0 and selection["gallery_centered"] is False


def test_the_shipped_head_averages_the_fold_heads_only_when_the_config_says_so(tiny_clip):
    selection, feats, head, cfg = sabotaged_selection(tiny_clip)
    text = {d: hand_crafted_text_embeddings(tiny_clip, CLASSES, d) for d in DOMAINS}
    folds = class_folds(CLASSES, fraction=0.3, seed=0, max_folds=5)
    other = ClairHead(tiny_clip.embed_dim, 3, 0.5)
    runs = [FoldRun(f, [], 0.2, [{VAL_KEY: 0.5}], [{"head": other.state_dict(), "prompts": None}]) for f in folds]
    for ensemble, hidden in (("folds", 18), ("none", 3)):
        trained = ClairModel(tiny_clip, head, DomainMapping.fit(text, "photo"), CLASSES, text, cfg.replace(head_ensemble=ensemble))
        shipped = average_fold_heads(trained, runs)
        assert shipped.head.mlp[0].out_features == hidden and (shipped is trained) == (ensemble == "none")
        assert average_fold_heads(trained, []) is trained
    v = feats["clipart"].clean.float()
    folds_cfg = cfg.replace(head_ensemble="folds")
    averaged = average_fold_heads(ClairModel(tiny_clip, head, trained.mapping, CLASSES, text, folds_cfg), runs).head
    torch.testing.assert_close(averaged(v), F.normalize(v + (head.alpha * head.mlp(v) + 5 * other.alpha * other.mlp(v)) / 6, dim=-1))
    # six heads too wide for a checkpoint: the final head ships alone, and says why
    wide = ClairModel(tiny_clip, ClairHead(tiny_clip.embed_dim, 3000, 1.0), trained.mapping, CLASSES, text, folds_cfg)
    assert average_fold_heads(wide, [FoldRun(f, [], 0.2, [], [{"head": wide.head.state_dict(), "prompts": None}])
                                     for f in folds]) is wide  # fmt: skip
    # the fold heads come from CPU snapshots; the average lands where the trained head runs (meta stands in for a GPU)
    on_meta = ClairModel(tiny_clip, ClairHead(tiny_clip.embed_dim, 3, 1.0).to("meta"), trained.mapping, CLASSES, text, folds_cfg)
    assert average_fold_heads(on_meta, runs).head.mlp[2].weight.device.type == "meta"


def test_a_head_that_collapses_every_domain_ships_nowhere(tiny_clip):
    feats, _ = synthetic(tiny_clip.embed_dim)
    head = ClairHead(tiny_clip.embed_dim, 3, 1000.0)
    with torch.no_grad():  # every image lands next to one point: rankings no longer depend on the query
        head.mlp[2].weight.zero_()
        head.mlp[2].bias.fill_(5.0)
    runs = [FoldRun(f, [c for c in CLASSES if c not in f], 0.2, [{VAL_KEY: 0.1}], [{"head": head.state_dict(), "prompts": None}])
            for f in class_folds(CLASSES, fraction=0.3, seed=1, max_folds=5)]  # fmt: skip
    # uncentred: centring each domain on its mean would undo this collapse (every output is one point plus noise)
    cfg = ClairConfig(clip_model="clair-tiny", clip_pretrained=None, prompt_side="none", domain_center=False,
                     head_activation="relu")  # the hand-built heads are ReLU MLPs
    selection = select_on_folds(runs, tiny_clip, cfg, feats)
    text = {d: hand_crafted_text_embeddings(tiny_clip, CLASSES, d) for d in DOMAINS}
    trained = ClairModel(tiny_clip, head, DomainMapping.fit(text, "photo"), CLASSES, text, cfg)
    model, record = ship(trained, selection, {d: f.clean for d, f in feats.items()}, why_none="")
    assert record["shipped"] in ("raw_clip", "mapping_only") and "sketch" in record["warning"]
    assert set(model.routing.values()) == {0.0} and model.head.alpha.item() == 0.0  # the identity head: raw CLIP
    v = record["validation"]
    assert v["clair"]["mean"] < 0.7 < v["raw_clip"]["mean"] <= v["chosen"]["mean"]


def test_the_decision_survives_save_and_load_and_reaches_embed_features(tiny_clip, tmp_path):
    selection, feats, head, cfg = sabotaged_selection(tiny_clip)
    text = {d: hand_crafted_text_embeddings(tiny_clip, CLASSES, d) for d in DOMAINS}
    trained = ClairModel(tiny_clip, head, DomainMapping.fit(text, "photo"), CLASSES, text, cfg)
    model, record = ship(trained, selection, {d: f.clean for d, f in feats.items()}, why_none="")
    assert record["shipped"] == "per_domain" and "['sketch']" in record["warning"]
    assert model.routing == {"clipart": selection["domains"]["clipart"]["blend"], "photo": 0.0, "sketch": 0.0}
    model.record = record
    again = ClairModel.load(model.save(tmp_path / "m"))
    assert again.routing == model.routing and again.model_id == model.model_id
    assert again.model_id != trained.model_id  # another vector space: backends must not mix them
    assert json.loads((tmp_path / "m" / "clair.json").read_text())["routing"] == model.routing
    assert ModelCard.read(tmp_path / "m").routing == model.routing
    x = feats["sketch"].clean
    want = x if selection["domains"]["sketch"]["mapping"] == MAP_NONE else again.mapping.apply(x, "sketch")
    torch.testing.assert_close(again.embed_features(x, "sketch"), want)  # raw CLIP for sketch
    assert (again.embed_features(x, "sketch") @ head(x).T).diagonal().mean() < 0.5  # not the head's collapse
    c = feats["clipart"].clean
    b = model.routing["clipart"]
    torch.testing.assert_close(again.embed_features(c, "clipart", map_domain=False),
                               F.normalize((1 - b) * c + b * head(c), dim=-1))  # fmt: skip


def test_index_and_search_embed_through_the_decision(tiny_clip, shapes_root, tmp_path):
    """A head far from the identity, shipped for clipart only: the stored gallery vectors are raw
    CLIP, sketch queries are raw CLIP, and the hits' scores are those of the routed vectors."""
    text = {d: hand_crafted_text_embeddings(tiny_clip, CLASSES, d) for d in DOMAINS}
    torch.manual_seed(0)
    head = ClairHead(tiny_clip.embed_dim, 16, 5.0)
    cfg = ClairConfig(clip_model="clair-tiny", clip_pretrained=None, prompt_side="none")
    trained = ClairModel(tiny_clip, head, DomainMapping.fit(text, "photo"), CLASSES, text, cfg)
    selection = {"gallery_blend": 0.0, "folds": [],
                 "domains": {"clipart": {"blend": 1.0, "mapping": MAP_TEXT}, "sketch": {"blend": 0.0, "mapping": MAP_NONE}}}  # fmt: skip
    path = apply_selection(trained, selection, {}).save(tmp_path / "m")
    uri = str(tmp_path / "g.db")
    gallery = sorted(str(p) for p in (shapes_root / "photo" / "heart").iterdir())[:6]
    clair_vec.index("g", gallery, backend="milvus", uri=uri, model=path, progress=False)
    query = str(sorted((shapes_root / "sketch" / "heart").iterdir())[0])
    hits = clair_vec.search("g", [query], domain="sketch", top_k=6, backend="milvus", uri=uri, model=path)[0]
    from clair_vec.datasets.images import load_image

    g_raw = tiny_clip.encode_images([load_image(p) for p in gallery])
    q_raw = tiny_clip.encode_images([load_image(query)])
    routed = {gallery[i]: float(s) for i, s in enumerate((g_raw @ q_raw[0]).tolist())}
    for h in hits:
        assert h.score == pytest.approx(routed[h.payload["path"]], abs=1e-4)
    # had either side gone through the head (as an unrouted model sends every domain), the scores would differ
    for other in ((head(q_raw)[0] @ g_raw.T).tolist(), (q_raw[0] @ head(g_raw).T).tolist()):
        assert max(abs(h.score - other[gallery.index(h.payload["path"])]) for h in hits) > 0.05


# ---------------------------------------------------------------------- the training job end to end
@pytest.fixture(scope="module")
def selected(shapes_root, tmp_path_factory):
    from clair_vec.training.job import train_local

    cfg = ClairConfig(clip_model="clair-tiny", clip_pretrained=None, epochs=2, batch_size=48, lr=3e-3,
                      confidence="cosine", confidence_norm="none", selection_thresholds=[0.2, 0.95], selection_blends=[0.0, 1.0],
                      head_ensemble="folds")  # fmt: skip
    model = train_local(shapes_root, cfg, progress=False)
    return model, model.save(tmp_path_factory.mktemp("sel") / "m")


def test_training_records_folds_spread_and_decision_per_domain(selected, shapes_root):
    model, path = selected
    r = json.loads((path / "clair.json").read_text())["training"]
    sel = r["selection"]
    seen = (shapes_root / "seen_classes.txt").read_text().split()
    assert len(sel["folds"]) == 5 and {c for f in sel["folds"] for c in f["validation_classes"]} <= set(seen)
    assert sorted(r["validation_classes"]) == sorted({c for f in sel["folds"] for c in f["validation_classes"]})
    assert model.classes == sorted(seen)  # the final model trains on all
    assert sel["epoch"] == 1 and r["epochs"] == 2  # no early stopping: the folds judge the schedule the final model runs
    assert set(sel["domains"]) == {"clipart", "sketch"}
    for d in sel["domains"].values():
        assert {"blend", "centered", "mapping", "gain", "stderr", "folds"} <= set(d) and len(d["folds"]["raw_clip"]) == 5
        assert d["blend"] in (0.0, 1.0) and d["mapping"] in ("none", "text", "text+prompts")
    assert model.routing == {"photo": sel["gallery_blend"], **{k: v["blend"] for k, v in sel["domains"].items()}}
    t = sel["threshold"]
    assert t["chosen"] in (0.2, 0.95) and set(t["thresholds"]) == {"0.2", "0.95"}
    assert t["thresholds"]["0.95"]["kept_fraction"] < t["thresholds"]["0.2"]["kept_fraction"]
    assert model.config.confidence_threshold == t["chosen"]
    # head_ensemble=folds: the shipped head averages the final head with the five fold heads (when any domain uses it)
    assert r["heads_averaged"] == 6 and model.config.head_ensemble == "folds"
    if any(b > 0 for b in model.routing.values()):
        assert model.head.mlp[0].out_features == 6 * (model.config.head_hidden or model.dim)


def test_too_few_seen_classes_ship_raw_clip_and_say_why(shapes_root, tmp_path):
    from clair_vec.datasets.folders import scan_folder
    from clair_vec.datasets.shapes import make_shapes_dataset
    from clair_vec.training.job import train_local

    root = make_shapes_dataset(tmp_path / "d", classes=["circle", "square", "star", "heart", "ring"], per_class=3,
                               unseen=["heart", "ring"])  # fmt: skip
    assert len(scan_folder(root).classes) == 5
    cfg = ClairConfig(clip_model="clair-tiny", clip_pretrained=None, epochs=1, batch_size=24)
    model = train_local(root, cfg, progress=False)
    assert model.record["shipped"] == "raw_clip" and "3 seen classes are too few" in model.record["warning"]
    assert set(model.routing.values()) == {0.0} and model.head.alpha.item() == 0.0
    unchecked = train_local(root, cfg, progress=False, val_fraction=0.0)
    assert unchecked.record["shipped"] == "clair" and "ships unchecked" in unchecked.record["warning"]
    assert set(unchecked.routing.values()) == {1.0}


def test_identity_decay_keeps_the_head_closer_to_raw_clip(tiny_clip):
    from clair_vec.training.trainer import ClairTrainer

    feats, _ = synthetic(tiny_clip.embed_dim)
    g = torch.Generator().manual_seed(1)
    for f in feats.values():  # two augmented views: the clean feature plus a little noise
        f.views = F.normalize(f.clean[:, None, :] + 0.05 * torch.randn(len(f), 2, f.clean.shape[1], generator=g), dim=-1)
    closeness, terms = {}, {}
    for decay in (0.0, 5.0):
        cfg = ClairConfig(clip_model="clair-tiny", clip_pretrained=None, epochs=4, batch_size=36, lr=1e-2,
                          head_alpha_init=1.0, identity_decay=decay, prompt_side="none")  # fmt: skip
        trainer = ClairTrainer(cfg, tiny_clip, CLASSES, feats, progress=False)
        trainer.fit()
        v = torch.cat([f.clean for f in feats.values()])
        with torch.no_grad():
            closeness[decay] = float((trainer.head(v) * v).sum(-1).mean())
        terms[decay] = set(trainer.history[0].terms)
    assert "identity" in terms[5.0] and "identity" not in terms[0.0]  # the spec's objective is untouched by default
    assert closeness[5.0] > closeness[0.0] + 0.01


def test_centred_raw_clip_ships_as_the_closed_form_model_and_round_trips(tiny_clip, tmp_path):
    """``centred_mapping``: no head (identity), every domain centred on its training mean, queries
    mapped by the text map fitted on centred text; saved and loaded, it embeds the same."""
    from clair_vec.method.centering import DomainCenters
    from clair_vec.training.selection import fold_maps

    feats, head = synthetic(tiny_clip.embed_dim)
    cfg = ClairConfig(clip_model="clair-tiny", clip_pretrained=None, prompt_side="none")
    text = {d: hand_crafted_text_embeddings(tiny_clip, CLASSES, d) for d in DOMAINS}
    trained = ClairModel(tiny_clip, head, DomainMapping.fit(text, "photo"), CLASSES, text, cfg)
    folds = {m: [0.5, 0.6] for m in ("raw_clip", "mapping_only", "clair", "chosen")}
    decision = {"blend": 0.0, "centered": True, "mapping": MAP_TEXT, "trusted": True, "gain": 0.1, "stderr": 0.01, "lower": 0.09}
    selection = {"metric": "mAP@200", "folds": [{}, {}], "gallery_blend": 0.0, "gallery_centered": True,
                 "domains": {d: {**decision, "folds": folds} for d in ("clipart", "sketch")}}  # fmt: skip
    clean = {d: f.clean for d, f in feats.items()}
    model, record = ship(trained, selection, clean, why_none="")
    assert record["shipped"] == "centred_mapping" and "warning" not in record
    assert set(model.routing.values()) == {0.0} and model.head.alpha.item() == 0.0
    again = ClairModel.load(model.save(tmp_path / "m"))
    centres = DomainCenters.fit(clean, lambda v, _d: F.normalize(v.float(), dim=-1))
    text_map = fold_maps(tiny_clip, cfg, CLASSES, DOMAINS, None)[(MAP_TEXT, True)]
    x = feats["sketch"].clean
    torch.testing.assert_close(again.embed_features(x, "sketch"), text_map.apply(centres.apply(x, "sketch"), "sketch"))
    torch.testing.assert_close(again.embed_features(x, "photo"), centres.apply(x, "photo"))  # the gallery: centred, unmapped
