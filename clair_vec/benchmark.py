"""Insert and query throughput of each backend on random unit vectors, beside NumPy brute force.

    python -m clair_vec.benchmark --n 100000 --dim 512 --queries 200

Measures speed only (and recall@k against exact search); tests never assert on these numbers.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from .backend import CollectionInfo, Record
from .plugin_manager import get_backend


def run(backend: str, uri: str | None, n: int, dim: int, n_queries: int, top_k: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    vecs = rng.normal(size=(n, dim)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    queries = vecs[rng.choice(n, n_queries, replace=False)] + 0.1 * rng.normal(size=(n_queries, dim)).astype(np.float32)
    exact = np.argsort(-(queries @ vecs.T), axis=1)[:, :top_k]
    records = [Record(f"{i:08x}", vecs[i], {"domain": "photo", "label": f"c{i % 100}", "path": f"/g/{i}.jpg"}) for i in range(n)]
    be = get_backend(backend, uri)
    try:
        be.drop_collection("bench")
        be.create_collection(CollectionInfo("bench", dim, "bench"))
        t0 = time.perf_counter()
        for start in range(0, n, 10_000):
            be.upsert("bench", records[start : start + 10_000])
        be.flush("bench")
        t_insert = time.perf_counter() - t0
        t0 = time.perf_counter()
        hits = [be.search("bench", q[None], top_k=top_k)[0] for q in queries]
        t_query = time.perf_counter() - t0
        t0 = time.perf_counter()
        be.search("bench", queries, top_k=top_k)
        t_batch = time.perf_counter() - t0
        recall = np.mean([len({int(h.id, 16) for h in row} & set(ex.tolist())) / top_k for row, ex in zip(hits, exact, strict=True)])
        be.drop_collection("bench")
    finally:
        be.close()
    return {"backend": backend, "n": n, "dim": dim, "insert_vec_per_s": n / t_insert, "query_ms": 1000 * t_query / n_queries,
            "batch_query_ms_per_q": 1000 * t_batch / n_queries, f"recall@{top_k}": float(recall)}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--top-k", type=int, default=10)
    p.add_argument("--backends", default="numpy,milvus,qdrant")
    a = p.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="clair-bench-"))
    try:
        for name in a.backends.split(","):
            uri = {"milvus": str(tmp / "bench.db"), "qdrant": str(tmp / "qdrant")}.get(name)
            r = run(name, uri, a.n, a.dim, a.queries, a.top_k)
            print(" | ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
