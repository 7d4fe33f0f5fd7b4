"""One Ray head for the whole test session, in its own process group: the suite's Ray jobs, Ray
Serve and `ray job submit` run as separate processes against it (RAY_ADDRESS), as users run them.
No Ray driver ever runs inside the pytest process: a Ray driver left behind by ``ray.shutdown()``
can crash the process at exit (see clair_vec.ray_runtime)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from servers import free_port


@dataclass
class RayHead:
    address: str  # host:port of the GCS, for RAY_ADDRESS
    dashboard: str  # http://host:port, for `ray job submit`
    proc: subprocess.Popen

    @property
    def env(self) -> dict[str, str]:
        """The environment of a process that should join this head."""
        return {**os.environ, "RAY_ADDRESS": self.address}

    def stop(self) -> None:
        for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.proc.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue


def start_head(num_cpus: int = 2, timeout: float = 120) -> RayHead:
    ray = str(Path(sys.executable).parent / "ray")
    port, dash = free_port(), free_port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    # --block keeps `ray start` in the foreground; ending its process group stops exactly this head
    # (`ray stop` would stop every Ray process on the machine, a user's cluster included)
    proc = subprocess.Popen([ray, "start", "--head", f"--port={port}", f"--dashboard-port={dash}", f"--num-cpus={num_cpus}",
                             "--include-dashboard=true", "--dashboard-host=127.0.0.1", "--disable-usage-stats", "--block"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    head = RayHead(f"127.0.0.1:{port}", f"http://127.0.0.1:{dash}", proc)
    deadline = time.monotonic() + timeout
    while True:  # the job server answers last: once it does, the head takes drivers and jobs
        try:
            with urllib.request.urlopen(f"{head.dashboard}/api/version", timeout=2) as r:
                if r.status == 200:
                    return head
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            head.stop()
            raise RuntimeError(f"the Ray head did not start within {timeout:.0f} s (exit status {proc.poll()})")
        time.sleep(1)
