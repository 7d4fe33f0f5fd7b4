"""`ray job submit -- python ray_jobs/train.py` against a Ray head that the test starts and stops."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("ray")

from servers import free_port  # noqa: E402

from clair_vec.model import ClairModel  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _stop_group(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def test_ray_job_submit_against_a_local_head(shapes_root, tmp_path):
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1"}
    env.pop("RAY_ADDRESS", None)
    port, dash = free_port(), free_port()
    temp = Path(f"/tmp/ray-t{os.getpid()}")  # short: Ray's socket paths must fit in 107 bytes
    head = [str(bin_dir / "ray"), "start", "--head", f"--port={port}", f"--dashboard-port={dash}", "--num-cpus=2",
            "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--temp-dir={temp}", "--disable-usage-stats"]  # fmt: skip
    # --block keeps `ray start` in the foreground; ending its process group stops exactly this head
    # (`ray stop` would stop every Ray process on the machine, a user's cluster included)
    proc = subprocess.Popen([*head, "--block"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # fmt: skip
    try:
        job = [str(bin_dir / "ray"), "job", "submit", f"--address=http://127.0.0.1:{dash}", "--",
               sys.executable, str(ROOT / "ray_jobs" / "train.py"), "--data", str(shapes_root), "--clip-model", "clair-tiny",
               "--clip-pretrained", "none", "--epochs", "1", "--batch-size", "48", "--gpus", "auto",
               "--storage-path", str(tmp_path / "store"), "--out", str(tmp_path / "model")]  # fmt: skip
        deadline = time.monotonic() + 120
        while True:  # the dashboard's job server starts a few seconds after `ray start` returns
            out = subprocess.run(job, env=env, capture_output=True, text=True, timeout=600)
            refused = any(w in out.stdout + out.stderr for w in ("Connection refused", "Failed to connect", "ConnectionError"))
            if out.returncode == 0 or time.monotonic() > deadline or not refused:
                break
            time.sleep(3)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        assert "model written to" in out.stdout
        assert ClairModel.load(tmp_path / "model").domains == ["clipart", "photo", "sketch"]
    finally:
        _stop_group(proc)


