"""``clair-vec serve`` under load, against what its work costs without the service.

    python -m clair_vec.benchmarks.service --model clair_demo/model --images 10000
    python -m clair_vec.benchmarks.service --clip-model ViT-B-32 --images 2000        # a ViT-B-32-shaped model
    python -m clair_vec.benchmarks.service --model clair_demo/model --uri http://127.0.0.1:19530   # a Milvus server
    python -m clair_vec.benchmarks.service --clip-model ViT-B-32 --precision int8   # a gallery (and its queries) at int8
    python -m clair_vec.benchmarks.service --clip-model ViT-B-32 --clients 16 --versus '--batch-wait-share 0'   # A/B

Indexes generated photos into the embedded default (Milvus Lite; ``--backend qdrant``: Qdrant
Edge) or the server at ``--uri``, then measures:

1. the floor: one query's CLIP encode plus the engine's own search on an open client (pymilvus,
   same parameters), p50 over the query set, in this process; and the raw CLIP forward's img/s
   on preprocessed batches of ``--raw-batch`` (the service's batch size), the most that
   concurrent clients can get from one process: each level's QPS is shown against it;
2. ``clair-vec serve`` as its own process: QPS, p50 and p99 of ``POST /search`` at 1, 4, 16 and
   64 concurrent clients (threads of this process, over loopback, each on its own keep-alive
   connection), and the p99 of ``GET /healthz`` polled meanwhile (is the event loop free?);
3. the server's resident memory before and after ``--requests`` more requests.

Without ``--model``, a mapping-only model on random ``--clip-model`` weights (no download; a real
architecture's compute per query). On a 2-core machine the load generator shares the CPU with the
server: read QPS as a floor. Speed only: no test asserts on these numbers.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shlex
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


def floor(model_dir: str, store: str, queries: list[bytes], top_k: int, backend: str, precision: str | None = None,
          raw_batch: int = 16) -> dict:  # fmt: skip
    """p50 of (CLIP encode + head + mapping) and of the raw engine search, on open objects; and the
    raw CLIP forward's img/s on preprocessed batches of ``raw_batch``, the most that many
    concurrent clients can get from one process."""
    import torch
    from PIL import Image

    from clair_vec.retrieval.retriever import Retriever

    with Retriever(model_dir, backend=backend, uri=store) as r:
        r.collection("gallery")
        for _ in range(2):  # warm both up, as the service is warmed up before it is timed
            for q in queries:
                r.search("gallery", [Image.open(io.BytesIO(q)).convert("RGB")], domain="sketch", top_k=top_k)
        encode, engine = [], []
        for q in queries * 2:
            im = Image.open(io.BytesIO(q)).convert("RGB")
            t0 = time.perf_counter()
            v = r.model.embed_images([im], "sketch", precision=precision)
            encode.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            if backend == "milvus":  # pymilvus itself, same parameters as the plugin
                r.backend.client.search("gallery", data=v.tolist(), limit=top_k, output_fields=["domain", "label", "path", "$meta"],
                                        search_params={"metric_type": "COSINE"}, consistency_level="Session")  # fmt: skip
            else:  # the plugin's engine primitive, without the checks around it
                r.backend._search("gallery", v, top_k, {})
            engine.append(time.perf_counter() - t0)
        fm = r.model.foundation
        pixels = torch.stack([fm.preprocess(Image.open(io.BytesIO(q)).convert("RGB")) for q in queries])
        batches = [pixels[(np.arange(raw_batch) + s) % len(pixels)] for s in range(0, 4 * raw_batch, raw_batch)]
        fm.encode_pixels(batches[0], precision=precision)
        t0 = time.perf_counter()
        for b in batches:
            fm.encode_pixels(b, precision=precision)
        raw = len(batches) * raw_batch / (time.perf_counter() - t0)
    return {"encode_p50_ms": 1000 * statistics.median(encode), "engine_p50_ms": 1000 * statistics.median(engine),
            "raw_encode_img_per_s": raw}


def _start(model: str, store: str, backend: str, extra: list[str]) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "clair_vec.cli", "serve", "--model", model, "--collection", "gallery",
                             "--backend", backend, "--uri", store, "--port", str(port), *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    for _ in range(240):
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=2):
                return proc, url
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("clair-vec serve did not become ready")


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    proc.wait(timeout=30)


def _multipart(image: bytes, top_k: int) -> tuple[bytes, str]:
    """A request body encoded once, as a load tester replays it (no per-request client work)."""
    boundary = "clairbench0123456789"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="q.png"\r\n'
             f"Content-Type: image/png\r\n\r\n".encode() + image + b"\r\n"]  # fmt: skip
    for name, value in (("domain", "sketch"), ("top_k", str(top_k))):
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def poll_health(url: str, stop: threading.Event, out: list[float], every: float = 0.05) -> None:
    """GET /healthz until ``stop``, recording each answer's latency (a busy event loop shows here)."""
    while not stop.is_set():
        t0 = time.perf_counter()
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=10):
                out.append(time.perf_counter() - t0)
        except OSError:
            out.append(float("inf"))
        stop.wait(every)


def _median_row(rows: list[dict]) -> dict:
    """The per-field median of load() rows (a field no row has a value for stays None)."""
    out: dict = {}
    for k in rows[0]:
        values = [r[k] for r in rows if r[k] is not None]
        m = statistics.median(values) if values else None
        out[k] = m if m is None else int(m) if float(m).is_integer() else round(m, 2)
    return out


def _batches(url: str) -> tuple[float, float, float]:
    """The service's searches served, batches run and seconds its worker thread spent on them so
    far, from its /metrics."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as r:
        lines = r.read().decode().splitlines()
    seen = {k: float(v) for k, _, v in (ln.rpartition(" ") for ln in lines) if k.startswith("clair_vec_search_batch_")}
    return (seen.get("clair_vec_search_batch_size_sum", 0.0), seen.get("clair_vec_search_batch_size_count", 0.0),
            seen.get("clair_vec_search_batch_seconds_sum", 0.0))  # fmt: skip


def load(url: str, queries: list[bytes], clients: int, requests: int, top_k: int) -> dict:
    """``clients`` threads, each on its own keep-alive connection, send ``requests`` searches in all,
    while another thread polls /healthz."""
    from http.client import HTTPConnection
    from urllib.parse import urlparse

    host = urlparse(url)
    bodies = [_multipart(q, top_k) for q in queries]
    lat: list[float] = []
    took: list[float] = []
    errors = [0]
    lock = threading.Lock()
    counter = iter(range(requests))

    def worker() -> None:
        conn = HTTPConnection(host.hostname, host.port, timeout=60)
        try:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                body, ctype = bodies[i % len(bodies)]
                t0 = time.perf_counter()
                conn.request("POST", "/search", body=body, headers={"Content-Type": ctype})
                r = conn.getresponse()
                data = r.read()
                elapsed = time.perf_counter() - t0
                with lock:
                    lat.append(elapsed)
                    errors[0] += r.status != 200
                    if r.status == 200:
                        took.append(json.loads(data)["took_ms"])
        finally:
            conn.close()

    health: list[float] = []
    stop = threading.Event()
    poller = threading.Thread(target=poll_health, args=(url, stop, health))
    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    served, batches, busy = _batches(url)
    cpu = time.process_time()  # this process's CPU: the clients' share of the box is not the server's
    poller.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu
    stop.set()
    poller.join()
    served_after, batches_after, busy_after = _batches(url)
    return {"clients": clients, "requests": len(lat), "errors": errors[0], "qps": round(len(lat) / wall, 1),
            "p50_ms": round(1000 * statistics.median(lat), 1), "p99_ms": round(1000 * float(np.percentile(lat, 99)), 1),
            "server_took_p50_ms": round(statistics.median(took), 1) if took else None,
            "mean_batch": round((served_after - served) / max(1.0, batches_after - batches), 1),
            "clients_cpu_share": round(cpu / wall / (os.cpu_count() or 1), 3),
            "worker_busy": round((busy_after - busy) / wall, 3),  # the rest: the worker waited for searches
            "healthz_p99_ms": round(1000 * float(np.percentile(health, 99)), 1) if health else None}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="checkpoint directory (e.g. clair_demo/model after `make demo`; "
                   "None: a random-weight --clip-model)")  # fmt: skip
    p.add_argument("--clip-model", default="ViT-B-32", help="architecture of the random-weight model without --model")
    p.add_argument("--uri", default=None, help="a server to index into and serve from (None: the embedded default)")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16, 64], help="concurrency levels")
    p.add_argument("--serve-args", default="", help="extra `clair-vec serve` options, e.g. '--batch-size 1'")
    p.add_argument("--images", type=int, default=10_000, help="gallery size")
    p.add_argument("--queries", type=int, default=50, help="distinct query sketches")
    p.add_argument("--per-level", type=int, default=200, help="requests at each concurrency level")
    p.add_argument("--requests", type=int, default=5000, help="requests of the memory-growth run")
    p.add_argument("--top-k", type=int, default=10, help="hits per query")
    p.add_argument("--backend", default="milvus", help="an embedded backend: milvus (Lite, the default) or qdrant (Edge)")
    p.add_argument("--rounds", type=int, default=3, help="alternating floor / service rounds for the 1-client comparison")
    p.add_argument("--versus", default=None, help="options of a second `clair-vec serve` to compare with, e.g. "
                   "'--batch-wait-share 0': it serves a copy of the gallery, and each concurrency level alternates "
                   "between the two for --rounds rounds (medians)")  # fmt: skip
    p.add_argument("--raw-batch", type=int, default=16, help="batch of the raw CLIP forward that QPS is compared with "
                   "(the service's --batch-size)")  # fmt: skip
    p.add_argument("--precision", default=None, choices=["fp32", "bf16", "fp16", "int8"], help="of the CLIP forward: fp32 (default), bf16 or int8 (CPU); the gallery "
                   "records it and the service encodes its queries the same way")  # fmt: skip
    a = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["CLAIR_VEC_PROGRESS"] = os.environ.get("CLAIR_VEC_PROGRESS", "1")
    from clair_vec.datasets.shapes import make_shapes_dataset
    from clair_vec.retrieval.api import index
    from clair_vec.retrieval.indexing import collection_precision
    from clair_vec.store.plugins import get_backend

    work = Path(tempfile.mkdtemp(prefix="clair-serve-bench-"))
    proc = versus = None
    extra = shlex.split(a.serve_args)
    try:
        if a.model is None:
            from clair_vec.benchmarks.models import random_model

            a.model = random_model(a.clip_model, work / "model")
        data = make_shapes_dataset(work / "data", per_class=-(-a.images // 12), domains=("photo", "sketch"), seed=11)
        photos = sorted((data / "photo").rglob("*.png"))[: a.images]
        store = a.uri or str(work / ("gallery.db" if a.backend == "milvus" else "gallery"))
        if a.uri:
            with get_backend(a.backend, a.uri) as be:
                be.drop_collection("gallery")
        t0 = time.perf_counter()
        s = index("gallery", photos, model=a.model, backend=a.backend, uri=store, label_from_folder=True, precision=a.precision)
        took = time.perf_counter() - t0
        with get_backend(a.backend, store) as be:  # what the gallery recorded: its queries are encoded the same way
            precision = collection_precision(be.open_collection("gallery"))
        print(json.dumps({"indexed": s.indexed, "index_s": round(took, 1), "index_img_per_s": round(s.indexed / took, 1),
                          "precision": precision}), flush=True)  # fmt: skip
        queries = [f.read_bytes() for f in sorted((data / "sketch").rglob("*.png"))[:: max(1, a.images // a.queries)][: a.queries]]
        # the box is shared and noisy (the engine's own p50 moved 5-9 ms between minutes here): the
        # floor and the 1-client service are measured in alternating rounds and compared by median
        floors, singles, tooks = [], [], []
        for _ in range(a.rounds):
            floors.append(floor(a.model, store, queries, a.top_k, a.backend, precision, a.raw_batch))
            proc, url = _start(a.model, store, a.backend, extra)
            load(url, queries, 1, 100, a.top_k)  # warm-up
            row = load(url, queries, 1, a.per_level, a.top_k)
            singles.append(row["p50_ms"])
            tooks.append(row["server_took_p50_ms"])
            _stop(proc)
            proc = None
        floor_ms = statistics.median(f["encode_p50_ms"] + f["engine_p50_ms"] for f in floors)
        raw = statistics.median(f["raw_encode_img_per_s"] for f in floors)
        print(json.dumps({"rounds": a.rounds, "floor_p50_ms": round(floor_ms, 2),
                          "encode_p50_ms": round(statistics.median(f["encode_p50_ms"] for f in floors), 2),
                          "engine_p50_ms": round(statistics.median(f["engine_p50_ms"] for f in floors), 2),
                          "search_p50_ms_1_client": statistics.median(singles),
                          "server_took_p50_ms": statistics.median(tooks),
                          "ratio_to_floor": round(statistics.median(singles) / floor_ms, 2),
                          f"raw_encode_img_per_s_batch_{a.raw_batch}": round(raw, 1),
                          "per_round": {"floor": [round(f["encode_p50_ms"] + f["engine_p50_ms"], 2) for f in floors],
                                        "service": singles}}), flush=True)  # fmt: skip
        proc, url = _start(a.model, store, a.backend, extra)
        load(url, queries, 1, 100, a.top_k)
        if a.versus is not None:  # a second service on a copy of the gallery (a server's is shared)
            copy = store if a.uri else str(work / ("versus.db" if a.backend == "milvus" else "versus"))
            if not a.uri:
                (shutil.copytree if Path(store).is_dir() else shutil.copyfile)(store, copy)
            versus, versus_url = _start(a.model, copy, a.backend, shlex.split(a.versus))
            load(versus_url, queries, 1, 100, a.top_k)
        levels = {}
        for c in a.clients:
            n = max(a.per_level, 4 * c)
            if versus is None:
                levels[c] = load(url, queries, c, n, a.top_k)
            else:  # alternating rounds, so that the box's drift falls on both alike
                rows: dict[str, list[dict]] = {"this": [], "versus": []}
                for r in range(a.rounds):
                    for name in ("this", "versus") if r % 2 == 0 else ("versus", "this"):
                        rows[name].append(load(url if name == "this" else versus_url, queries, c, n, a.top_k))
                levels[c] = _median_row(rows["this"])
                other = _median_row(rows["versus"])
                levels[c]["versus"] = {k: other[k] for k in ("qps", "p50_ms", "p99_ms", "mean_batch", "errors")}
                levels[c]["qps_over_versus"] = round(levels[c]["qps"] / other["qps"], 2)
            levels[c]["qps_over_raw_encode"] = round(levels[c]["qps"] / raw, 2)
            print(json.dumps(levels[c]), flush=True)
        if 1 in levels:
            print(json.dumps({f"qps_{c}_over_1": round(levels[c]["qps"] / levels[1]["qps"], 2) for c in levels if c != 1}), flush=True)
        before = _rss_mb(proc.pid)
        growth = load(url, queries, 4, a.requests, a.top_k)
        after = _rss_mb(proc.pid)
        print(json.dumps({"memory_run": growth, "server_rss_mb_before": round(before, 1), "server_rss_mb_after": round(after, 1),
                          "growth_mb": round(after - before, 1)}), flush=True)  # fmt: skip
    finally:
        for server in (proc, versus):
            if server is not None:
                server.terminate()
                server.wait(timeout=30)
        if a.uri:
            with get_backend(a.backend, a.uri) as be:
                be.drop_collection("gallery")
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    from clair_vec.benchmarks import run_script

    run_script(main)
