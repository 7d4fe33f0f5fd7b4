"""Peak memory and time of tagging images zero-shot over a large label vocabulary.

    python -m clair_vec.benchmarks.vocabulary --arch clair-tiny --arch ViT-B-32 --labels 8 --labels 10000

Each (architecture, vocabulary size) runs in a fresh process: a random-weight CLIP of that shape
with learned prompt context (the expensive path of ``ClairModel.class_text_embeddings``), the
vocabulary's text embeddings in the gallery domain, then ``zero_shot_labels`` of 64 images. The
peak RSS of each run is compared with the 8-label run of the same architecture: the growth is what
the vocabulary costs (goal: under 200 MB for 10,000 labels).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

WORDS = ("red", "small", "old", "wooden", "striped", "flying", "broken", "golden", "wild", "paper")
NOUNS = ("chair", "dog", "lamp", "boat", "tree", "guitar", "house", "bird", "car", "shoe")


def labels(n: int) -> list[str]:
    """``n`` distinct, realistic-length labels ("striped wooden lamp 417")."""
    return [f"{WORDS[i % 10]} {WORDS[(i // 10) % 10]} {NOUNS[(i // 100) % 10]} {i}" for i in range(n)]


def child(arch: str, n: int) -> dict[str, float]:
    import torch

    from clair_vec.method.config import ClairConfig
    from clair_vec.method.foundation import FoundationModel
    from clair_vec.method.head import ClairHead
    from clair_vec.method.mapping import DomainMapping
    from clair_vec.method.model import ClairModel
    from clair_vec.method.prompts import PromptLearner, hand_crafted_text_embeddings

    torch.manual_seed(0)
    fm = FoundationModel.load(arch, None)
    domains, classes = ["photo", "sketch"], labels(8)
    text = {d: hand_crafted_text_embeddings(fm, classes, d) for d in domains}
    cfg = ClairConfig(clip_model=arch, clip_pretrained=None)
    model = ClairModel(fm, ClairHead.identity(fm.embed_dim), DomainMapping.fit(text, "photo"), classes, text, cfg,
                       PromptLearner(fm, domains, cfg.n_ctx).state_dict())  # fmt: skip
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    feats = torch.nn.functional.normalize(torch.randn(64, fm.embed_dim), dim=-1)
    tags, conf = model.zero_shot_labels(feats, "photo", labels(n))
    seconds = time.perf_counter() - t0
    assert len(tags) == 64 and len(conf) == 64
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"arch": arch, "labels": n, "rss_before_mb": round(before, 1), "peak_rss_mb": round(peak, 1), "seconds": round(seconds, 1)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", action="append", default=None, help="open_clip architecture (repeatable; default clair-tiny)")
    p.add_argument("--labels", action="append", type=int, default=None, help="vocabulary size (repeatable; default 8 and 10000)")
    p.add_argument("--child", nargs=2, metavar=("ARCH", "N"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        print(json.dumps(child(a.child[0], int(a.child[1]))))
        return
    rows = []
    for arch in a.arch or ["clair-tiny"]:
        base = None
        for n in sorted(set(a.labels or [8, 10_000])):
            out = subprocess.run([sys.executable, "-m", "clair_vec.benchmarks.vocabulary", "--child", arch, str(n)],
                                 capture_output=True, text=True, check=True)  # fmt: skip
            row = json.loads(out.stdout.strip().splitlines()[-1])
            base = base if base is not None else row["peak_rss_mb"]
            row["growth_vs_smallest_mb"] = round(row["peak_rss_mb"] - base, 1)
            rows.append(row)
            print(json.dumps(row), flush=True)
    print("| arch | labels | peak RSS MB | growth vs smallest MB | seconds |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['arch']} | {r['labels']:,} | {r['peak_rss_mb']} | {r['growth_vs_smallest_mb']} | {r['seconds']} |")


if __name__ == "__main__":
    from clair_vec.benchmarks import run_script

    run_script(main)
