"""`ray job submit -- python ray_jobs/train.py` against the session's Ray head, as the README shows it."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("ray")

from clair_vec.method.model import ClairModel  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def test_ray_job_submit_against_a_running_head(ray_head, shapes_root, tmp_path):
    job = [str(Path(sys.executable).parent / "ray"), "job", "submit", f"--address={ray_head.dashboard}", "--",
           sys.executable, str(ROOT / "ray_jobs" / "train.py"), "--data", str(shapes_root), "--clip-model", "clair-tiny",
           "--clip-pretrained", "none", "--epochs", "1", "--batch-size", "48", "--gpus", "auto",
           "--storage-path", str(tmp_path / "store"), "--out", str(tmp_path / "model")]  # fmt: skip
    env = {k: v for k, v in ray_head.env.items() if k != "RAY_ADDRESS"}  # the job server sets it for the job
    deadline = time.monotonic() + 60
    while True:  # the job server may still be settling right after the head came up
        out = subprocess.run(job, env=env, capture_output=True, text=True, timeout=600)
        refused = any(w in out.stdout + out.stderr for w in ("Connection refused", "Failed to connect", "ConnectionError"))
        if out.returncode == 0 or time.monotonic() > deadline or not refused:
            break
        time.sleep(3)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "model written to" in out.stdout
    assert ClairModel.load(tmp_path / "model").domains == ["clipart", "photo", "sketch"]
