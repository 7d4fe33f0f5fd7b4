"""Weak supervision as the paper defines it: unlabeled images of several domains plus class names.

The data (conftest's ``weak_root``) is the shapes dataset's seen classes re-laid as
``ROOT/<domain>/<image>`` with assorted nesting and no class folders; four of its classes, laid out
with class folders, are the small labeled validation folder. The Ray job's run of it:
test_ray_jobs.py.
"""

from __future__ import annotations

import json
import random
import shutil

import pytest
import torch

from clair_vec.datasets.folders import MultiDomainDataset, Split
from clair_vec.datasets.unlabeled import UNLABELED, plan_weak_split, scan_unlabeled
from clair_vec.errors import ClairVecError, DatasetError
from clair_vec.method.config import ClairConfig
from clair_vec.training.job import plan_training, train_local
from tests.conftest import run_cli

TINY = dict(clip_model="clair-tiny", clip_pretrained=None, epochs=2, batch_size=48, lr=3e-3)


def test_unlabeled_images_are_found_at_any_depth_and_carry_no_label(weak_root, seen_shapes):
    ds = scan_unlabeled(weak_root / "data", seen_shapes.classes)
    assert len(ds) == len(seen_shapes) and ds.domains == seen_shapes.domains
    assert {i.label for i in ds.items} == {UNLABELED}
    split = plan_weak_split(weak_root / "data", weak_root / "classes.txt", validation=weak_root / "validation")
    assert split.classes == seen_shapes.classes and split.unseen.items == []  # the file's order, comments dropped
    assert split.validation is not None and split.validation.classes == seen_shapes.classes[:4]
    # the validation images are copies of training images here: a fold must not train on what it validates on
    assert len(split.train) == len(seen_shapes) - len(split.validation)
    assert sum("a --validation image" in why for _, why in split.train.skipped) == len(split.validation)
    assert split.record()["supervision"] == "class names only" and split.record()["seen_classes"] == seen_shapes.classes


def test_class_folders_below_a_domain_label_only_vocabulary_classes(seen_shapes, shapes_root):
    ds = scan_unlabeled(shapes_root, seen_shapes.classes)  # class folders of seen and unseen classes
    labels = {i.label for i in ds.items}
    assert labels == set(seen_shapes.classes) | {UNLABELED}  # an unseen class's folder names no vocabulary class


def test_folds_of_a_weak_run_leave_two_known_class_names_to_train_with():
    from clair_vec.training.folds import class_folds

    # the validation folder's classes are the vocabulary's and two others: a fold may not hold out a and b both
    folds = class_folds(["a", "b", "x", "y"], fraction=0.5, seed=0, max_folds=10, vocabulary=["a", "b"])
    assert folds == [["x", "y"]]
    # three labeled classes make folds when the vocabulary is larger: each fold still trains on four names
    assert len(class_folds(["a", "b", "c"], fraction=0.5, seed=0, max_folds=3, vocabulary=list("abcdef"))) == 3
    assert class_folds(["a", "b", "c"], fraction=0.5, seed=0, max_folds=3) == []  # labeled: one class left to train on
    assert class_folds(["a", "b"], fraction=0.5, seed=0, max_folds=3, vocabulary=["a", "b"]) == []


def _head(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.head.state_dict().items()}


@pytest.mark.parametrize("weak", [True, False], ids=["class-names", "class-folders"])
def test_permuting_the_folder_labels_leaves_the_head_weights_identical(tiny_clip, seen_shapes, weak):
    """Labels never reach the losses, not even those that use labels: every term is on, and they
    use CLIP's pseudo-labels. Only validation reads folder labels, and it is off here."""
    cfg = ClairConfig(**TINY, w_instance=1.0, w_cluster=1.0, w_domain=1.0, selection_folds=0)
    labels = [i.label for i in seen_shapes.items]
    shuffled = labels[:]
    random.Random(1).shuffle(shuffled)
    assert shuffled != labels
    permuted = MultiDomainDataset([type(i)(i.path, i.domain, lbl) for i, lbl in zip(seen_shapes.items, shuffled, strict=True)],
                                  seen_shapes.root)  # the same root: views are seeded by the path under it  # fmt: skip
    empty = MultiDomainDataset([])
    vocabulary = seen_shapes.classes if weak else None
    heads = []
    for ds in (seen_shapes, permuted):
        split = Split(ds, None, empty, 0, vocabulary=vocabulary)
        heads.append(_head(train_local("", cfg, foundation=tiny_clip, split=split, val_fraction=0, progress=False)))
    assert heads[0].keys() == heads[1].keys()
    assert all(torch.equal(heads[0][k], heads[1][k]) for k in heads[0])
    assert any(v.abs().sum() > 0 for k, v in heads[0].items() if k.startswith("mlp.2"))  # it trained


def test_without_labels_or_a_validation_folder_raw_clip_ships_and_says_why(tiny_clip, weak_root, tmp_path):
    model = train_local(weak_root / "data", ClairConfig(**TINY), foundation=tiny_clip, classes=weak_root / "classes.txt",
                        progress=False)  # fmt: skip
    def strict(token: str):
        raise AssertionError(f"{token} is not JSON")

    json.loads((model.save(tmp_path / "m") / "clair.json").read_text(), parse_constant=strict)  # no NaN where nothing is labeled
    r = model.record
    assert r["shipped"] == "raw_clip" and "--validation ROOT" in r["warning"] and "--val-fraction 0" in r["warning"]
    assert r["supervision"] == "class names only"
    stats = r["stats"]["domains"]
    assert all(s["labeled_images"] == 0 and s["pseudo_label_accuracy"] is None for s in stats.values())


def test_the_validation_folder_feeds_the_selection_folds(tiny_clip, weak_root, seen_shapes):
    model = train_local(weak_root / "data", ClairConfig(**TINY), foundation=tiny_clip, classes=weak_root / "classes.txt",
                        validation=weak_root / "validation", progress=False)  # fmt: skip
    folds = model.record["selection"]["folds"]
    assert folds and all(set(f["validation_classes"]) <= set(seen_shapes.classes[:4]) for f in folds)
    assert model.classes == seen_shapes.classes and model.record["validation_classes"]
    # the validation folder's images join training unlabeled; only they are labeled
    stats = model.record["stats"]["domains"]
    assert all(0 < s["labeled_images"] < s["images"] for s in stats.values())


def test_train_index_search_from_unlabeled_images_in_separate_processes(weak_root, tmp_path):
    clip = tmp_path / "clip.pt"
    from clair_vec.method.foundation import FoundationModel

    torch.manual_seed(0)
    torch.save(FoundationModel.load("clair-tiny", None).state_dict(), clip)
    out, uri = tmp_path / "model", str(tmp_path / "g.db")
    t = run_cli("train", "--data", str(weak_root / "data"), "--classes", str(weak_root / "classes.txt"), "--validation",
                str(weak_root / "validation"), "--out", str(out), "--clip-model", "clair-tiny", "--clip-pretrained", str(clip),
                "--epochs", "1", "--batch-size", "48")  # fmt: skip
    assert t.returncode == 0, t.stderr[-2000:]
    assert "unlabeled images and 8 class names" in t.stdout
    meta = json.loads((out / "clair.json").read_text())
    assert meta["training"]["supervision"] == "class names only"
    folders = sorted((weak_root / "validation" / "photo").iterdir())[:2]  # two classes' photos
    i = run_cli("index", "--model", str(out), "--collection", "g", "--uri", uri, "--label-from-folder", *map(str, folders))
    assert i.returncode == 0, i.stderr[-2000:]
    query = sorted((weak_root / "validation" / "sketch" / folders[0].name).iterdir())[0]
    s = run_cli("search", "--model", str(out), "--collection", "g", "--uri", uri, "--domain", "sketch", "--top-k", "3",
                str(query))  # fmt: skip
    assert s.returncode == 0, s.stderr[-2000:]
    hits = json.loads(s.stdout.strip().splitlines()[-1])["hits"]
    assert len(hits) == 3 and {h["label"] for h in hits} <= {f.name for f in folders}


def test_bad_weak_inputs_each_give_one_clear_line(weak_root, tmp_path):
    one = tmp_path / "one.txt"
    one.write_text("cat\n")
    cases = [
        (dict(classes=tmp_path / "missing.txt"), "does not exist"),
        (dict(classes=one), "names 1 class"),
        (dict(classes=weak_root / "classes.txt", validation=tmp_path / "nowhere"), "does not exist"),
        (dict(validation=weak_root / "validation"), "--validation goes with --classes"),
    ]
    for kwargs, words in cases:
        with pytest.raises(DatasetError, match=words):
            plan_training(weak_root / "data", 0, 0.3, **kwargs)
    folder = tmp_path / "adir"
    folder.mkdir()
    binary = tmp_path / "b.txt"
    binary.write_bytes(b"\x80\x81 not text")
    for path, words in ((folder, "is a folder"), (binary, "is not UTF-8 text")):
        with pytest.raises(DatasetError, match=f"class-name file .* {words}"):
            plan_training(weak_root / "data", 0, 0.3, classes=path)
    sharp = tmp_path / "sharp.txt"
    sharp.write_text("# languages\nC# code\nF# code\n")
    assert plan_training(weak_root / "data", 0, 0.3, classes=sharp).classes == ["C# code", "F# code"]
    loose_val = tmp_path / "loose_val"
    for domain in ("clipart", "photo", "sketch"):
        (loose_val / domain).mkdir(parents=True)
        shutil.copy(next((weak_root / "validation" / domain).rglob("*.png")), loose_val / domain / "a.png")
    with pytest.raises(DatasetError, match="class folders of the --validation folder") as err:
        plan_training(weak_root / "data", 0, 0.3, classes=weak_root / "classes.txt", validation=loose_val)
    assert "--classes" not in str(err.value)  # it was given: the hint is for training data, not this folder
    partial = tmp_path / "partial" / "photo" / "circle"
    partial.mkdir(parents=True)
    shutil.copy(next((weak_root / "validation" / "photo").rglob("*.png")), partial)
    with pytest.raises(DatasetError, match=r"no \['clipart', 'sketch'\] images"):
        plan_training(weak_root / "data", 0, 0.3, classes=weak_root / "classes.txt", validation=partial.parent.parent)
    # unlabeled images without --classes: the error says how to train from them
    loose = tmp_path / "loose"
    for domain in ("photo", "sketch"):
        (loose / domain).mkdir(parents=True)
        shutil.copy(next((weak_root / "validation" / domain).rglob("*.png")), loose / domain / "a.png")
    with pytest.raises(ClairVecError, match="2 images sit directly in the domain folders.*pass --classes FILE"):
        plan_training(loose, 0, 0.3)
    r = run_cli("train", "--data", str(loose), "--out", str(tmp_path / "m"), "--clip-model", "clair-tiny",
                "--clip-pretrained", "none")  # fmt: skip
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "pass --classes FILE" in r.stderr, r.stderr
