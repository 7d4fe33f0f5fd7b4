"""Start the servers the test suite talks to, run a command, stop them.

    python tests/servers.py -- python -m pytest -q

Starts, on loopback ports chosen free:
- a real Milvus standalone server (PyPI ``milvus==2.3.5``, installed by ``make test`` in its own
  venv, ``.venv-milvus``, so its pins never touch pymilvus 3.0.2): exported as ``MILVUS_URI``;
- a ``milvus-lite server`` process, a Lite store served to other processes: ``MILVUS_LITE_URI``.

``MILVUS_SERVER_PIDFILE`` names a file holding the server's process-group id, its data directory
and port: a test may restart the server (stop that group, start the same data on the same port)
and record the new group there; this script stops whatever group the file names at exit. (Two
2.3.5 standalone servers cannot run side by side: the embedded etcd's peer port 2380 is fixed.)
Each server runs in its own process group, stopped as a group on exit whatever the command did.
A missing Milvus venv is reported and its tests skip; a server that fails to start fails the run
(CI must not turn a broken server into silently skipped tests).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MILVUS_BIN = Path(os.environ.get("MILVUS_SERVER_BIN", ROOT / ".venv-milvus" / "bin" / "milvus-server"))
LITE_BIN = Path(sys.executable).parent / "milvus-lite"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _live_children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(stat.parent.name))
    return out


def wait_for_milvus(
    uri: str, proc: subprocess.Popen | None, timeout: float, log: Path | None = None, *, launcher: bool = False
) -> None:
    """Until the server answers a list_collections over gRPC (its /healthz port is chosen by the
    launcher, so the gRPC port the tests use is what is polled). ``launcher``: ``proc`` is the
    milvus-server launcher, which keeps running when the ``milvus`` binary it starts dies."""
    from pymilvus import MilvusClient

    deadline = time.monotonic() + timeout
    # The launcher unpacks the binary before it starts it: on a slow disk that takes longer than any
    # fixed grace period, and a launcher with no child then is not a dead server (CI failed on
    # exactly that). It opens logs/milvus-stdout.log right before it spawns the binary, so the
    # binary counts as started from then, and as dead when, 5 s later, the launcher has no child.
    spawn_log = log.parent / "logs" / "milvus-stdout.log" if log is not None else None
    spawned: float | None = None
    last: Exception | None = None
    while time.monotonic() < deadline:
        if launcher and spawned is None and (spawn_log is None or spawn_log.exists()):
            spawned = time.monotonic()
        dead = proc is not None and (proc.poll() is not None or (launcher and spawned is not None
                                                                  and time.monotonic() - spawned > 5
                                                                  and not _live_children(proc.pid)))  # fmt: skip
        if dead:
            logs = [log] if log else []
            if log is not None:
                logs += sorted(log.parent.glob("logs/milvus-std*.log"))
            tail = "\n".join(f"--- {f}\n" + f.read_text(errors="replace")[-1500:] for f in logs if f.exists())
            raise RuntimeError(f"Milvus server at {uri} died before answering\n{tail}")
        try:
            client = MilvusClient(uri=uri, timeout=3)
            client.list_collections()
            client.close()
            return
        except Exception as exc:  # not up yet
            last = exc
            time.sleep(1)
    why = " (the launcher never started the binary: no logs/milvus-stdout.log)" if launcher and spawned is None else ""
    raise TimeoutError(f"Milvus at {uri} did not answer within {timeout:.0f} s{why}: {last}")


class MilvusServer:
    """One ``milvus-server`` (2.3.5 standalone) on a data directory; restartable on the same port."""

    def __init__(self, data_dir: str | Path, port: int | None = None, binary: Path = MILVUS_BIN) -> None:
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.binary = binary
        self.proc: subprocess.Popen | None = None
        self.pgid: int | None = None

    @classmethod
    def from_pidfile(cls, pidfile: str | Path) -> MilvusServer:
        """The running server a pidfile describes (written by :meth:`write_pidfile`)."""
        state = json.loads(Path(pidfile).read_text())
        server = cls(state["data_dir"], state["port"], Path(state["binary"]))
        server.pgid = state["pgid"]
        return server

    def write_pidfile(self, pidfile: str | Path) -> None:
        Path(pidfile).write_text(json.dumps({"pgid": self.pgid, "data_dir": str(self.data_dir), "port": self.port,
                                             "binary": str(self.binary)}))  # fmt: skip

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 180) -> MilvusServer:
        """Start, or restart on the same data and ports. The first start goes through the
        launcher, which unpacks the binary and writes ``configs/milvus.yaml``; a restart runs that
        binary on that config directly: the launcher probes ports without SO_REUSEADDR, so right
        after a stop it finds the proxy port in TIME_WAIT and silently moves to the next one."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = self.data_dir / "server.log"
        binary, config = self.data_dir / "bin" / "milvus", self.data_dir / "configs" / "milvus.yaml"
        restart = binary.exists() and config.exists()
        with open(log, "ab") as fh:
            if restart:
                env = {**os.environ, "DEPLOY_MODE": "STANDALONE", "METRICS_PORT": str(free_port()),
                       "MILVUS_RUN_DIR": str(self.data_dir / "run"),
                       "LD_LIBRARY_PATH": f"{binary.parent}:{os.environ.get('LD_LIBRARY_PATH', '')}"}  # fmt: skip
                self.proc = subprocess.Popen([str(binary), "run", "standalone"], cwd=self.data_dir, env=env, stdout=fh,
                                             stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
            else:
                self.proc = subprocess.Popen([str(self.binary), "--data", str(self.data_dir), "--proxy-port", str(self.port)],
                                             stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        self.pgid = self.proc.pid
        try:
            if not restart:  # the launcher writes the config before it starts the binary
                deadline = time.monotonic() + 30
                while not config.exists() and time.monotonic() < deadline:
                    time.sleep(0.2)
            self.port = _proxy_port(config, self.port)
            wait_for_milvus(self.uri, self.proc, timeout, log, launcher=not restart)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        stop_group(self.pgid, self.proc)
        self.proc, self.pgid = None, None


def _proxy_port(config: Path, default: int) -> int:
    """The proxy port the config names (the launcher may have chosen another than asked)."""
    import yaml

    try:
        return int(yaml.safe_load(config.read_text())["proxy"]["port"])
    except (OSError, KeyError, TypeError, ValueError):
        return default


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    # a stopped leader that its parent (the harness, blocked in subprocess.call) has not reaped yet
    # is a zombie: a group of zombies is gone (waiting on it cost every restart 30 s)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def stop_group(pgid: int | None, proc: subprocess.Popen | None = None) -> None:
    """SIGTERM the process group, then SIGKILL what is left: the launcher does not forward
    SIGTERM to the ``milvus`` binary it starts, so the whole group is signalled. Returns once
    no process of the group is left (the ports and the data directory are free again)."""
    if pgid is None:
        return
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if proc is not None:
                proc.poll()  # reap the leader, or it stays a zombie in the group
            if not _group_alive(pgid):
                return
            time.sleep(0.2)


def stop_lite(proc: subprocess.Popen) -> None:
    stop_group(proc.pid, proc)


def main(argv: list[str]) -> int:
    if "--" not in argv:
        print(__doc__, file=sys.stderr)
        return 2
    command = argv[argv.index("--") + 1 :]
    work = Path(tempfile.mkdtemp(prefix="clair-servers-"))
    # grpc core logs every keepalive GOAWAY from the milvus-lite server to stderr: noise in test output
    env = {"GRPC_VERBOSITY": "NONE", **os.environ}
    started: list[subprocess.Popen] = []
    pidfile = work / "milvus-server.json"
    try:
        if MILVUS_BIN.exists():
            t0 = time.monotonic()
            server = MilvusServer(work / "milvus").start()
            server.write_pidfile(pidfile)
            env.update(MILVUS_URI=server.uri, MILVUS_SERVER_PIDFILE=str(pidfile))
            print(f"servers.py: Milvus 2.3.5 standalone at {server.uri} (up in {time.monotonic() - t0:.1f} s)", flush=True)
        else:
            print(f"servers.py: no Milvus server binary at {MILVUS_BIN} (`make milvus-server` installs it); "
                  "its tests will skip", flush=True)  # fmt: skip
        lite_port = free_port()
        lite = subprocess.Popen([str(LITE_BIN), "server", "--data-dir", str(work / "lite.db"), "--host", "127.0.0.1",
                                 "--port", str(lite_port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)  # fmt: skip
        started.append(lite)
        wait_for_milvus(f"http://127.0.0.1:{lite_port}", lite, 60)
        env["MILVUS_LITE_URI"] = f"http://127.0.0.1:{lite_port}"
        print(f"servers.py: milvus-lite server at {env['MILVUS_LITE_URI']}", flush=True)
        return subprocess.call(command, env=env)
    finally:
        if pidfile.exists():  # whichever server the pidfile names now: a test may have restarted it
            MilvusServer.from_pidfile(pidfile).stop()
        for proc in started:
            stop_lite(proc)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
