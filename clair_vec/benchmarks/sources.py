"""Indexing speed from where the images live, against the same images on local disk (same run).

    python -m clair_vec.benchmarks.sources --model DIR --local FOLDER --remote s3://bucket/prefix [--remote URL-LIST.txt]
    python -m clair_vec.benchmarks.sources --arch ViT-B-32 --limit 300 --local FOLDER --remote s3://bucket/prefix

Each source is indexed into a fresh Milvus Lite collection by the same model, local disk first;
the table gives images a second and the ratio to local disk, and checks that both stored the
same record ids (the same bytes). For S3 the endpoint and credentials come from the environment
(``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ...), as for ``clair-vec index``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from clair_vec.retrieval.remote import read_list


def _index(model: str, uri: str, collection: str, inputs: list[str]) -> tuple[float, set[str], int]:
    from clair_vec.retrieval.retriever import Retriever

    with Retriever(model, uri=uri) as r:
        t = time.perf_counter()
        summary = r.index(collection, inputs, progress=False)
        seconds = time.perf_counter() - t
        ids = {rid for rid, _ in r.backend.records(collection)}
    return seconds, ids, summary.indexed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--model", help="model directory")
    who.add_argument("--arch", help="or an open_clip architecture with random weights (the real compute per image)")
    p.add_argument("--limit", type=int, default=None, help="only the first N images of each source (sorted)")
    p.add_argument("--local", required=True, help="the images on local disk")
    p.add_argument("--remote", action="append", required=True,
                   help="the same images elsewhere: s3://bucket/prefix, a shard pattern, or a .txt/.csv/.parquet URL list")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    a = p.parse_args(argv)
    from clair_vec.datasets.images import walk_images
    from clair_vec.retrieval.remote import list_s3

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        uri = str(Path(tmp) / "bench.db")
        if a.arch:
            from clair_vec.benchmarks.models import random_model

            a.model = random_model(a.arch, Path(tmp) / "model")
        local = [str(f) for f in walk_images(a.local).files][: a.limit]
        base_s, base_ids, n = _index(a.model, uri, "local", local)
        rows.append({"source": a.local, "images": n, "img_per_s": n / base_s, "ratio": 1.0, "same_ids": True})
        for i, source in enumerate(a.remote):
            inputs = read_list(source) if source.lower().endswith((".txt", ".csv")) else [source]
            if a.limit is not None:
                inputs = (list_s3(inputs[0]) if inputs[0].startswith("s3://") and len(inputs) == 1 else inputs)[: a.limit]
            s, ids, m = _index(a.model, uri, f"remote{i}", inputs)
            rows.append({"source": source, "images": m, "img_per_s": m / s, "ratio": base_s / s * m / max(n, 1),
                         "same_ids": ids == base_ids})  # fmt: skip
    if a.json:
        print(json.dumps(rows))
        return 0
    print(f"{'source':<40} {'images':>7} {'img/s':>8} {'vs local':>9}  same ids")
    for r in rows:
        print(f"{r['source'][:40]:<40} {r['images']:>7} {r['img_per_s']:>8.1f} {r['ratio']:>8.2f}x  {r['same_ids']}")
    return 0


if __name__ == "__main__":
    from clair_vec.benchmarks import run_script

    run_script(main)
