"""Approximate indexes against exact search, per engine and gallery size.

    python -m clair_vec.benchmarks.ann --vectors 1000000                      # Milvus Lite and Qdrant Edge
    python -m clair_vec.benchmarks.ann --vectors 20000,100000 --engines milvus-lite,qdrant-edge
    python -m clair_vec.benchmarks.ann --vectors 100000 --engines milvus-server --milvus-uri http://127.0.0.1:19530
    python -m clair_vec.benchmarks.ann --from-collection gallery --from-uri ./clair_vec_milvus.db   # your own vectors

Each size gets one gallery of clustered unit vectors (``--clusters`` Gaussian clusters on the
sphere, about as tight as a CLIP gallery of many categories) of the model's dimension, and queries
drawn from the same clusters but not in the gallery. For every engine and index it reports, through
the backend plugins a user runs:

- ``build_s``: insert, flush (Qdrant Edge builds its graph there), and the wait until searches
  stop getting faster (a Milvus server builds its index in the background, Milvus Lite
  reorganises its segments in the background after a bulk insert);
- ``rss_mb``: the resident memory the engine added, this process and its children (Milvus Lite
  runs its engine in a child process), and a local server's processes given with ``--server-pid``;
- ``recall@10`` against exact numpy search, for each search setting;
- ``qps_1`` and ``qps_16``: single queries from 1 and from 16 client threads sharing the handle.

Timings are for this box and this run; compare rows of one run only. Tests never assert on them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clair_vec.benchmarks.backends import reload_built_index
from clair_vec.store.backend import CollectionInfo, Record
from clair_vec.store.plugins import get_backend

#: the benchmark's own collection, dropped before and after: a name no gallery has
COLLECTION = f"clair_vec_ann_bench_{os.getpid()}"


@dataclass
class Variant:
    """One index build and the search settings tried on it."""

    engine: str
    index: str
    options: dict[str, Any] = field(default_factory=dict)
    #: label -> the attributes set on the backend handle before searching
    searches: dict[str, dict[str, Any]] = field(default_factory=lambda: {"": {}})


def variants(engine: str, n: int, efs: tuple[int, ...] = (32, 64, 128)) -> list[Variant]:
    nlist = max(16, min(4096, int(4 * math.sqrt(n))))
    if engine.startswith("milvus"):
        hnsw = {"index_type": "HNSW", "index_params": {"M": 16, "efConstruction": 200}}
        ivf = {"index_type": "IVF_FLAT", "index_params": {"nlist": nlist}}
        sq8 = {"index_type": "IVF_SQ8", "index_params": {"nlist": nlist}}
        return [
            Variant(engine, "default", {}),
            Variant(engine, "FLAT", {"index_type": "FLAT"}),
            Variant(engine, "HNSW M16 efC200", hnsw, {f"ef {ef}": {"search_params": {"params": {"ef": ef}}} for ef in efs}),
            Variant(engine, f"IVF_FLAT nlist {nlist}", ivf,
                    {f"nprobe {p}": {"search_params": {"params": {"nprobe": p}}} for p in (8, 16, 32)}),  # fmt: skip
            Variant(engine, f"IVF_SQ8 nlist {nlist}", sq8, {"nprobe 16": {"search_params": {"params": {"nprobe": 16}}}}),
        ]
    if engine == "qdrant-edge":
        return [
            Variant(engine, "default", {}),
            Variant(engine, "exact (no graph)", {"index_threshold": None}),
            Variant(engine, "HNSW m16 efc100", {"index_threshold": 0, "hnsw_m": 16, "hnsw_ef_construct": 100},
                    {f"ef {ef}": {"hnsw_ef": ef} for ef in efs}),  # fmt: skip
        ]
    raise SystemExit(f"unknown engine {engine!r}: choose from milvus-lite, milvus-server, qdrant-edge")


def clustered(n: int, dim: int, clusters: int, spread: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` gallery vectors and 200 queries from ``clusters`` Gaussian clusters on the unit
    sphere; ``spread`` is the noise's norm against the unit centre."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)

    def draw(m: int) -> np.ndarray:
        out = np.empty((m, dim), np.float32)
        for s in range(0, m, 100_000):  # in blocks: a million noise rows at once would double the peak
            k = min(100_000, m - s)
            block = centres[rng.integers(0, clusters, k)] + rng.normal(scale=spread / math.sqrt(dim), size=(k, dim)).astype(np.float32)
            out[s : s + k] = block / np.linalg.norm(block, axis=1, keepdims=True)
        return out

    return draw(n), draw(200)


def from_collection(backend: str, uri: str | None, name: str, queries: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A real gallery: every vector of an existing collection (a ``clair-vec demo`` or your own),
    ``queries`` of them drawn at random and held out of the gallery as the queries."""
    with get_backend(backend, uri) as be:
        ids = [rid for rid, _ in be.records(name)]
        if len(ids) <= queries:
            raise SystemExit(f"collection {name!r} holds {len(ids)} vectors: more than the {queries} held out as queries are needed")
        rows = []
        for s in range(0, len(ids), 4096):
            got = be.vectors(name, ids[s : s + 4096])
            rows.append(np.stack([got[i] for i in ids[s : s + 4096]]))
    vectors = np.concatenate(rows).astype(np.float32)
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    held = np.zeros(len(vectors), bool)
    held[np.random.default_rng(seed).choice(len(vectors), queries, replace=False)] = True
    return vectors[~held], vectors[held]


def exact_top(gallery: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    best = np.empty((len(queries), 0), np.int64)
    best_s = np.empty((len(queries), 0), np.float32)
    for s in range(0, len(gallery), 200_000):
        scores = queries @ gallery[s : s + 200_000].T
        top = np.argpartition(-scores, min(k, scores.shape[1] - 1), axis=1)[:, :k]
        best = np.concatenate([best, top + s], axis=1)
        best_s = np.concatenate([best_s, np.take_along_axis(scores, top, axis=1)], axis=1)
    order = np.argsort(-best_s, axis=1)[:, :k]
    return np.take_along_axis(best, order, axis=1)


#: engines running outside this process tree whose memory and CPU count too (``--server-pid``)
SERVER_PIDS: list[int] = []


def _tree() -> list[int]:
    """This process, the ``--server-pid`` processes, and their descendants (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                ppid = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d))
    out, todo = [], [os.getpid(), *SERVER_PIDS]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def rss_mb() -> float:
    """Resident memory of :func:`_tree`'s processes."""
    total = 0
    for pid in _tree():
        try:
            total += next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                          if line.startswith("VmRSS:"))  # fmt: skip
        except (OSError, StopIteration):
            pass
    return total / 1024


def _tree_cpu_s() -> float:
    """CPU seconds (user + system) used so far by :func:`_tree`'s processes."""
    total = 0
    for pid in _tree():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return total / os.sysconf("SC_CLK_TCK")


def _records(vectors: np.ndarray, start: int) -> Iterator[Record]:
    for i, v in enumerate(vectors, start):
        yield Record(f"{i:08x}", v, {"domain": "photo", "label": "", "path": ""})


def _qps(be: Any, queries: np.ndarray, clients: int, k: int, budget_s: float) -> float:
    """Queries a second from ``clients`` threads, over at most ``budget_s`` seconds: a FLAT
    million-vector gallery on Milvus Lite answers in seconds, and 400 of its queries would
    take most of an hour to say what the first 30 s already say."""
    work = [q for _ in range(max(1, 400 // len(queries)) if clients > 1 else 1) for q in queries]
    deadline = time.perf_counter() + budget_s
    done = [0] * clients

    def client(c: int) -> None:
        for q in work[c::clients]:
            be.search(COLLECTION, q[None], top_k=k)
            done[c] += 1
            if time.perf_counter() > deadline:
                return

    t = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    return sum(done) / (time.perf_counter() - t)


def run_variant(v: Variant, uri: str, gallery: np.ndarray, queries: np.ndarray, exact: np.ndarray, k: int,
                budget_s: float = 60.0) -> list[dict]:  # fmt: skip
    backend = "milvus" if v.engine.startswith("milvus") else "qdrant"
    rss0 = rss_mb()
    be = get_backend(backend, uri, **v.options)
    rows = []
    try:
        be.drop_collection(COLLECTION)
        be.create_collection(CollectionInfo(COLLECTION, gallery.shape[1], "ann-bench"))
        t = time.perf_counter()
        for s in range(0, len(gallery), 10_000):
            be.upsert(COLLECTION, list(_records(gallery[s : s + 10_000], s)))
        insert_s = time.perf_counter() - t
        be.flush(COLLECTION)
        reload_built_index(be, COLLECTION)  # the flush waited for a Milvus server's background build
        if backend == "milvus" and (v.engine == "milvus-lite" or SERVER_PIDS):  # Qdrant Edge builds inside flush()
            _settle()
        be.search(COLLECTION, queries[:1], top_k=k)
        build_s = time.perf_counter() - t
        rss = rss_mb() - rss0
        for label, attrs in v.searches.items():
            for key, value in attrs.items():
                setattr(be, key, value)
            hits, deadline = [], time.perf_counter() + budget_s
            for q in queries:  # at least 20 queries, then only while the budget lasts (a slow FLAT)
                hits.append(be.search(COLLECTION, q[None], top_k=k)[0])
                if len(hits) >= 20 and time.perf_counter() > deadline:
                    break
            recall = float(np.mean([len({int(h.id, 16) for h in row} & set(ex.tolist())) / k for row, ex in zip(hits, exact, strict=False)]))
            rows.append({"engine": v.engine, "n": len(gallery), "index": v.index, "search": label or "-",
                         "insert_s": round(insert_s, 1), "build_s": round(build_s, 1), "rss_mb": round(rss),
                         f"recall@{k}": round(recall, 4), "queries": len(hits),
                         "qps_1": round(_qps(be, queries, 1, k, budget_s / 2), 1),
                         "qps_16": round(_qps(be, queries, 16, k, budget_s / 2), 1)})  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
        be.drop_collection(COLLECTION)
    finally:
        be.close()
    return rows


def _settle(timeout: float = 1800) -> None:
    """Wait until the engine stops working in the background. Milvus Lite reports its index
    finished at once, yet searches scan for a while after a bulk insert (0.6 s a query at 60k x
    512-d for 80 s, then 0.06 s) while its threads reorganise the segments: the build is over
    when this process tree stops using CPU on its own."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before = _tree_cpu_s()
        time.sleep(5)
        if _tree_cpu_s() - before < 0.25:
            return


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vectors", default="1000000", help="gallery sizes, comma-separated (default 1000000)")
    p.add_argument("--dim", type=int, default=512, help="vector dimension (ViT-B-32's 512)")
    p.add_argument("--clusters", type=int, default=1000, help="clusters in the synthetic gallery")
    p.add_argument("--spread", type=float, default=1.0, help="cluster noise norm against the unit centre")
    p.add_argument("--engines", default="milvus-lite,qdrant-edge", help="milvus-lite, milvus-server, qdrant-edge")
    p.add_argument("--milvus-uri", default="http://127.0.0.1:19530", help="the Milvus server for milvus-server")
    p.add_argument("--only", default=None, help="only these index families, comma-separated (e.g. FLAT,HNSW; exact for Qdrant Edge's scan)")
    p.add_argument("--top-k", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ef", default="64,128,256", help="HNSW search ef values, comma-separated")
    p.add_argument("--budget", type=float, default=60.0,
                   help="seconds for each recall measurement (at least 20 queries) and for each pair of QPS runs")  # fmt: skip
    p.add_argument("--from-collection", default=None, metavar="NAME",
                   help="measure on this collection's own vectors (200 held out as queries) instead of synthetic ones")
    p.add_argument("--from-backend", default="milvus", help="the backend holding --from-collection")
    p.add_argument("--from-uri", default=None, help="its URI (default: the backend's embedded default)")
    p.add_argument("--server-pid", type=int, action="append", default=[],
                   help="a local Milvus server's pid: its processes' memory is counted, and its idle CPU awaited")
    p.add_argument("--out", default=None, help="also write the rows here as JSON lines")
    a = p.parse_args(argv)
    SERVER_PIDS[:] = a.server_pid
    rows: list[dict] = []
    sizes = [0] if a.from_collection else [int(x) for x in a.vectors.split(",")]
    for n in sizes:
        if a.from_collection:
            gallery, queries = from_collection(a.from_backend, a.from_uri, a.from_collection, 200, a.seed)
            n = len(gallery)
        else:
            gallery, queries = clustered(n, a.dim, a.clusters, a.spread, a.seed)
        exact = exact_top(gallery, queries, a.top_k)
        for engine in a.engines.split(","):
            for v in variants(engine, n, tuple(int(e) for e in a.ef.split(","))):
                if a.only and v.index.split()[0] not in a.only.split(","):
                    continue
                tmp = Path(tempfile.mkdtemp(prefix="clair-ann-"))
                try:
                    uri = a.milvus_uri if engine == "milvus-server" else str(tmp / ("ann.db" if engine == "milvus-lite" else "qdrant"))
                    rows += run_variant(v, uri, gallery, queries, exact, a.top_k, a.budget)
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
                if a.out:
                    Path(a.out).write_text("".join(json.dumps(r) + "\n" for r in rows))
        del gallery
    print(_table(rows, a.top_k))
    return 0


def _table(rows: list[dict], k: int) -> str:
    head = f"| engine | vectors | index | search | build s | memory MB | recall@{k} | QPS 1 | QPS 16 | QPS 16 vs FLAT |"
    lines = [head, "|" + "---|" * 10]
    flat = {(r["engine"], r["n"]): r["qps_16"] for r in rows if r["index"].startswith(("FLAT", "exact"))}
    for r in rows:
        base = flat.get((r["engine"], r["n"]))
        ratio = f"{r['qps_16'] / base:.1f}x" if base else "-"
        lines.append(f"| {r['engine']} | {r['n']:,} | {r['index']} | {r['search']} | {r['build_s']} | {r['rss_mb']} | "
                     f"{r[f'recall@{k}']:.3f} | {r['qps_1']} | {r['qps_16']} | {ratio} |")  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    from clair_vec.benchmarks import run_script

    run_script(main)
