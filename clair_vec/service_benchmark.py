"""``clair-vec serve`` under load, against what its work costs without the service.

    python -m clair_vec.service_benchmark --model clair_demo/model --images 10000

Indexes generated photos into the embedded default (Milvus Lite), then measures, in this order:

1. the floor: one query's CLIP encode plus the engine's own search on an open client (pymilvus,
   same parameters), p50 over the query set, in this process;
2. ``clair-vec serve`` as its own process: QPS, p50 and p99 of ``POST /search`` at 1, 4 and 16
   concurrent clients (threads of this process, over loopback);
3. the server's resident memory before and after ``--requests`` more requests.

On a 2-core machine the load generator shares the CPU with the server: read QPS as a floor.
Speed only: no test asserts on these numbers.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def floor(model_dir: str, store: str, queries: list[bytes], top_k: int) -> dict:
    """p50 of (CLIP encode + head + mapping) and of the raw engine search, on open objects."""
    from PIL import Image

    from clair_vec.retriever import Retriever

    with Retriever(model_dir, uri=store) as r:
        r.collection("gallery")
        encode, engine = [], []
        for q in queries:
            im = Image.open(io.BytesIO(q)).convert("RGB")
            t0 = time.perf_counter()
            v = r.model.embed_images([im], "sketch")
            encode.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            r.backend.client.search("gallery", data=v.tolist(), limit=top_k, output_fields=["domain", "label", "path", "$meta"],
                                    search_params={"metric_type": "COSINE"}, consistency_level="Session")  # fmt: skip
            engine.append(time.perf_counter() - t0)
    return {"encode_p50_ms": 1000 * statistics.median(encode), "engine_p50_ms": 1000 * statistics.median(engine)}


def load(url: str, queries: list[bytes], clients: int, requests: int, top_k: int) -> dict:
    import httpx

    lat: list[float] = []
    errors = [0]
    lock = threading.Lock()
    counter = iter(range(requests))

    def worker() -> None:
        with httpx.Client(timeout=60) as c:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                t0 = time.perf_counter()
                r = c.post(f"{url}/search", files={"image": ("q.png", queries[i % len(queries)])},
                           data={"domain": "sketch", "top_k": str(top_k)})  # fmt: skip
                with lock:
                    lat.append(time.perf_counter() - t0)
                    errors[0] += r.status_code != 200

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {"clients": clients, "requests": len(lat), "errors": errors[0], "qps": round(len(lat) / wall, 1),
            "p50_ms": round(1000 * statistics.median(lat), 1), "p99_ms": round(1000 * float(np.percentile(lat, 99)), 1)}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="checkpoint directory (e.g. clair_demo/model after `make demo`)")
    p.add_argument("--images", type=int, default=10_000, help="gallery size")
    p.add_argument("--queries", type=int, default=50, help="distinct query sketches")
    p.add_argument("--per-level", type=int, default=200, help="requests at each concurrency level")
    p.add_argument("--requests", type=int, default=2000, help="requests of the memory-growth run")
    p.add_argument("--top-k", type=int, default=10, help="hits per query")
    a = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["CLAIR_VEC_PROGRESS"] = os.environ.get("CLAIR_VEC_PROGRESS", "1")
    from clair_vec.api import index
    from clair_vec.synthetic import make_shapes_dataset

    work = Path(tempfile.mkdtemp(prefix="clair-serve-bench-"))
    proc = None
    try:
        data = make_shapes_dataset(work / "data", per_class=-(-a.images // 12), domains=("photo", "sketch"), seed=11)
        photos = sorted((data / "photo").rglob("*.png"))[: a.images]
        store = str(work / "gallery.db")
        t0 = time.perf_counter()
        s = index("gallery", photos, model=a.model, uri=store, label_from_folder=True)
        print(json.dumps({"indexed": s.indexed, "index_s": round(time.perf_counter() - t0, 1)}), flush=True)
        queries = [f.read_bytes() for f in sorted((data / "sketch").rglob("*.png"))[:: max(1, a.images // a.queries)][: a.queries]]
        base = floor(a.model, store, queries, a.top_k)
        port = _free_port()
        proc = subprocess.Popen([sys.executable, "-m", "clair_vec.cli", "serve", "--model", a.model, "--collection", "gallery",
                                 "--uri", store, "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        for _ in range(240):
            try:
                with urllib.request.urlopen(f"{url}/readyz", timeout=2):
                    break
            except OSError:
                time.sleep(0.5)
        load(url, queries, 1, 20, a.top_k)  # warm-up
        rows = [load(url, queries, c, a.per_level, a.top_k) for c in (1, 4, 16)]
        floor_ms = base["encode_p50_ms"] + base["engine_p50_ms"]
        print(json.dumps({**{k: round(v, 2) for k, v in base.items()}, "floor_p50_ms": round(floor_ms, 2),
                          "search_p50_ms_1_client": rows[0]["p50_ms"],
                          "ratio_to_floor": round(rows[0]["p50_ms"] / floor_ms, 2)}), flush=True)  # fmt: skip
        for row in rows:
            print(json.dumps(row), flush=True)
        before = _rss_mb(proc.pid)
        growth = load(url, queries, 4, a.requests, a.top_k)
        after = _rss_mb(proc.pid)
        print(json.dumps({"memory_run": growth, "server_rss_mb_before": round(before, 1), "server_rss_mb_after": round(after, 1),
                          "growth_mb": round(after - before, 1)}), flush=True)  # fmt: skip
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
