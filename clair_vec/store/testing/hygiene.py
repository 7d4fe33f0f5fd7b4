"""Hygiene and threads: open/close cycles and many calls leak no sockets, file descriptors,
threads or ResourceWarnings; one handle shared by threads answers each caller with its own data."""

from __future__ import annotations

import gc
import os
import threading
import time
import warnings

import pytest

from clair_vec.store.testing.support import Promises, _short, make_records


def _resources() -> dict[str, int] | None:
    """Open file descriptors (and how many are sockets) and OS threads of this process (Linux)."""
    try:
        fds = os.listdir("/proc/self/fd")
        threads = len(os.listdir("/proc/self/task"))
    except OSError:
        return None
    sockets = 0
    for fd in fds:
        try:
            sockets += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
        except OSError:
            pass
    return {"file descriptors": len(fds), "sockets": sockets, "threads": threads}


class HygienePromises(Promises):
    """A long-lived service opens, closes and shares handles without running out of anything."""

    def test_open_close_cycles_and_many_calls_leak_nothing(self, backend_factory, backend, info, filled):
        if _resources() is None:
            pytest.skip("counting file descriptors and threads needs /proc (Linux)")
        backend.flush(info.name)
        backend.close()
        query = filled[1].vector

        held = []  # closed handles stay referenced: close() itself must release, not the garbage collector

        def cycle(calls: int) -> None:
            be = backend_factory()
            held.append(be)
            try:
                for _ in range(calls):
                    be.count(info.name)
                    be.search(info.name, query, top_k=3)
                    be.get(info.name, [filled[2].id])
            finally:
                be.close()

        # warm-up with the same workload as the measurement: engines start their pools and caches
        # once per process, and grow a thread pool to what the busiest call pattern needs
        cycle(1)
        cycle(25)
        gc.collect()
        before = _resources()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(8):
                cycle(1)
            cycle(25)
            gc.collect()
            # a closed client's threads may take a moment to exit: a leak is what is still held after it
            deadline = time.monotonic() + 5
            while True:
                after = _resources()
                grown = {k: after[k] - before[k] for k in before if after[k] - before[k] > 2}
                if not grown or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            held.clear()  # inside the recording: what only the garbage collector closes warns here
            gc.collect()
        assert not grown, (
            f"after 8 open/close cycles and 75 calls on one handle the process holds more {', '.join(grown)} than "
            f"before ({before} -> {after}), with the closed handles still referenced: something opens a connection, "
            "file or thread per call or per handle and close() does not close it"
        )
        leaks = [f"{w.filename}:{w.lineno}: {w.message}" for w in caught if issubclass(w.category, ResourceWarning)]
        assert not leaks, f"open/close cycles left resources for the garbage collector to close: {leaks[:3]}"

    def test_a_handle_shared_by_threads_answers_each_caller(self, backend, info, filled):
        threads = 8
        start = threading.Barrier(threads)
        problems: list[str] = []

        def work(k: int) -> None:
            mine = make_records(4, seed=200 + k, dim=self.dim, prefix=f"thread{k}")
            for r in mine:
                r.payload["label"] = f"thread{k}"
            try:
                start.wait(timeout=60)
                backend.upsert(info.name, mine)
                for _ in range(3):
                    for r in mine:
                        hit = backend.search(info.name, r.vector, top_k=1)[0]
                        if not hit or hit[0].id != r.id:
                            problems.append(f"thread {k} searched for its record {r.id[:8]} and got {_short(h.id for h in hit)}")
                    n = backend.count(info.name, filter={"label": f"thread{k}"})
                    if n != len(mine):
                        problems.append(f"thread {k} counted {n} of its {len(mine)} records")
                    got = backend.get(info.name, [r.id for r in mine])
                    if {i: p.get("label") for i, p in got.items()} != {r.id: f"thread{k}" for r in mine}:
                        problems.append(f"thread {k} looked up its records and got {len(got)} of them, or others' payloads")
            except Exception as exc:
                problems.append(f"thread {k}: {type(exc).__name__}: {exc}")

        workers = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
        for t in workers:
            t.start()
        for t in workers:
            t.join(timeout=300)
        assert not problems, (
            f"{threads} threads calling one handle at once (as the service does) got answers meant for others, or "
            f"errors ({len(problems)} problems):\n  " + "\n  ".join(problems[:8])
        )
        assert backend.count(info.name) == len(filled) + 4 * threads, "writes made from several threads at once were lost"
