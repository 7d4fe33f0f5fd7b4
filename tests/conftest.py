from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("CLAIR_VEC_PROGRESS", "0")
# every Ray the suite starts keeps its sockets and logs under this directory, so the end-of-session
# check can tell the suite's own Ray processes from anyone else's (short: socket paths <= 107 bytes)
RAY_TMP = f"/tmp/ray-cv{os.getpid()}"
os.environ["RAY_TMPDIR"] = RAY_TMP
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# the example plugin is a separate distribution; its source is importable for direct use in tests
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins" / "example-numpy"))

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
UNSEEN = ["hexagon", "crescent", "arrow", "heart"]


@pytest.fixture(scope="session")
def ray_head():
    """A Ray head shared by the session's Ray tests; their drivers are separate processes."""
    pytest.importorskip("ray")
    from ray_head import start_head

    head = start_head()
    yield head
    head.stop()


@pytest.fixture(scope="module", autouse=True)
def no_backend_left_open():
    """Every module closes the backends it opens: a native client left to the interpreter's
    teardown crashed pytest at exit once. Checked after the module's own fixtures are gone."""
    from clair_vec.store.backend import open_handles

    before = {id(h) for h, _ in open_handles()}
    yield
    import gc

    gc.collect()  # handles nobody references any more are not open: only live ones count
    leaked = [(h, where) for h, where in open_handles() if id(h) not in before]
    for h, _ in leaked:
        h.close()
    assert not leaked, "backends opened and never closed: " + "; ".join(f"{type(h).__name__} opened at {w}" for h, w in leaked)


@pytest.fixture(scope="session")
def tiny_clip():
    import torch

    from clair_vec.method.foundation import FoundationModel

    torch.manual_seed(0)
    return FoundationModel.load("clair-tiny", None)


@pytest.fixture(scope="session")
def shapes_root(tmp_path_factory):
    from clair_vec.datasets.shapes import SHAPES, make_shapes_dataset

    # the first 12 shapes and a fixed unseen set keep the suite small and its expectations stable
    return make_shapes_dataset(tmp_path_factory.mktemp("shapes") / "data", classes=SHAPES[:12], unseen=UNSEEN, per_class=8,
                               seed=0)  # fmt: skip


@pytest.fixture(scope="session")
def model_dir(shapes_root, tmp_path_factory) -> Path:
    """A small trained checkpoint (random tiny CLIP, 2 epochs), shared by the flow tests."""
    from clair_vec.method.config import ClairConfig
    from clair_vec.training.job import train_local

    cfg = ClairConfig(clip_model="clair-tiny", clip_pretrained=None, epochs=2, batch_size=48, lr=3e-3)
    model = train_local(shapes_root, cfg, progress=False)
    return model.save(tmp_path_factory.mktemp("ckpt") / "model")


@pytest.fixture(scope="session")
def seen_shapes(shapes_root):
    from clair_vec.datasets.folders import read_class_list, scan_folder, zero_shot_split

    return zero_shot_split(scan_folder(shapes_root), unseen=read_class_list(shapes_root / "unseen_classes.txt"))[0]


@pytest.fixture(scope="session")
def weak_root(seen_shapes, tmp_path_factory) -> Path:
    """Unlabeled: every seen image under ROOT/<domain>/, some loose, some two folders deep, with
    file names that do not give the class away; plus classes.txt and a labeled validation folder."""
    root = tmp_path_factory.mktemp("weak")
    for n, item in enumerate(seen_shapes.items):
        nest = ("", "batch-a", "2024/june")[n % 3]
        dest = root / "data" / item.domain / nest / f"img{n:04d}{Path(item.path).suffix}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(item.path, dest)
    (root / "classes.txt").write_text("# the vocabulary\n" + "\n".join(seen_shapes.classes) + "\n")
    for item in seen_shapes.items:
        if item.label in seen_shapes.classes[:4]:
            dest = root / "validation" / item.domain / item.label / Path(item.path).name
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(item.path, dest)
    return root


def run_cli(*args: str, timeout: float = 300, env: dict | None = None, cwd: str | Path | None = None) -> subprocess.CompletedProcess:
    """``clair-vec ARGS`` in a new process, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "clair_vec.cli", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, cwd=cwd)  # fmt: skip


def docker_or_skip() -> None:
    try:
        import docker

        docker.from_env(timeout=3).ping()
    except Exception as exc:  # no socket, daemon down, permission denied
        pytest.skip(f"no Docker engine answers ({type(exc).__name__}: {exc}); set MILVUS_URI / QDRANT_URL or run Docker")


def _ray_processes() -> list[str]:
    """Ray processes (raylet, GCS, ``ray::`` workers, jobs) started from this session: Ray passes
    its environment, RAY_TMPDIR included, down to every process it starts."""
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout.splitlines()[1:]
    mine = {os.getpid(), os.getppid()}
    return [line.strip()[:160] for line in out
            if "ray" in line and int(line.split()[0]) not in mine and _started_here(line.split()[0])]  # fmt: skip


def _started_here(pid: str) -> bool:
    try:
        return f"RAY_TMPDIR={RAY_TMP}".encode() in Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False


def pytest_sessionfinish(session, exitstatus):
    """Every test and job that starts Ray shuts down what it started: the suite ends with no Ray
    process of its own left (a leaked ray::TrainController once held 450 MB for hours)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return
    deadline = time.monotonic() + 30  # processes of the last shut-down Ray may take a moment to exit
    left = _ray_processes()
    while left and time.monotonic() < deadline:
        time.sleep(1)
        left = _ray_processes()
    if left:
        for line in left:
            try:
                os.kill(int(line.split()[0]), 9)
            except (ProcessLookupError, ValueError):
                pass
        print("\nRay processes started by the test suite were still running at its end:\n  " + "\n  ".join(left), file=sys.stderr)
        session.exitstatus = 1
