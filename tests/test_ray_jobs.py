"""Ray Train / Ray Data: 2-worker training, equality with single-process training, resume, and
config errors before any worker starts. Every job is ``python ray_jobs/train.py`` in its own
process against the session's Ray head, as ``ray job submit`` runs it (that command itself:
test_ray_submit.py); bulk indexing: test_bulk_index.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("ray")

from clair_vec.datasets.folders import scan_folder, zero_shot_split  # noqa: E402
from clair_vec.method.config import ClairConfig  # noqa: E402
from clair_vec.method.foundation import FoundationModel  # noqa: E402
from clair_vec.method.model import ClairModel  # noqa: E402
from clair_vec.training.features import extract_features  # noqa: E402
from clair_vec.training.trainer import ClairTrainer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TRAIN = [sys.executable, str(ROOT / "ray_jobs" / "train.py")]
TINY = ["--clip-model", "clair-tiny", "--clip-pretrained", "none", "--batch-size", "48", "--set", "lr=0.003", "--gpus", "no"]


def train(ray_head, shapes_root: Path, store: Path, name: str, *args: str) -> tuple[list[dict], dict, Path]:
    """Run the training job; returns (per-epoch history, final metrics, model directory)."""
    out = subprocess.run([*TRAIN, "--data", str(shapes_root), *TINY, "--storage-path", str(store), "--name", name,
                          "--out", str(store / f"{name}-model"), "--json", *args],
                         capture_output=True, text=True, timeout=600, env=ray_head.env)  # fmt: skip
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    lines = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert "model written to" in out.stdout
    return [line for line in lines if "metrics" not in line], lines[-1]["metrics"], store / f"{name}-model"


def test_two_workers_train_the_head_and_checkpoint_round_trips(ray_head, shapes_root, tmp_path):
    history, metrics, model_dir = train(ray_head, shapes_root, tmp_path, "two", "--workers", "2", "--epochs", "4",
                                        "--val-fraction", "0")  # fmt: skip
    losses = [h["loss"] for h in history]
    # not a falling loss: with 2 workers on 48-image batches the contrastive loss is noise-dominated,
    # and it rises while the memory banks fill with negatives (single-process training, where the
    # trend is measurable, is checked in test_training_and_api)
    assert len(losses) == 4 and all(0 < x < 100 for x in losses), losses
    assert {"loss_inst_disc", "loss_instance", "loss_cluster", "loss_domain", "kept_fraction", "mean_confidence",
            "samples_per_s"} <= set(metrics)  # fmt: skip
    model = ClairModel.load(model_dir)
    seen, _ = zero_shot_split(scan_folder(shapes_root), unseen=(shapes_root / "unseen_classes.txt").read_text().split())
    assert model.classes == seen.classes and model.record["shipped"] == "clair" and "unchecked" in model.record["warning"]
    assert model.head.mlp[2].weight.abs().sum() > 0  # the head starts as the identity (zero last layer) and learned
    x = torch.nn.functional.normalize(torch.randn(3, model.dim), dim=-1)
    assert model.embed_features(x, "sketch").shape == (3, model.dim)


def test_ray_training_selects_per_domain_on_folds_run_as_ray_tasks(ray_head, shapes_root, tmp_path):
    history, _, model_dir = train(ray_head, shapes_root, tmp_path, "folds", "--epochs", "2")
    model = ClairModel.load(model_dir)
    sel = model.record["selection"]
    seen, _ = zero_shot_split(scan_folder(shapes_root), unseen=(shapes_root / "unseen_classes.txt").read_text().split())
    assert len(sel["folds"]) == 5 and {c for f in sel["folds"] for c in f["validation_classes"]} <= set(seen.classes)
    assert all(len(f["curve"]) == 2 for f in sel["folds"]) and len(history) == sel["epoch"] + 1
    assert model.classes == seen.classes  # the final model trains on every seen class
    assert model.routing == {"photo": sel["gallery_blend"], **{d: p["blend"] for d, p in sel["domains"].items()}}
    assert len(list((tmp_path / "folds").glob("folds-*.pt"))) == 1  # the folds, kept for a resumed run


def test_one_ray_worker_matches_single_process_training(ray_head, shapes_root, tmp_path):
    _, _, model_dir = train(ray_head, shapes_root, tmp_path, "one", "--workers", "1", "--epochs", "2", "--seed", "3",
                            "--val-fraction", "0")  # fmt: skip
    ray_model = ClairModel.load(model_dir)
    cfg = ClairConfig(clip_model="clair-tiny", clip_pretrained=None, batch_size=48, lr=3e-3, epochs=2, seed=3)
    seen, _ = zero_shot_split(scan_folder(shapes_root), unseen=(shapes_root / "unseen_classes.txt").read_text().split())
    fm = FoundationModel.load("clair-tiny", str(tmp_path / "one" / "foundation.pt"))
    feats = extract_features(fm, seen, n_views=cfg.n_views, seed=cfg.seed, progress=False)
    local = ClairTrainer(cfg.replace(clip_pretrained=fm.pretrained), fm, seen.classes, feats, progress=False)
    local.fit()
    for a, b in zip(local.head.state_dict().values(), ray_model.head.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_bad_input_fails_before_any_worker_starts(ray_head, shapes_root, tmp_path):
    out = subprocess.run([*TRAIN, "--data", str(tmp_path / "missing")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "train.py: error:" in out.stderr and "does not exist" in out.stderr
    assert "Started a local Ray instance" not in out.stderr + out.stdout  # refused before Ray was started
    out = subprocess.run([*TRAIN, "--data", str(shapes_root), *TINY[:-2], "--workers", "2", "--gpus", "yes",
                          "--storage-path", str(tmp_path), "--name", "y"],
                         capture_output=True, text=True, timeout=300, env=ray_head.env)  # fmt: skip
    assert out.returncode == 2, out.stderr[-2000:]
    assert "2 GPU workers requested but the Ray cluster has 0 GPUs" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "y").exists()  # nothing was computed or started
    for args, words in ((["--feature-actors", "0"], "feature_actors must be >= 1"), (["--val-fraction", "2"], "must lie in [0, 1)"),
                        (["--set", "lr=abc"], "lr takes a number")):  # fmt: skip
        out = subprocess.run([*TRAIN, "--data", str(shapes_root), *TINY, "--storage-path", str(tmp_path), "--name", "z", *args],
                             capture_output=True, text=True, timeout=120)  # fmt: skip
        assert out.returncode == 2 and words in out.stderr and "Traceback" not in out.stderr, out.stderr[-2000:]
        assert "Started a local Ray instance" not in out.stderr and not (tmp_path / "z").exists()


def test_rerunning_with_the_same_name_resumes(ray_head, shapes_root, tmp_path):
    first, _, _ = train(ray_head, shapes_root, tmp_path, "resume", "--epochs", "2", "--val-fraction", "0")
    again, _, _ = train(ray_head, shapes_root, tmp_path, "resume", "--epochs", "3", "--val-fraction", "0")
    assert [h["epoch"] for h in again] == [0, 1, 2]
    assert [h["loss"] for h in again[:2]] == [h["loss"] for h in first]  # epochs 0-1 were not redone
    # other settings under the same name used to train on from this run's checkpoint (or, past its
    # epochs, not at all) and write a model recorded with settings that were never used
    for args, words in ((["--epochs", "3", "--set", "lr=0.1"], "lr 0.003 -> 0.1"), (["--epochs", "2"], "for 3 epochs")):
        out = subprocess.run([*TRAIN, "--data", str(shapes_root), *TINY, "--storage-path", str(tmp_path), "--name", "resume",
                              "--out", str(tmp_path / "other"), "--val-fraction", "0", *args],
                             capture_output=True, text=True, timeout=600, env=ray_head.env)  # fmt: skip
        assert out.returncode == 2 and words in out.stderr and "give this run a new --name" in out.stderr, out.stderr[-3000:]
        assert len(out.stderr.strip().splitlines()) == 1 and not (tmp_path / "other").exists()


def test_a_ray_failure_is_said_in_one_line_by_its_innermost_cause_without_secrets():
    """Ray wraps a worker's error in its own (a task's, Ray Train's worker group's), and the jobs
    printed those pages, or a raw traceback for anything but a ClairVecError."""
    from ray.exceptions import RayTaskError
    from ray.train.v2.api.exceptions import WorkerGroupError

    from clair_vec.errors import BackendUnavailableError, DatasetError
    from clair_vec.ray_runtime import job_failure
    from clair_vec.store.redaction import register_secret

    register_secret("S3cretPW")
    task = RayTaskError("encode", "Traceback (most recent call last):\n  ...", ValueError("precision fp16 needs a CUDA device"))
    assert job_failure(task.as_instanceof_cause(), "index.py") == ("index.py: error: precision fp16 needs a CUDA device", 2)
    group = WorkerGroupError("Training failed due to worker errors:\n[Rank 0]\n...",
                             {0: DatasetError("pivot (gallery) domain 'painting' has no training images")})  # fmt: skip
    assert job_failure(group, "train.py") == ("train.py: error: pivot (gallery) domain 'painting' has no training images", 2)
    try:
        try:
            raise BackendUnavailableError("milvus at http://root:S3cretPW@127.0.0.1:1 still failed after 4 attempts")
        except BackendUnavailableError as exc:
            raise RuntimeError("UDF failed to process a data block.") from exc
    except RuntimeError as exc:
        line, code = job_failure(exc, "index.py")
    assert code == 2 and "S3cretPW" not in line and line.startswith("index.py: error: milvus at http://***@127.0.0.1:1")
    assert job_failure(RuntimeError("boom\nsecond line"), "index.py") == ("index.py: error: RuntimeError: boom", 1)
    line, code = job_failure(KeyboardInterrupt(), "index.py")
    assert code == 130 and "run the same command again to resume" in line
    try:  # raised while a ValueError was being handled: not caused by it, so not blamed on it
        try:
            int("x")
        except ValueError:
            raise RuntimeError("CUDA error: an illegal memory access") from None
    except RuntimeError as exc:
        assert job_failure(exc, "train.py") == ("train.py: error: RuntimeError: CUDA error: an illegal memory access", 1)
    from clair_vec.errors import WeightsNotFoundError

    try:  # ours says more than the OS error it wraps
        try:
            open("/nonexistent/w.pt")
        except FileNotFoundError as exc:
            raise WeightsNotFoundError("CLIP weights /nonexistent/w.pt do not exist; pass a file") from exc
    except WeightsNotFoundError as exc:
        assert job_failure(exc, "train.py") == ("train.py: error: CLIP weights /nonexistent/w.pt do not exist; pass a file", 2)


def test_a_run_name_is_refused_only_against_a_run_that_trained_and_not_for_how_its_paths_are_spelled(shapes_root, tmp_path,
                                                                                                    monkeypatch):  # fmt: skip
    """A first try that failed before any checkpoint (a mistyped --clip-model) must not lock its
    --name; nor may `--data data` against `--data /abs/data` count as other images."""
    from clair_vec.method.config import ClairConfig
    from clair_vec.training.job import plan_training
    from clair_vec.training.ray_train import _record_run, _run_identity, _same_run

    run = tmp_path / "runs" / "exp"
    config = ClairConfig(clip_model="clair-tiny", clip_pretrained=None, epochs=4)
    absolute = _run_identity(config, plan_training(shapes_root, 0, 0.0), 0.0)
    monkeypatch.chdir(shapes_root.parent)
    relative = _run_identity(config, plan_training(Path(shapes_root.name), 0, 0.0), 0.0)
    assert relative == absolute
    typo = _run_identity(config.replace(clip_model="ViT-B-3"), plan_training(shapes_root, 0, 0.0), 0.0)
    _record_run(run, typo)
    _same_run(run, "exp", absolute)  # the typo's run trained nothing: the corrected one may take its name
    _record_run(run, absolute)
    (run / "checkpoint_2026-12-07_10-00-00.000000").mkdir()
    _same_run(run, "exp", {**absolute, "epochs": 6})  # more epochs: the run goes on
    with pytest.raises(ValueError, match="clip_model 'clair-tiny' -> 'ViT-B-3'"):
        _same_run(run, "exp", typo)
    with pytest.raises(ValueError, match="started for 4 epochs, more than the 2 asked"):
        _same_run(run, "exp", {**absolute, "epochs": 2})


def test_the_ray_job_trains_from_unlabeled_images_and_class_names(ray_head, weak_root, tmp_path, seen_shapes):
    _, _, model_dir = train(ray_head, weak_root / "data", tmp_path, "weak", "--classes", str(weak_root / "classes.txt"),
                            "--validation", str(weak_root / "validation"), "--epochs", "1")  # fmt: skip
    model = ClairModel.load(model_dir)
    r = model.record
    assert model.classes == seen_shapes.classes and r["supervision"] == "class names only" and r["unseen_classes"] == []
    assert r["selection"]["folds"] and {c for f in r["selection"]["folds"] for c in f["validation_classes"]} <= set(seen_shapes.classes[:4])
