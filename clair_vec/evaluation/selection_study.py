"""Does the selection ship what gains and refuse what loses? Measured on real images and the demo.

    python -m clair_vec.evaluation.selection_study --out /tmp/study --seeds 3 \\
        --split vlcs_mini:dog,bird --split folder=/data/PACS:elephant,guitar --workdir d0 --workdir d1 --workdir d2

For every split (a real dataset from :mod:`clair_vec.datasets.real`, laid out with a web pool, and
its unseen classes), every seed bootstraps its own stand-in CLIP on the pool; each demo workdir is
one seed with its own data and stand-in. The model is trained as ``clair-vec train`` trains it and
scored as ``clair-vec evaluate`` scores it: mAP@200 of each query domain into the gallery domain on
the unseen classes, shipped model minus raw CLIP. Variants:

- ``unchecked``: the default method, no selection (``--val-fraction 0``);
- ``selection``: the default of ``clair-vec train``, the selection on folds of the seen classes;
- further variants from ``--variant NAME=JSON`` (ClairConfig changes and a fold share).

Prints a markdown table, the two rates the selection is judged by (of the unchecked model's cells
that gain at least 0.03, how many the selection ships; of those that lose 0.01 or more, how many it
ships), and writes ``study.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from clair_vec.datasets import real
from clair_vec.datasets.folders import scan_folder
from clair_vec.evaluation.zero_shot import evaluate
from clair_vec.method.config import ClairConfig
from clair_vec.method.foundation import FoundationModel
from clair_vec.training.bootstrap_clip import bootstrap_clip
from clair_vec.training.job import train_local

K = 200
#: name -> (ClairConfig changes, share of seen classes per validation fold; 0 = no selection)
VARIANTS: dict[str, tuple[dict[str, Any], float]] = {
    "unchecked": ({}, 0.0),
    "selection": ({}, 0.3),
}
GAIN, LOSS = 0.03, 0.01


def prepare(split: str, out: Path, bootstrap_steps: int, clip_model: str, seed: int) -> tuple[Path, FoundationModel, str]:
    """Lay out ``dataset:unseen,unseen`` (or ``folder=PATH:unseen,unseen``) under ``out`` with a web
    pool beside it, and bootstrap this seed's stand-in CLIP on the pool."""
    dataset, _, unseen = split.rpartition(":")
    name, _, src = dataset.partition("=")
    if name not in ("pacs_mini", "vlcs_mini", "folder") or (name == "folder") != bool(src) or not unseen:
        raise ValueError(f"--split {split!r}: expected pacs_mini:CLASS,CLASS, vlcs_mini:CLASS,CLASS or folder=PATH:CLASS,CLASS")
    root = out / f"{Path(src).name if src else name}-{unseen.replace(',', '-')}"
    if not (root / "data").is_dir():
        layout = real.folder if name == "folder" else getattr(real, name)
        args = (src,) if name == "folder" else ()
        layout(*args, root, unseen=unseen.split(","), web_share=0.3)  # type: ignore[operator]
    ckpt = root / f"{clip_model}-web-{bootstrap_steps}-seed{seed}.pt"
    if not ckpt.exists():
        bootstrap_clip(scan_folder(root / "web"), ckpt, arch=clip_model, steps=bootstrap_steps, seed=seed, progress=False)
    return root / "data", FoundationModel.load(clip_model, str(ckpt)), str(ckpt)


def _beds(splits: Sequence[str], workdirs: Sequence[str], out: Path, seeds: int, bootstrap_steps: int,
          clip_model: str) -> Iterator[tuple[str, int, Path, FoundationModel, str, str, dict]]:  # fmt: skip
    """(name, seed, data, CLIP, its checkpoint, pivot, templates) for every split x seed and demo workdir."""
    for split in splits:
        vlcs = split.startswith("vlcs")
        for seed in range(seeds):
            data, fm, ckpt = prepare(split, out, bootstrap_steps, clip_model, seed)
            yield split, seed, data, fm, ckpt, real.VLCS_PIVOT if vlcs else "photo", real.VLCS_TEMPLATES if vlcs else {}
    for work in map(Path, workdirs):
        ckpt = next((work / "foundation").glob("*.pt"))
        seed = int(json.loads((work / "results.json").read_text()).get("seed", 0))
        yield f"demo {work.name}", seed, work / "data", FoundationModel.load(clip_model, str(ckpt)), str(ckpt), "photo", {}


def run(splits: Sequence[str], out: str | Path, *, workdirs: Sequence[str] = (), seeds: int = 3, epochs: int = 60,
        batch_size: int = 64, bootstrap_steps: int = 1200, clip_model: str = "clair-tiny",
        variants: dict[str, tuple[dict[str, Any], float]] | None = None) -> dict[str, Any]:  # fmt: skip
    out = Path(out)
    rows = []
    for bed, seed, data, fm, ckpt, pivot, templates in _beds(splits, workdirs, out, seeds, bootstrap_steps, clip_model):
        for name, (changes, val_fraction) in (variants or VARIANTS).items():
            t0 = time.perf_counter()
            cfg = ClairConfig(clip_model=clip_model, clip_pretrained=ckpt, pivot_domain=pivot, templates=templates,
                              epochs=epochs, batch_size=batch_size, seed=seed, **changes)  # fmt: skip
            model = train_local(data, cfg, foundation=fm, val_fraction=val_fraction, cache_dir=out / "cache", progress=False)
            result = evaluate(model, data, k=K)
            r = model.record
            rows.append({
                "split": bed, "seed": seed, "variant": name, "shipped": r["shipped"],
                "routing": model.routing, "seconds": round(time.perf_counter() - t0, 1),
                "validation": (r.get("validation") or {}),
                "kept_fraction": {d: s["kept_fraction"] for d, s in r["stats"]["domains"].items()},
                "pseudo_label_accuracy": {d: s["pseudo_label_accuracy"] for d, s in r["stats"]["domains"].items()},
                "unseen": {row["query"]: {"raw_clip": row["raw_clip"][f"mAP@{K}"], "model": row["model"][f"mAP@{K}"],
                                          "delta": row["model"][f"mAP@{K}"] - row["raw_clip"][f"mAP@{K}"]}
                           for row in result["rows"]},
            })  # fmt: skip
            print(format_row(rows[-1]), flush=True)
    worst = {name: min((d["delta"] for r in rows if r["variant"] == name for d in r["unseen"].values()), default=0.0)
             for name in (variants or VARIANTS)}  # fmt: skip
    return {"rows": rows, "worst_delta": worst, "rates": rates(rows), "k": K, "seeds": seeds, "epochs": epochs,
            "bootstrap_steps": bootstrap_steps}  # fmt: skip


def rates(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per (bed, seed, query domain) cell: does the selection ship the unchecked model where it gains
    at least :data:`GAIN`, and where it loses :data:`LOSS` or more? "Ships" means the selection
    used the trained head for that domain (blend above 0)."""
    unchecked = {(r["split"], r["seed"]): r for r in rows if r["variant"] == "unchecked"}
    selected = {(r["split"], r["seed"]): r for r in rows if r["variant"] == "selection"}
    gaining, losing = [], []
    for key, u in unchecked.items():
        s = selected.get(key)
        if s is None:
            continue
        for d, cell in u["unseen"].items():
            shipped = s["routing"].get(d, 0.0) > 0
            if cell["delta"] >= GAIN:
                gaining.append(shipped)
            elif cell["delta"] <= -LOSS:
                losing.append(shipped)
    return {"gaining_cells": len(gaining), "gaining_shipped": sum(gaining), "losing_cells": len(losing), "losing_shipped": sum(losing)}


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
    r = result["rates"]
    lines.append(f"unchecked cells gaining >= {GAIN}: {r['gaining_cells']}, shipped by the selection: {r['gaining_shipped']}; "
                 f"losing >= {LOSS}: {r['losing_cells']}, shipped: {r['losing_shipped']}")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="work directory: datasets, bootstrapped CLIPs, feature cache, study.json")
    p.add_argument("--split", action="append", default=[], metavar="DATASET:UNSEEN",
                   help="e.g. vlcs_mini:dog,bird or folder=/data/PACS:dog,house (repeatable)")
    p.add_argument("--workdir", action="append", default=[], help="a finished `clair-vec demo` work directory (one seed each)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per split, each with its own stand-in CLIP")
    p.add_argument("--epochs", type=int, default=60, help="epochs per training (the demo trains 60)")
    p.add_argument("--batch-size", type=int, default=64, help="images per step")
    p.add_argument("--bootstrap-steps", type=int, default=1200, help="steps of each stand-in CLIP bootstrap")
    p.add_argument("--clip-model", default="clair-tiny", help="architecture of the stand-in CLIP")
    p.add_argument("--variant", action="append", default=[], metavar="NAME=JSON",
                   help='extra variant: {"set": {ClairConfig changes}, "val_fraction": 0.3}')
    a = p.parse_args(argv)
    if not a.split and not a.workdir:
        p.error("give at least one --split or --workdir")
    variants = dict(VARIANTS)
    for item in a.variant:
        name, _, raw = item.partition("=")
        spec = json.loads(raw)
        variants[name] = (spec.get("set", {}), float(spec.get("val_fraction", 0.3)))
    result = run(a.split, a.out, workdirs=a.workdir, seeds=a.seeds, epochs=a.epochs, batch_size=a.batch_size,
                 bootstrap_steps=a.bootstrap_steps, clip_model=a.clip_model, variants=variants)  # fmt: skip
    print(format_table(result))
    Path(a.out, "study.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
