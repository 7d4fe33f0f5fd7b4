"""A model upgrade, measured: re-embedding against indexing the same files from disk, and the
search service's errors and latency while the alias it serves moves to the new collection.

    python -m clair_vec.benchmarks.lifecycle --images 2000
    python -m clair_vec.benchmarks.lifecycle --images 2000 --uri http://127.0.0.1:19530     # a Milvus server

Two models (random ``--clip-model`` weights, two seeds: the real compute per image, no download).
1. ``clair-vec index`` of the photos into v1 with model A, and into v0 with model B (the from-disk
   baseline), each timed in its own process; then ``clair-vec reindex --from v1 --to v2`` with model
   B, timed the same way. Reported: images/s of each and reindex / index (goal: at least 0.9).
2. With a server URI: ``clair-vec serve`` on an alias pointing at v1, ``--clients`` threads searching
   without pause; the alias moves to v2; reported: requests, errors, p50 and p99 before, during (the
   seconds around the switch) and after, and how long the service took to follow.
Speed only: no test asserts on these numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


def _cli(*args: str) -> tuple[dict, float]:
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "clair_vec.cli", *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(out.stderr[-3000:])
    return json.loads(out.stdout.splitlines()[-1]), time.perf_counter() - t0


def _models(arch: str, work: Path) -> tuple[str, str]:
    import torch

    from clair_vec.benchmarks.models import random_model

    torch.manual_seed(0)
    a = random_model(arch, work / "model_a")
    torch.manual_seed(1)
    return a, random_model(arch, work / "model_b")


def _swap(uri: str, model_a: str, model_b: str, clients: int, query: bytes, tag: str) -> dict:
    import httpx

    from clair_vec.benchmarks.service import _free_port

    live = f"live_{tag}"
    subprocess.run([sys.executable, "-m", "clair_vec.cli", "alias", "set", live, f"v1_{tag}", "--uri", uri], check=True,
                   capture_output=True)  # fmt: skip
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "clair_vec.cli", "serve", "--model", model_a, "--collection", live, "--uri", uri,
                             "--port", str(port), "--follow-interval", "0.5"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    log: list[tuple[float, int, float]] = []
    stop = threading.Event()
    threads: list[threading.Thread] = []

    def client() -> None:
        with httpx.Client(timeout=60) as c:
            while not stop.is_set():
                t0 = time.perf_counter()
                try:
                    status = c.post(f"{url}/search", files={"image": ("q.png", query)}, data={"domain": "sketch"}).status_code
                except httpx.HTTPError:
                    status = 0
                log.append((time.monotonic(), status, time.perf_counter() - t0))

    try:
        for _ in range(240):
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        threads += [threading.Thread(target=client) for _ in range(clients)]
        for t in threads:
            t.start()
        time.sleep(10)
        moved = time.monotonic()
        subprocess.run([sys.executable, "-m", "clair_vec.cli", "alias", "set", live, f"v2_{tag}", "--uri", uri], check=True,
                       capture_output=True)  # fmt: skip
        followed = None
        while followed is None and time.monotonic() - moved < 120:
            if httpx.get(f"{url}/info").json()["collection"] == f"v2_{tag}":
                followed = time.monotonic()
            time.sleep(0.1)
        time.sleep(10)
    finally:
        stop.set()
        for t in threads:
            t.join()
        proc.terminate()
        proc.wait(timeout=60)
        subprocess.run([sys.executable, "-m", "clair_vec.cli", "alias", "drop", live, "--uri", uri], capture_output=True)

    def window(lo: float, hi: float) -> dict:
        rows = [(s, lat) for t, s, lat in log if lo <= t < hi]
        lat = [x for _, x in rows]
        return {"requests": len(rows), "errors": sum(s != 200 for s, _ in rows),
                "p50_ms": round(1000 * statistics.median(lat), 1) if lat else None,
                "p99_ms": round(1000 * float(np.percentile(lat, 99)), 1) if lat else None}  # fmt: skip

    end = followed or moved
    return {"clients": clients, "followed_after_s": round(end - moved, 2) if followed else None,
            "before": window(0, moved), "during": window(moved, end + 2), "after": window(end + 2, float("inf"))}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=2000, help="gallery photos")
    p.add_argument("--clip-model", default="clair-tiny", help="architecture of the two random-weight models")
    p.add_argument("--uri", default=None, help="a server (also measures the swap under load; None: Milvus Lite, no swap)")
    p.add_argument("--clients", type=int, default=4, help="search clients during the swap")
    a = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["CLAIR_VEC_PROGRESS"] = "0"
    from clair_vec.datasets.shapes import make_shapes_dataset

    work = Path(tempfile.mkdtemp(prefix="clair-lifecycle-bench-"))
    tag = str(os.getpid())
    uri = a.uri or str(work / "g.db")
    try:
        model_a, model_b = _models(a.clip_model, work)
        data = make_shapes_dataset(work / "data", per_class=-(-a.images // 12), domains=("photo", "sketch"), seed=5)
        photos = data / "photo"
        for f in sorted(photos.rglob("*.png"))[a.images :]:
            f.unlink()
        _, t_v1 = _cli("index", "--model", model_a, "--collection", f"v1_{tag}", "--uri", uri, "--label-from-folder", str(photos))
        s0, t_v0 = _cli("index", "--model", model_b, "--collection", f"v0_{tag}", "--uri", uri, "--label-from-folder", str(photos))
        s2, t_v2 = _cli("reindex", "--from", f"v1_{tag}", "--to", f"v2_{tag}", "--model", model_b, "--uri", uri)
        n = s0["indexed"]
        row = {"images": n, "index_from_disk_images_per_s": round(n / t_v0, 1), "reindex_images_per_s": round(s2["indexed"] / t_v2, 1),
               "reindex_over_index": round((s2["indexed"] / t_v2) / (n / t_v0), 2), "index_v1_s": round(t_v1, 1),
               "note": "each timed as its own clair-vec process, model loading included"}  # fmt: skip
        print(json.dumps(row), flush=True)
        if a.uri:
            query = next((data / "sketch").rglob("*.png")).read_bytes()
            print(json.dumps({"swap": _swap(a.uri, model_a, model_b, a.clients, query, tag)}), flush=True)
    finally:
        if a.uri:
            from clair_vec.store.plugins import get_backend

            with get_backend(None, a.uri) as be:
                for name in (f"v0_{tag}", f"v1_{tag}", f"v2_{tag}"):
                    be.drop_collection(name)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    from clair_vec.benchmarks import run_script

    run_script(main)
