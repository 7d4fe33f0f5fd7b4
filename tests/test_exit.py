"""Processes that use clair_vec exit with status 0, whether or not they closed what they opened.

A native client left to the interpreter's teardown (a gRPC channel, Milvus Lite's in-process
server, a Qdrant Edge shard, a Ray driver) once crashed pytest at exit after every test passed.
Each case runs in fresh interpreters, several times: a crash at exit is a race, not a certainty.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

RUNS = 4

OPEN_EVERYTHING = textwrap.dedent("""
    import os, sys
    import numpy as np
    from clair_vec import get_backend
    from clair_vec.plugin import CollectionInfo, Record

    work, close = sys.argv[1], sys.argv[2] == "close"
    stores = [("milvus", work + "/lite.db"), ("qdrant", work + "/edge"), ("qdrant", "local:" + work + "/local")]
    if os.environ.get("MILVUS_URI"):
        stores.append(("milvus", os.environ["MILVUS_URI"]))
    handles = []
    for n, (name, uri) in enumerate(stores):
        be = get_backend(name, uri)
        c = f"exit_{os.getpid()}_{n}"
        be.create_collection(CollectionInfo(c, 4, "m"))
        be.upsert(c, [Record(f"r{i}", np.eye(4)[i % 4] + 0.1, {"domain": "photo", "path": str(i), "label": ""}) for i in range(8)])
        assert len(be.search(c, np.ones((2, 4)), top_k=3)[0]) == 3
        if uri.startswith("http"):
            be.drop_collection(c)  # a shared server: leave nothing behind
        handles.append(be)
    if close:
        for be in handles:
            be.close()
    print("done", flush=True)
""")

SERVE_AND_EXIT = textwrap.dedent("""
    import sys
    from fastapi.testclient import TestClient
    from clair_vec.retrieval.retriever import Retriever
    from clair_vec.service.app import create_app

    model, uri, image = sys.argv[1:4]
    r = Retriever(model, uri=uri)
    client = TestClient(create_app(r, "g"))
    for _ in range(3):
        assert client.post("/search", files={"image": ("q.png", open(image, "rb").read())}, data={"domain": "sketch"}).status_code == 200
    print("done", flush=True)  # neither the retriever nor the app is closed: exit must still be clean
""")


def run(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONFAULTHANDLER": "1"})  # fmt: skip


@pytest.mark.parametrize("close", ["close", "leave-open"])
def test_every_backend_exits_cleanly_closed_or_not(tmp_path, close):
    for n in range(RUNS):
        work = tmp_path / f"run{n}"
        work.mkdir()
        out = run(OPEN_EVERYTHING, str(work), close)
        assert out.returncode == 0 and out.stdout.strip() == "done", f"run {n}: exit {out.returncode}\n{out.stderr[-3000:]}"
        assert "Fatal Python error" not in out.stderr and "Segmentation fault" not in out.stderr, out.stderr[-3000:]
        # a handle closed at exit released its store: another process opens it at once
        reopen = run("import sys; from clair_vec import get_backend; b = get_backend('qdrant', sys.argv[1]); "
                     "print(b.list_collections()); b.close()", str(work / "edge"))  # fmt: skip
        assert reopen.returncode == 0, reopen.stderr[-2000:]


def test_a_service_process_exits_cleanly_without_closing(model_dir, shapes_root, tmp_path):
    import clair_vec

    uri = str(tmp_path / "g.db")
    clair_vec.index("g", [shapes_root / "photo" / "heart"], model=model_dir, uri=uri, progress=False)
    query = str(shapes_root / "sketch" / "heart" / "0000.png")
    for n in range(RUNS):
        out = run(SERVE_AND_EXIT, str(model_dir), uri, query)
        assert out.returncode == 0 and out.stdout.strip().endswith("done"), f"run {n}: exit {out.returncode}\n{out.stderr[-3000:]}"


def test_library_closes_open_handles_at_exit_newest_first(tmp_path):
    code = textwrap.dedent("""
        import atexit, sys
        from clair_vec import get_backend
        from clair_vec.store.backend import open_handles
        order = []
        # registered first, so it runs last: after the library's own exit hook
        atexit.register(lambda: print("closed", order, "left", len(open_handles()), flush=True))
        a, b = get_backend("qdrant", sys.argv[1] + "/a"), get_backend("qdrant", sys.argv[1] + "/b")
        for h, tag in ((a, "a"), (b, "b")):
            close = h.close
            h.close = lambda close=close, tag=tag: (order.append(tag), close())
    """)
    out = run(code, str(tmp_path))
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "closed ['b', 'a'] left 0"


def test_the_exit_loop_script_fails_on_a_crash(tmp_path):
    """The CI step that re-runs teardown-heavy tests must notice a process that dies at exit."""
    crash = tmp_path / "test_crash.py"
    crash.write_text("import os, atexit\natexit.register(lambda: os._exit(245))\ndef test_ok():\n    pass\n")
    loop = Path(__file__).parent / "exit_loop.py"
    out = subprocess.run([sys.executable, str(loop), "--runs", "2", "--", "-q", "-p", "no:cacheprovider", str(crash)],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)  # fmt: skip
    assert out.returncode == 1, out.stdout + out.stderr
    assert "run 1 of 2 exited with status 245" in out.stdout


class FakeRay:
    """Records the Ray calls a driver makes, in order."""

    def __init__(self, calls: list[str]) -> None:
        self.calls, self.up = calls, False

    def is_initialized(self) -> bool:
        return self.up

    def init(self) -> None:
        self.calls.append("init")
        self.up = True

    def shutdown(self) -> None:
        self.calls.append("shutdown")
        self.up = False


@pytest.mark.parametrize("joined", [True, False])
def test_a_driver_process_ends_its_ray_session_only_at_its_exit(monkeypatch, joined):
    """A command's Ray session stays up until exit_process, which disconnects from a Ray this
    process started and leaves in the same breath; a cluster it joined is left to see the exit.
    Between an early ``ray.shutdown()`` and the exit, Ray's leftover threads crashed a job that
    had already printed its result (exit 139 under ``ray job submit``)."""
    from clair_vec import ray_runtime

    calls: list[str] = []
    monkeypatch.setitem(sys.modules, "ray", FakeRay(calls))
    for flag, value in (("_started_here", False), ("_joined", False), ("_exit_owner", False)):
        monkeypatch.setattr(ray_runtime, flag, value)
    if joined:
        monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    else:
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(os, "_exit", lambda code: calls.append(f"exit {code}"))

    ray_runtime.leave_through_exit_process()
    with ray_runtime.ray_session():
        calls.append("work")
    calls.append("print result")
    ray_runtime.exit_process(0)
    expected = ["init", "work", "print result"] + ([] if joined else ["shutdown"]) + ["exit 0"]
    assert calls == expected


def test_a_library_ray_session_still_shuts_down_at_the_end_of_its_block(monkeypatch):
    """Python callers (no exit_process) get Ray stopped when the block ends, as before."""
    from clair_vec import ray_runtime

    calls: list[str] = []
    monkeypatch.setitem(sys.modules, "ray", FakeRay(calls))
    for flag, value in (("_started_here", False), ("_joined", False), ("_exit_owner", False)):
        monkeypatch.setattr(ray_runtime, flag, value)
    with ray_runtime.ray_session() as started:
        calls.append("work")
    assert started and calls == ["init", "work", "shutdown"]


JOIN_AND_EXIT = textwrap.dedent("""
    import ray
    from clair_vec.ray_runtime import exit_process, leave_through_exit_process, ray_session

    leave_through_exit_process()
    with ray_session():
        assert ray.get(ray.remote(lambda: 41 + 1).remote()) == 42
    print("result printed after the Ray work", flush=True)
    exit_process(0)
""")


def test_a_driver_that_joined_a_cluster_exits_zero_every_time(ray_head):
    for n in range(3):
        out = subprocess.run([sys.executable, "-c", JOIN_AND_EXIT], capture_output=True, text=True, timeout=300,
                             env={**ray_head.env, "PYTHONFAULTHANDLER": "1"})  # fmt: skip
        assert out.returncode == 0 and "result printed" in out.stdout, f"run {n}: exit {out.returncode}\n{out.stderr[-3000:]}"
