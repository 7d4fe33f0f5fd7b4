"""The harness that starts the suite's Milvus server tells a slow start from a dead server.

CI once failed before any test ran: the ``milvus-server`` launcher was still unpacking its binary
on a slow disk after the 5 s grace the harness allowed, had no child yet, and was called dead.
These fake launchers stand in for the real one: a launcher is a process that, once its binary is
unpacked, opens ``logs/milvus-stdout.log`` and then spawns the binary as its child.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from servers import free_port, stop_group, wait_for_milvus

LAUNCHER = """
import os, subprocess, sys, time
data, unpack_s, child = sys.argv[1], float(sys.argv[2]), sys.argv[3]
time.sleep(unpack_s)  # unpacking the binary
os.makedirs(os.path.join(data, "logs"), exist_ok=True)
open(os.path.join(data, "logs", "milvus-stdout.log"), "w").write("binary says: " + child + "\\n")
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)" if child == "lives" else "raise SystemExit(1)"])
time.sleep(60)  # the real launcher keeps waiting after its binary died
"""


def _launch(tmp_path: Path, unpack_s: float, child: str) -> tuple[subprocess.Popen, Path]:
    log = tmp_path / "server.log"
    log.write_text("")
    proc = subprocess.Popen([sys.executable, "-c", LAUNCHER, str(tmp_path), str(unpack_s), child],
                            start_new_session=True)  # fmt: skip
    return proc, log


def test_a_launcher_still_unpacking_its_binary_is_waited_for_not_called_dead(tmp_path):
    proc, log = _launch(tmp_path, unpack_s=8, child="lives")
    try:
        # nothing listens on the port, so the wait can only end in its own timeout, never in "died"
        with pytest.raises(TimeoutError, match="did not answer"):
            wait_for_milvus(f"http://127.0.0.1:{free_port()}", proc, timeout=12, log=log, launcher=True)
        assert proc.poll() is None
    finally:
        stop_group(proc.pid, proc)


def test_a_binary_that_dies_under_a_living_launcher_is_reported_with_its_log(tmp_path):
    proc, log = _launch(tmp_path, unpack_s=0, child="dies")
    try:
        with pytest.raises(RuntimeError, match="died before answering") as err:
            wait_for_milvus(f"http://127.0.0.1:{free_port()}", proc, timeout=60, log=log, launcher=True)
        assert "binary says: dies" in str(err.value)
    finally:
        stop_group(proc.pid, proc)
