"""Ray Train / Ray Data: 2-worker training, equality with single-process training, and config
errors before any worker starts. ``ray job submit`` is in test_ray_submit.py, bulk indexing in
test_bulk_index.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ray = pytest.importorskip("ray")

from clair_vec.config import ClairConfig  # noqa: E402
from clair_vec.data import hold_out_classes, scan_folder, zero_shot_split  # noqa: E402
from clair_vec.distributed import run_training  # noqa: E402
from clair_vec.errors import DatasetError  # noqa: E402
from clair_vec.features import extract_features  # noqa: E402
from clair_vec.foundation import FoundationModel  # noqa: E402
from clair_vec.model import ClairModel  # noqa: E402
from clair_vec.trainer import ClairTrainer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CFG = dict(clip_model="clair-tiny", clip_pretrained=None, batch_size=48, lr=3e-3)


@pytest.fixture(scope="module")
def local_ray():
    os.environ["RAY_AUTH_MODE"] = "disabled"
    # address="local": a private cluster, never one a user (or another test) started on this machine
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def two_worker_run(local_ray, shapes_root, tmp_path_factory):
    store = tmp_path_factory.mktemp("ray")
    result = run_training(shapes_root, out=store / "model", config=ClairConfig(epochs=4, **CFG), storage_path=store,
                          name="two", workers=2, gpus="no")  # fmt: skip
    return store, result


def test_two_workers_lower_the_loss_and_checkpoint_round_trips(two_worker_run, shapes_root):
    store, result = two_worker_run
    losses = [h["loss"] for h in result.history]
    assert len(losses) == 4 and losses[-1] < losses[0]
    assert {"loss_instance", "loss_cluster", "loss_domain", "loss_prompt", "kept_fraction", "mean_confidence",
            "val_mAP@200", "samples_per_s"} <= set(result.metrics)  # fmt: skip
    assert 0.0 <= result.metrics["val_mAP@200"] <= 1.0
    model = ClairModel.load(result.model_dir)
    seen, _ = zero_shot_split(scan_folder(shapes_root), unseen=(shapes_root / "unseen_classes.txt").read_text().split())
    train, val = hold_out_classes(seen, 0.1, seed=0)
    assert model.classes == train.classes and not set(model.classes) & set(val.classes)  # validation classes never trained
    x = torch.nn.functional.normalize(torch.randn(3, model.dim), dim=-1)
    assert model.embed_features(x, "sketch").shape == (3, model.dim)


def test_one_ray_worker_matches_single_process_training(local_ray, shapes_root, tmp_path):
    cfg = ClairConfig(epochs=2, seed=3, **CFG)
    result = run_training(shapes_root, out=tmp_path / "m", config=cfg, storage_path=tmp_path, name="one", workers=1,
                          gpus="no", val_fraction=0.0)  # fmt: skip
    ray_model = ClairModel.load(result.model_dir)
    seen, _ = zero_shot_split(scan_folder(shapes_root), unseen=(shapes_root / "unseen_classes.txt").read_text().split())
    fm = FoundationModel.load("clair-tiny", str(tmp_path / "one" / "foundation.pt"))
    feats = extract_features(fm, seen, n_views=cfg.n_views, seed=cfg.seed, progress=False)
    local = ClairTrainer(cfg.replace(clip_pretrained=fm.pretrained), fm, seen.classes, feats, progress=False)
    local.fit()
    for a, b in zip(local.head.state_dict().values(), ray_model.head.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_bad_config_fails_before_any_worker_starts(local_ray, shapes_root, tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        run_training(tmp_path / "no-data", out=tmp_path / "m", config=ClairConfig(**CFG), storage_path=tmp_path, name="x")
    with pytest.raises(ValueError, match="2 GPU workers requested but the Ray cluster has 0 GPUs"):
        run_training(shapes_root, out=tmp_path / "m", config=ClairConfig(**CFG), storage_path=tmp_path, name="y",
                     workers=2, gpus="yes")  # fmt: skip
    assert not (tmp_path / "y").exists()  # nothing was computed or started


def test_train_script_reports_bad_data_dir_without_starting_ray(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "ray_jobs" / "train.py"), "--data", str(tmp_path / "missing")],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 2
    assert "train.py: error:" in out.stderr and "does not exist" in out.stderr
    assert "Started a local Ray instance" not in out.stderr + out.stdout


def test_rerunning_with_the_same_name_resumes(local_ray, shapes_root, tmp_path):
    cfg = ClairConfig(epochs=2, **CFG)
    first = run_training(shapes_root, out=tmp_path / "m", config=cfg, storage_path=tmp_path, name="resume", gpus="no",
                         val_fraction=0.0)  # fmt: skip
    again = run_training(shapes_root, out=tmp_path / "m", config=cfg.replace(epochs=3), storage_path=tmp_path,
                         name="resume", gpus="no", val_fraction=0.0)  # fmt: skip
    assert [h["epoch"] for h in again.history] == [0, 1, 2]
    assert [h["loss"] for h in again.history[:2]] == [h["loss"] for h in first.history]  # epochs 0-1 were not redone
