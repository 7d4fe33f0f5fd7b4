"""Embedded stores on a full disk: a clear error before the disk fills, a clear error (never a
bare signal) when it fills anyway, and a store that stays readable and recoverable.

Runs on a small tmpfs mounted for the test (root only, as here and in CI; elsewhere it skips
with the reason), unmounted in a finally. Every write and open runs in a child process: on a
full disk Qdrant Edge dies of SIGBUS writing its memory-mapped log, which must not take pytest
with it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

WRITE = textwrap.dedent("""
    import sys, numpy as np
    from clair_vec.store.plugins import get_backend
    from clair_vec.store.backend import CollectionInfo, Record
    backend, uri, margin = sys.argv[1], sys.argv[2], sys.argv[3]
    if margin == "unchecked":  # the disk fills between the check and the write (another process writes too)
        import clair_vec.store.backend
        clair_vec.store.backend.check_room = lambda *a, **k: None
        margin = "4"  # the least Qdrant Edge takes; unchecked, it protects nothing
    be = get_backend(backend, uri, disk_margin_mb=float(margin))
    try:
        if not be.has_collection("g"):
            be.create_collection(CollectionInfo("g", 512, "m"))
        rng = np.random.default_rng(0)
        for b in range(200):  # 400 KB of vectors a batch: an 8 MiB disk fills in a few
            records = [Record(f"{b:04d}{i:028d}", rng.normal(size=512).astype(np.float32), {"domain": "photo", "path": "/x" * 20})
                       for i in range(200)]
            be.upsert("g", records)
            print("written", (b + 1) * 200, flush=True)
    except Exception as exc:
        print("ERROR", type(exc).__name__, exc, flush=True)
    finally:
        try:
            be.close()
        except Exception as exc:
            print("CLOSE", type(exc).__name__, exc, flush=True)
""")
READ = textwrap.dedent("""
    import sys
    from clair_vec.store.plugins import get_backend
    try:
        be = get_backend(sys.argv[1], sys.argv[2])
        print("count", be.count("g"), flush=True)
        be.close()
    except Exception as exc:
        print("ERROR", type(exc).__name__, exc, flush=True)
""")
ENGINES = {"milvus": "g.db", "qdrant": "q"}


def run(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=300)


def written(out: subprocess.CompletedProcess) -> int:
    return max([int(line.split()[1]) for line in out.stdout.splitlines() if line.startswith("written")], default=0)


def error(out: subprocess.CompletedProcess) -> str:
    return next((line for line in out.stdout.splitlines() if line.startswith("ERROR")), "")


@pytest.fixture
def small_disk(tmp_path):
    if sys.platform != "linux" or os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a small tmpfs needs root on Linux (as in CI); the full-disk behaviour is checked there")
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(disk)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()}): a container without CAP_SYS_ADMIN")
    try:
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


def opens_or_says_why(engine: str, uri: str, n: int) -> None:
    """Opening the store on the (nearly) full disk reads it, or, for Qdrant Edge, which writes as
    it loads a store (its log files), says why it cannot and how to recover: never a crash."""
    full = run(READ, engine, uri)
    assert full.returncode == 0, f"opening the store on the full disk crashed (rc {full.returncode}): {full.stderr[-2000:]}"
    if engine == "qdrant" and error(full):
        assert error(full).startswith(f"ERROR DiskFullError the Qdrant Edge store {uri!r} cannot be opened"), full.stdout
        assert "free space on" in error(full) and "copy the whole directory to a bigger disk" in error(full), full.stdout
    else:
        assert full.stdout.strip() == f"count {n}", full.stdout + full.stderr[-2000:]


def grow(disk: Path) -> None:
    """Free space the way an operator would: a bigger volume."""
    subprocess.run(["mount", "-o", "remount,size=128m", str(disk)], check=True)


@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_a_write_the_disk_cannot_hold_stops_with_a_clear_error_first(engine, small_disk):
    uri = str(small_disk / ENGINES[engine])
    # a 4 MiB margin on an 8 MiB disk: room for the log files the engine seals at close (the
    # default 64 MiB does the same on real disks)
    out = run(WRITE, engine, uri, "4")
    assert out.returncode == 0, f"the writer died (rc {out.returncode}): {out.stderr[-2000:]}"
    n = written(out)
    assert n >= 400, out.stdout  # some batches fit
    assert error(out).startswith(f"ERROR DiskFullError not enough free space for the {engine} store {uri}: "), out.stdout
    assert f"MiB free on {small_disk}, this write needs about" in error(out) and "move the store to a bigger disk" in error(out)
    opens_or_says_why(engine, uri, n)
    grow(small_disk)
    again = run(READ, engine, uri)
    assert again.stdout.strip() == f"count {n}", again.stdout + again.stderr[-2000:]


@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_when_the_disk_fills_anyway_the_store_says_so_and_stays_recoverable(engine, small_disk, tmp_path):
    uri = str(small_disk / ENGINES[engine])
    out = run(WRITE, engine, uri, "unchecked")  # the engine itself runs into the full disk
    n = written(out)
    assert n >= 400, out.stdout + out.stderr[-2000:]
    if out.returncode == 0:  # the engine's ENOSPC, or the crash marker that could not be written, as DiskFullError
        assert error(out).startswith("ERROR DiskFullError"), out.stdout + out.stderr[-2000:]
    else:  # Qdrant Edge's memory-mapped log: SIGBUS kills the writer mid-batch, no Python frame can catch it
        assert engine == "qdrant" and out.returncode == -signal.SIGBUS, (out.returncode, out.stderr[-2000:])
    opens_or_says_why(engine, uri, n)  # opened again while the disk is still full
    copy = tmp_path / "bigger" / Path(uri).name  # the recovery the message gives: the store on a bigger disk
    shutil.copytree(uri, copy)
    moved = run(READ, engine, str(copy))
    assert moved.stdout.strip() == f"count {n}", moved.stdout + moved.stderr[-2000:]
    grow(small_disk)  # or free space where it is
    freed = run(READ, engine, uri)
    assert freed.stdout.strip() == f"count {n}", freed.stdout + freed.stderr[-2000:]
    assert not (Path(uri) / ".clair_vec.writing").exists()


@pytest.mark.parametrize("refusal, says", [
    (OSError(28, "No space left on device"), "reports that its disk is full; free space on the server"),
    (RuntimeError("segment flush failed: [Errno 27] File too large"), "reached the largest size its process may write"),
])  # fmt: skip
def test_a_write_a_server_refuses_names_a_full_disk_or_a_size_limit_for_what_it_is(refusal, says):
    """A server's EFBIG is no full disk: telling its owner to free space would not help."""
    from types import SimpleNamespace

    from clair_vec.errors import DiskFullError
    from clair_vec.store.backend import Backend

    server = SimpleNamespace(name="milvus", display_uri="http://***@db:19530", storage_path=None, max_retries=2,
                             translate_error=lambda exc: None, is_transient=lambda exc: True)  # fmt: skip
    calls = []

    def write():
        calls.append(1)
        raise refusal

    with pytest.raises(DiskFullError) as caught:
        Backend._call(server, write)
    assert says in str(caught.value) and "the server behind milvus at http://***@db:19530" in str(caught.value)
    assert len(calls) == 1  # a refused write is said at once, never retried as if the server were down
