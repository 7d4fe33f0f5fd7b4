"""What `clair-vec train` and `evaluate --report` write, where they refuse to write, and how a run
that goes wrong ends: nothing of the user's is replaced, nothing broken ships, and every refusal
comes before the work, in one line that says what to do."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from conftest import run_cli

from clair_vec.errors import ClairVecError, DatasetError, TrainingDivergedError

TINY = ["--clip-model", "clair-tiny", "--clip-pretrained", "none", "--epochs", "1", "--batch-size", "48"]


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_train_refuses_an_out_that_saving_would_destroy_before_it_trains(shapes_root, tmp_path):
    """`--out` pointed at a folder of the user's, at the dataset itself, or above it, used to train
    for minutes and then delete that folder to put the model in its place."""
    data = tmp_path / "data"
    shutil.copytree(shapes_root, data)
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.txt").write_text("years of work")
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    before = _tree(data)
    cases = [
        (precious, "holds something other than a clair_vec model (no clair.json)"),
        (data, "is inside --data"),
        (data / "models" / "m", "is inside --data"),
        (tmp_path, "is inside --out"),  # the dataset is inside --out, which saving replaces
        (afile, "exists and is not a folder"),
    ]
    for out, words in cases:
        r = run_cli("train", "--data", str(data), "--out", str(out), *TINY)
        assert r.returncode == 2 and words in r.stderr and "Traceback" not in r.stderr and "epoch" not in r.stdout, (out, r.stderr)
    # a cache this run would make inside --out would turn it into a folder that is no model, refused
    # only by the save after training; so is "." (saving moves a folder aside by its name)
    for extra, words in ((["--out", str(tmp_path / "m"), "--cache-dir", str(tmp_path / "m" / "cache")], "--cache-dir"),
                         (["--out", "."], "names no folder of its own")):  # fmt: skip
        r = run_cli("train", "--data", str(data), *extra, *TINY, cwd=tmp_path / "precious")
        assert r.returncode == 2 and words in r.stderr and "epoch" not in r.stdout, r.stderr
    assert not (tmp_path / "m").exists()
    assert _tree(data) == before and (precious / "thesis.txt").read_text() == "years of work" and afile.read_text() == "keep me"
    assert not (data / "models").exists() and not any(p.name.startswith(".") for p in tmp_path.iterdir())


def test_saving_over_a_model_is_refused_only_where_no_model_is(model_dir, tmp_path):
    from clair_vec.method.model import ClairModel, check_replaceable

    model = ClairModel.load(model_dir)
    empty = tmp_path / "empty"
    empty.mkdir()
    check_replaceable(empty)  # an empty folder, an earlier model and a new path are what --out is for
    check_replaceable(model_dir)
    check_replaceable(tmp_path / "new")
    again = model.save(tmp_path / "again")
    assert model.save(again) == again and ClairModel.load(again).model_id == model.model_id
    assert oct(again.stat().st_mode & 0o777) == oct(0o777 & ~_umask())  # not mkdtemp's 0700: a service may run as another user
    (empty / "notes.txt").write_text("mine")
    with pytest.raises(ClairVecError, match="no clair.json"):
        model.save(empty)
    assert (empty / "notes.txt").read_text() == "mine"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_save_interrupted_between_its_two_renames_puts_the_earlier_model_back(model_dir, tmp_path, monkeypatch):
    """The earlier model was moved aside, the new one not yet in place: the handler deleted the new
    one and left the old one under a hidden name the next save deletes, so --out held no model."""
    from clair_vec.method import model as model_module
    from clair_vec.method.model import ClairModel

    out = tmp_path / "m"
    shutil.copytree(model_dir, out)
    before = _tree(out)
    real_replace, calls = os.replace, []

    def replace(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # the new model into place
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(model_module.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        ClairModel.load(model_dir).save(out)
    assert len(calls) == 3 and _tree(out) == before  # the third rename put it back
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_a_diverged_run_is_an_error_that_names_the_learning_rate_and_saves_nothing(shapes_root, tiny_clip, tmp_path):
    """lr=1e30 trained to NaN weights, the folds scored the NaN embeddings as a gain, `train` said
    "shipped clair" and exited 0, and every later command failed to load the model."""
    from clair_vec.method.config import ClairConfig
    from clair_vec.training.job import train_local

    cfg = ClairConfig(clip_model="clair-tiny", clip_pretrained=None, epochs=2, batch_size=48, lr=1e30)
    with pytest.raises(TrainingDivergedError, match=r"training diverged in epoch 1: .* at learning rate 1e\+30\. Lower the learning rate"):
        train_local(shapes_root, cfg, foundation=tiny_clip, progress=False, val_fraction=0)
    for bad in ("nan", "inf", "-inf"):
        with pytest.raises(ValueError, match=f"ClairConfig.lr must be a finite number, got {bad}$"):
            ClairConfig(lr=float(bad))
    r = run_cli("train", "--data", str(shapes_root), "--out", str(tmp_path / "m"), *TINY, "--set", "lr=1e30", "--val-fraction", "0")
    assert r.returncode == 2 and "training diverged" in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert not (tmp_path / "m").exists()


def test_data_of_the_gallery_domain_alone_is_refused_before_any_image_is_encoded(shapes_root, tmp_path):
    from clair_vec.datasets.folders import scan_folder
    from clair_vec.training.job import check_domains

    photos = scan_folder(shapes_root, ["photo"])
    with pytest.raises(DatasetError, match="only the gallery domain 'photo' has training images"):
        check_domains(photos, "photo")
    with pytest.raises(DatasetError, match=r"the gallery domain 'photo' has no training images; the data has \['sketch'\]"):
        check_domains(scan_folder(shapes_root, ["sketch"]), "photo")
    check_domains(scan_folder(shapes_root), "photo")
    one = tmp_path / "one"
    shutil.copytree(shapes_root / "photo", one / "photo")
    shutil.copy(shapes_root / "seen_classes.txt", one)
    shutil.copy(shapes_root / "unseen_classes.txt", one)
    r = run_cli("train", "--data", str(one), "--out", str(tmp_path / "m"), *TINY)
    assert r.returncode == 2 and "only the gallery domain" in r.stderr and "shipped" not in r.stdout, r.stderr


def test_a_dataset_given_as_a_url_is_named_as_one_with_its_password_masked(tmp_path):
    url = "http://root:S3cretPlanted@127.0.0.1:1/data"
    for args in (["train", "--out", str(tmp_path / "m"), *TINY], ["bootstrap-clip", "--out", str(tmp_path / "c.pt")]):
        r = run_cli(*args, "--data", url)
        assert r.returncode == 2 and "'http://***@127.0.0.1:1/data' is a URL" in r.stderr, r.stderr
        assert "S3cretPlanted" not in r.stdout + r.stderr


def test_set_refuses_a_field_with_a_flag_of_its_own_naming_the_flag():
    """`--set epochs=1` was Python's "got multiple values for keyword argument 'epochs'"."""
    from clair_vec.method.config import TRAINING_FLAGS, parse_overrides

    for item, flag in (("epochs=1", "--epochs 1"), ("pivot_domain=sketch", "--pivot sketch"), ("seed=3", "--seed 3")):
        with pytest.raises(ValueError, match=f"has a flag of its own; use {flag}"):
            parse_overrides([item], TRAINING_FLAGS)
    assert parse_overrides(["epochs=1"]) == {"epochs": 1}  # the Python API has no such flags


def test_a_domain_folder_named_with_braces_makes_a_prompt_not_a_format_error():
    """"sk{" crashed training, "sk{}" and "sk{0.__class__}" too, and "sk{0}" named the class twice."""
    from clair_vec.method.config import ClairConfig
    from clair_vec.method.prompts import domain_templates

    assert [domain_templates(d)[0].format("dog") for d in ("sk{", "sk{0}", "sk{0.__class__}")] == [
        "a sk( of a dog.", "a sk(0) of a dog.", "a sk(0. class ) of a dog."]  # fmt: skip
    for bad in (["a {} of a {}."], ["a {0.__class__} of a {}."], ["a sketch"], ["a {"], "a {}", []):
        with pytest.raises(ValueError, match=r"ClairConfig.templates\['sketch'\]"):
            ClairConfig(templates={"sketch": bad})
    assert ClairConfig(templates={"sketch": ["a {{rough}} sketch of a {}."]}).templates["sketch"][0].format("dog") == "a {rough} sketch of a dog."


def test_a_report_chart_shows_dollar_signs_as_written(tmp_path):
    """matplotlib read `$...$` in a domain name as TeX: `sk$\\nocmd$` failed the whole report."""
    from PIL import Image

    from clair_vec.evaluation.report import _bar_chart

    scores = {"mAP@200": 0.4, "P@200": 0.3, "mAP@all": 0.35}
    row = {"query": "sk$\\nocmd$", "gallery": "photo", "raw_clip": scores, "model": scores, "shipped": "cl$a$ir", "chance": 0.2}
    assert _bar_chart({"k": 200, "rows": [row]}, tmp_path) == "metrics.png"
    assert Image.open(tmp_path / "metrics.png").size[0] > 100


def test_evaluate_refuses_a_report_folder_it_would_mix_into_the_data_or_a_model(model_dir, shapes_root, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(shapes_root, data)
    for report, words in ((data / "report", "is inside --data"), (model_dir / "report", "is inside --model"),
                          (model_dir / "clair.json", "is a file")):  # fmt: skip
        r = run_cli("evaluate", "--model", str(model_dir), "--data", str(data), "--report", str(report))
        assert r.returncode == 2 and words in r.stderr and "mAP" not in r.stdout, r.stderr
    assert not (data / "report").exists() and not (model_dir / "report").exists()


def test_an_interrupted_command_says_truthfully_what_it_left(monkeypatch, capsys):
    """After Ctrl-C `train` said "run the same command again to resume": training starts over."""
    from clair_vec import cli
    from clair_vec.cli import train

    def interrupted(_args):
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "cmd_train", interrupted)
    assert cli.main(["train", "--data", "d", "--out", "o"]) == 130
    err = capsys.readouterr().err
    assert "saved only once training ends" in err and "train anew" in err and "resume" not in err


def test_a_fold_share_outside_0_to_1_is_refused_even_where_the_split_is_given(shapes_root, tiny_clip):
    """`benchmark run` hands train_local its protocol's split, which skipped the check: --val-fraction 5
    trained and wrote results, and nan failed as "cannot convert float NaN to integer"."""
    from clair_vec.datasets.folders import plan_split
    from clair_vec.method.config import ClairConfig
    from clair_vec.training.job import train_local

    cfg = ClairConfig(clip_model="clair-tiny", clip_pretrained=None, epochs=1, batch_size=48)
    for bad in (5.0, 1.0, -0.1, float("nan")):
        with pytest.raises(ValueError, match=r"val_fraction must lie in \[0, 1\)"):
            train_local(shapes_root, cfg, foundation=tiny_clip, split=plan_split(shapes_root, 0, 0.3), val_fraction=bad, progress=False)
