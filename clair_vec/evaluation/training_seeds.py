"""How much a training configuration's unseen-class gain depends on luck: each configuration is
trained with several training seeds (the batch order) on each data seed, and scored on the
unseen classes against raw CLIP (mAP@200, exact search), unchecked.

    clair-vec demo --workdir d0 --seed 0; clair-vec demo --workdir d1 --seed 1; clair-vec demo --workdir d2 --seed 2
    python -m clair_vec.evaluation.training_seeds --workdir d0 --workdir d1 --workdir d2 \\
        --config '30 epochs at 1e-3={"epochs": 30, "lr": 0.001}' --config 'default={}'
    python -m clair_vec.evaluation.training_seeds --data /tmp/pacs --bootstrap-steps 300 --config 'default={}'

A configuration is ``NAME=JSON`` (ClairConfig fields over the defaults). The table gives per query
domain the mean and standard deviation of the gain over every (data seed, training seed) cell,
the worst cell, and how many cells gain at least 0.03 on some domain or lose more than 0.01 on one.
"""

from __future__ import annotations

import argparse
import json
import statistics
from typing import Any

import torch.nn.functional as F

from clair_vec.evaluation.ablation import Run, Variant, closed_form, data_run, demo_run, score
from clair_vec.method.centering import decide_centring
from clair_vec.method.config import ClairConfig
from clair_vec.training.trainer import ClairTrainer


def gains(run: Run, pivot: str, changes: dict[str, Any], training_seed: int, k: int = 200, ensemble: int = 1) -> list[float]:
    """The trained model's mAP@k gain over raw CLIP per query domain (sorted), one training seed.
    ``ensemble``: that many heads, each from its own seed (initialisation and batch order), their
    embeddings averaged and renormalised."""
    queries = sorted(d for d in run.test if d != pivot)
    base = ClairConfig(clip_model=run.foundation.arch, clip_pretrained=run.clip_pretrained, pivot_domain=pivot,
                       batch_size=64, seed=run.seed)  # fmt: skip
    raw = score(closed_form(run, base, Variant(trained=False, center=False)), run.test, pivot, queries, k)
    # as training decides it; the seeds do not enter the decision, so it is made once
    cfg, _ = decide_centring(base.replace(**changes), {d: f.clean for d, f in run.train.items()})
    models = []
    for member in range(ensemble):
        seed = run.seed * 100 + training_seed + 1000 * member
        trainer = ClairTrainer(cfg.replace(seed=seed), run.foundation, run.seen_classes, run.train, progress=False)
        trainer.fit()
        models.append(trainer.build_model())
    got = score(lambda f, d: F.normalize(sum(m.embed_features(f, d) for m in models), dim=-1), run.test, pivot, queries, k)
    return [got[i] - raw[i] for i in range(0, len(got), 2)]


def summary(cells: list[list[float]]) -> dict[str, Any]:
    cols = list(zip(*cells, strict=True))
    return {"mean": [statistics.fmean(c) for c in cols], "std": [statistics.stdev(c) if len(c) > 1 else 0.0 for c in cols],
            "worst": min(min(c) for c in cols), "cells": len(cells),
            "reach_0.03": sum(max(g) >= 0.03 for g in cells), "lose_0.01": sum(min(g) < -0.01 for g in cells)}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", action="append", default=[], help="a finished demo work directory (one per data seed)")
    p.add_argument("--data", default=None, help="or a dataset root with a web pool (ROOT/web, ROOT/data), 3 data seeds")
    p.add_argument("--bootstrap-steps", type=int, default=1200, help="with --data: steps of each stand-in bootstrap")
    p.add_argument("--config", action="append", required=True, metavar="NAME=JSON", help="a configuration to measure")
    p.add_argument("--training-seeds", type=int, default=3, help="training seeds per data seed")
    p.add_argument("--ensemble", type=int, default=1, metavar="K",
                   help="score K heads a cell, each from its own seed, their embeddings averaged")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    a = p.parse_args(argv)
    runs = [demo_run(w) for w in a.workdir]
    if a.data:
        runs += [data_run(a.data, s, clip_model="clair-tiny", clip_pretrained=None, bootstrap_steps=a.bootstrap_steps) for s in range(3)]
    if not runs:
        p.error("give --workdir (finished demos) or --data")
    if a.ensemble < 1:
        p.error(f"--ensemble must be at least 1, got {a.ensemble}")
    configs = {name: json.loads(body) for name, _, body in (c.partition("=") for c in a.config)}
    result = {}
    for name, changes in configs.items():
        cells = [gains(run, pivot, changes, t, ensemble=a.ensemble) for run, pivot in runs for t in range(a.training_seeds)]
        result[name] = {"cells": cells, **summary(cells)}
        if not a.json:
            s = result[name]
            cols = "  ".join(f"{m:+.3f} ± {sd:.3f}" for m, sd in zip(s["mean"], s["std"], strict=True))
            print(f"{name:<28} {cols}  worst {s['worst']:+.3f}  reach 0.03: {s['reach_0.03']}/{s['cells']}  "
                  f"lose 0.01: {s['lose_0.01']}/{s['cells']}", flush=True)  # fmt: skip
    if a.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
