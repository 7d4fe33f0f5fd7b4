"""Does the shipped model ever search unseen classes worse than raw CLIP? Measured on real images.

    python -m clair_vec.evaluation.selection_study --out /tmp/study --seeds 3 \\
        --split pacs_mini:dog,house --split pacs_mini:elephant,guitar

For every split (a real dataset from :mod:`clair_vec.datasets.real` and its unseen classes), a
stand-in CLIP is bootstrapped on the *seen* classes only (no pretrained weights are reachable
offline), then for every seed and variant the model is trained as ``clair-vec train`` trains it
and scored as ``clair-vec evaluate`` scores it: mAP@200 of each query domain into the gallery
domain on the unseen classes, shipped model minus raw CLIP. Variants:

- ``unchecked head``: the spec's training, no selection (``--val-fraction 0``): what used to ship
  whenever the head won on two validation classes;
- ``selection``: the per-domain selection on rotating folds (the default of ``clair-vec train``);
- further variants from ``--variant NAME=JSON`` (ClairConfig changes, e.g. a regulariser).

CLIP features are cached under ``--out``; prints a markdown table and writes ``study.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

from clair_vec.datasets import real
from clair_vec.datasets.folders import split_dataset
from clair_vec.evaluation.zero_shot import evaluate
from clair_vec.method.config import ClairConfig
from clair_vec.method.foundation import FoundationModel
from clair_vec.training.bootstrap_clip import bootstrap_clip
from clair_vec.training.job import train_local

K = 200
#: name -> (ClairConfig changes, share of seen classes per validation fold; 0 = no selection)
VARIANTS: dict[str, tuple[dict[str, Any], float]] = {
    "unchecked head": ({}, 0.0),
    "selection": ({}, 0.1),
    "selection + identity_decay=1": ({"identity_decay": 1.0}, 0.1),
}


def prepare(split: str, out: Path, bootstrap_steps: int, clip_model: str) -> tuple[Path, FoundationModel, str]:
    """Lay out ``dataset:unseen,unseen`` under ``out`` and bootstrap its CLIP on the seen classes."""
    dataset, _, unseen = split.partition(":")
    if dataset not in ("pacs_mini", "vlcs_mini"):
        raise ValueError(f"--split {split!r}: expected pacs_mini:CLASS,CLASS or vlcs_mini:CLASS,CLASS")
    root = out / f"{dataset}-{unseen.replace(',', '-')}"
    getattr(real, dataset)(root / "data", unseen=unseen.split(","))
    seen, _ = split_dataset(root / "data")
    ckpt = root / f"{clip_model}-bootstrap-{bootstrap_steps}.pt"
    if not ckpt.exists():
        bootstrap_clip(seen, ckpt, arch=clip_model, steps=bootstrap_steps, progress=False)
    return root / "data", FoundationModel.load(clip_model, str(ckpt)), str(ckpt)


def run(splits: list[str], out: str | Path, *, seeds: int = 3, epochs: int = 20, batch_size: int = 64,
        bootstrap_steps: int = 600, clip_model: str = "clair-tiny",
        variants: dict[str, tuple[dict[str, Any], float]] | None = None) -> dict[str, Any]:  # fmt: skip
    out = Path(out)
    rows = []
    for split in splits:
        data, fm, ckpt = prepare(split, out, bootstrap_steps, clip_model)
        pivot = real.VLCS_PIVOT if split.startswith("vlcs") else "photo"
        templates = real.VLCS_TEMPLATES if split.startswith("vlcs") else {}
        for seed in range(seeds):
            for name, (changes, val_fraction) in (variants or VARIANTS).items():
                t0 = time.perf_counter()
                cfg = ClairConfig(clip_model=clip_model, clip_pretrained=ckpt, pivot_domain=pivot, templates=templates,
                                  epochs=epochs, batch_size=batch_size, seed=seed, **changes)  # fmt: skip
                model = train_local(data, cfg, foundation=fm, val_fraction=val_fraction, cache_dir=out / "cache", progress=False)
                result = evaluate(model, data, k=K)
                r = model.record
                rows.append({
                    "split": split, "seed": seed, "variant": name, "shipped": r["shipped"],
                    "routing": model.routing, "seconds": round(time.perf_counter() - t0, 1),
                    "validation": (r.get("validation") or {}), "epoch": (r.get("selection") or {}).get("epoch"),
                    "kept_fraction": {d: s["kept_fraction"] for d, s in r["stats"]["domains"].items()},
                    "pseudo_label_accuracy": {d: s["pseudo_label_accuracy"] for d, s in r["stats"]["domains"].items()},
                    "unseen": {row["query"]: {"raw_clip": row["raw_clip"][f"mAP@{K}"], "model": row["model"][f"mAP@{K}"],
                                              "delta": row["model"][f"mAP@{K}"] - row["raw_clip"][f"mAP@{K}"]}
                               for row in result["rows"]},
                })  # fmt: skip
                print(format_row(rows[-1]), flush=True)
    worst = {name: min((d["delta"] for r in rows if r["variant"] == name for d in r["unseen"].values()), default=0.0)
             for name in (variants or VARIANTS)}  # fmt: skip
    return {"rows": rows, "worst_delta": worst, "k": K, "seeds": seeds, "epochs": epochs, "bootstrap_steps": bootstrap_steps}


def format_row(r: dict[str, Any]) -> str:
    cells = ", ".join(f"{q} {c['delta']:+.3f}" for q, c in r["unseen"].items())
    blends = ", ".join(f"{d} {b:g}" for d, b in r["routing"].items())
    return f"| {r['split']} | {r['seed']} | {r['variant']} | {r['shipped']} ({blends}) | {cells} |"


def format_table(result: dict[str, Any]) -> str:
    lines = ["| split | seed | variant | shipped (blend per domain) | unseen mAP@200, shipped - raw CLIP, per query domain |",
             "|---|---|---|---|---|", *(format_row(r) for r in result["rows"])]  # fmt: skip
    lines.append("")
    for name, worst in result["worst_delta"].items():
        deltas = [d["delta"] for r in result["rows"] if r["variant"] == name for d in r["unseen"].values()]
        lines.append(f"{name}: worst cell {worst:+.3f}, mean {statistics.fmean(deltas):+.4f} over {len(deltas)} cells")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="work directory: datasets, bootstrapped CLIPs, feature cache, study.json")
    p.add_argument("--split", action="append", required=True, metavar="DATASET:UNSEEN",
                   help="e.g. pacs_mini:dog,house (repeatable)")
    p.add_argument("--seeds", type=int, default=3, help="training seeds per split and variant")
    p.add_argument("--epochs", type=int, default=20, help="epochs per training")
    p.add_argument("--batch-size", type=int, default=64, help="images per step")
    p.add_argument("--bootstrap-steps", type=int, default=600, help="steps of the stand-in CLIP bootstrap")
    p.add_argument("--clip-model", default="clair-tiny", help="architecture of the stand-in CLIP")
    p.add_argument("--variant", action="append", default=[], metavar="NAME=JSON",
                   help='extra variant: {"set": {ClairConfig changes}, "val_fraction": 0.1}')
    a = p.parse_args(argv)
    variants = dict(VARIANTS)
    for item in a.variant:
        name, _, raw = item.partition("=")
        spec = json.loads(raw)
        variants[name] = (spec.get("set", {}), float(spec.get("val_fraction", 0.1)))
    result = run(a.split, a.out, seeds=a.seeds, epochs=a.epochs, batch_size=a.batch_size,
                 bootstrap_steps=a.bootstrap_steps, clip_model=a.clip_model, variants=variants)  # fmt: skip
    print(format_table(result))
    Path(a.out, "study.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
