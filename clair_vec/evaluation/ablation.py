"""The spec's §6.3 table: baselines and one-component-off ablations, mean ± std over seeds, with
the two diagnostics of every evaluation (query-embedding collapse and hubness).

    python -m clair_vec.evaluation.ablation --workdir clair_demo --seeds 5                    # after `make demo`
    python -m clair_vec.datasets.real pacs_mini /tmp/pacs --unseen dog,house
    python -m clair_vec.evaluation.ablation --data /tmp/pacs --bootstrap-steps 600 --seeds 3 --k 200

With ``--data`` and no ``--clip-pretrained``, a tiny CLIP is bootstrapped on the dataset's *seen*
classes first (no pretrained weights are reachable offline). Retrieval is exact (NumPy): queries
of every non-gallery domain against the gallery domain, unseen classes only; metrics per §5.5.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from clair_vec.datasets.folders import MultiDomainDataset, split_dataset
from clair_vec.evaluation.zero_shot import diagnosed_metrics
from clair_vec.method.config import ClairConfig, parse_overrides
from clair_vec.method.foundation import FoundationModel
from clair_vec.method.mapping import DomainMapping
from clair_vec.method.prompts import hand_crafted_text_embeddings
from clair_vec.training.features import extract_features
from clair_vec.training.trainer import ClairTrainer

#: name -> (config changes, map queries into the pivot domain)
VARIANTS: dict[str, tuple[dict[str, Any], bool]] = {
    "CLAIR (spec defaults)": ({}, True),
    "- confidence (B2: w=1)": ({"confidence_weighting": False}, True),
    "- L_ins (both instance terms)": ({"w_instance": 0.0, "w_inst_disc": 0.0}, True),
    "- L_clu": ({"w_cluster": 0.0}, True),
    "- L_dom": ({"w_domain": 0.0}, True),
    "- mapping": ({}, False),
    "- prompts": ({"prompt_side": "none"}, True),
    "inter_domain=prototype (A4)": ({"inter_domain": "prototype"}, True),
}
METRICS = ("mAP", "P", "cos", "hub")


def score(embed: Callable[[torch.Tensor, str], torch.Tensor], test: dict, pivot: str, queries: list[str], k: int) -> list[float]:
    """Per query domain: mAP@k, P@k, mean pairwise cosine of the query embeddings, hubness."""
    g = embed(test[pivot].clean, pivot).numpy()
    out = []
    for q in queries:
        e = embed(test[q].clean, q).numpy()
        m = diagnosed_metrics(e, test[q].labels, g, test[pivot].labels, k)
        out += [m[f"mAP@{k}"], m[f"P@{k}"], m["mean_pairwise_cosine"], m["hubness"]]
    return out


def run(
    workdir: str | Path | None = None,
    *,
    data: str | Path | None = None,
    clip_model: str = "clair-tiny",
    clip_pretrained: str | None = None,
    bootstrap_steps: int = 600,
    bootstrap_share: float = 1.0,
    seeds: int = 5,
    epochs: int = 30,
    batch_size: int = 64,
    k: int = 200,
    pivot: str | None = None,
    config: dict[str, Any] | None = None,
    variants: dict[str, tuple[dict[str, Any], bool]] | None = None,
) -> dict[str, Any]:
    if data is None and workdir is None:
        raise ValueError("pass workdir (a `clair-vec demo` directory) or data (a dataset root)")
    root = Path(data) if data is not None else Path(workdir) / "data"
    seen, unseen = split_dataset(root)
    base = dict(config or {})
    if clip_pretrained is None and workdir is not None and data is None:
        ckpt = next((Path(workdir) / "foundation").glob("*.pt"), None)
        if ckpt is None:
            raise FileNotFoundError(f"no foundation checkpoint under {Path(workdir) / 'foundation'}; run `clair-vec demo --workdir {workdir}` first")
        clip_model, clip_pretrained = ckpt.stem.removesuffix("-bootstrap"), str(ckpt)
    elif clip_pretrained is None:
        from clair_vec.training.bootstrap_clip import bootstrap_clip

        ckpt = root / ".clair_ablation" / f"{clip_model}-bootstrap-{bootstrap_steps}-{bootstrap_share:g}.pt"
        clip_set = seen
        if bootstrap_share < 1.0:
            # a CLIP that never saw CLAIR's training images, as a web-pretrained one has not: it is
            # bootstrapped on a seeded share of the seen images, CLAIR trains on the rest
            picked = set(random.Random(0).sample(range(len(seen.items)), round(bootstrap_share * len(seen.items))))
            clip_set = MultiDomainDataset([it for i, it in enumerate(seen.items) if i in picked], seen.root)
            seen = MultiDomainDataset([it for i, it in enumerate(seen.items) if i not in picked], seen.root)
        if not ckpt.exists():
            bootstrap_clip(clip_set, ckpt, arch=clip_model, steps=bootstrap_steps, progress=False)
        clip_pretrained = str(ckpt)
    fm = FoundationModel.load(clip_model, clip_pretrained)
    cache = root / ".clair_ablation" / "cache" if data is not None else Path(workdir) / "cache"
    test = extract_features(fm, unseen, n_views=0, cache_dir=cache, progress=False)
    pivot = pivot or ("photo" if "photo" in test else sorted(test)[0])
    queries = sorted(d for d in test if d != pivot)
    templates = base.get("templates")

    rows: dict[str, list[list[float]]] = {"B0 raw CLIP": [score(lambda f, d: f, test, pivot, queries, k)]}
    text = {d: hand_crafted_text_embeddings(fm, seen.classes, d, templates) for d in test}
    b1 = DomainMapping.fit(text, pivot)
    rows["B1 raw CLIP + mapping"] = [score(lambda f, d: b1.apply(f, d), test, pivot, queries, k)]
    stats: dict[str, list[dict[str, float]]] = {}
    for name, (changes, use_map) in (variants or VARIANTS).items():
        for seed in range(seeds):
            feats = extract_features(fm, seen, n_views=2, seed=seed, cache_dir=cache, progress=False)
            cfg = ClairConfig(clip_model=clip_model, clip_pretrained=clip_pretrained, pivot_domain=pivot, epochs=epochs,
                              batch_size=batch_size, seed=seed, **{**base, **changes})  # fmt: skip
            trainer = ClairTrainer(cfg, fm, seen.classes, feats, progress=False)
            trainer.fit()
            model = trainer.build_model()
            rows.setdefault(name, []).append(score(lambda f, d, m=model, u=use_map: m.embed_features(f, d, map_domain=u),
                                                   test, pivot, queries, k))  # fmt: skip
            last = trainer.history[-1]
            stats.setdefault(name, []).append({"kept": last.kept_fraction, "pseudo_acc": last.pseudo_label_accuracy})
        print(f"  {name}: done", flush=True)
    columns = [f"{q}->{pivot} {m}" for q in queries for m in METRICS]
    table = {
        name: {c: (statistics.mean(v), statistics.stdev(v) if len(v) > 1 else 0.0) for c, v in zip(columns, zip(*runs, strict=True), strict=True)}
        for name, runs in rows.items()
    }
    training = {n: {key: statistics.mean(s[key] for s in runs) for key in ("kept", "pseudo_acc")} for n, runs in stats.items()}
    return {"columns": columns, "rows": table, "seeds": seeds, "classes": unseen.classes, "k": k, "data": str(root),
            "training": training}  # fmt: skip


def format_table(result: dict[str, Any]) -> str:
    k = result.get("k", 200)
    names = {"mAP": f"mAP@{k}", "P": f"P@{k}", "cos": "mean cos", "hub": "hubness"}
    cols = result["columns"]
    heads = [c.rsplit(" ", 1)[0] + " " + names[c.rsplit(" ", 1)[1]] for c in cols]
    lines = ["| method | " + " | ".join(heads) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, cells in result["rows"].items():
        lines.append(f"| {name} | " + " | ".join(f"{m:.3f} ± {s:.3f}" for m, s in (cells[c] for c in cols)) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default=None, help="a `clair-vec demo` work directory (data, foundation, cache)")
    p.add_argument("--data", default=None, help="a dataset root with split files (instead of --workdir)")
    p.add_argument("--clip-model", default="clair-tiny", help="open_clip architecture")
    p.add_argument("--clip-pretrained", default=None, help="CLIP checkpoint (default: bootstrap one on the seen classes)")
    p.add_argument("--bootstrap-steps", type=int, default=600, help="steps of that bootstrap")
    p.add_argument("--bootstrap-share", type=float, default=1.0,
                   help="bootstrap on this share of the seen images and train CLAIR on the rest (1: both on all)")
    p.add_argument("--pivot", default=None, help="gallery domain (default: photo, else the first domain)")
    p.add_argument("--seeds", type=int, default=5, help="training seeds per variant")
    p.add_argument("--epochs", type=int, default=30, help="epochs per training")
    p.add_argument("--batch-size", type=int, default=64, help="images per step")
    p.add_argument("--k", type=int, default=200, help="cut-off of mAP@k and P@k")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=JSON", help="a ClairConfig field for every variant")
    p.add_argument("--variants", default=None, help="JSON {name: [config changes, map queries]} instead of the §6.3 set")
    p.add_argument("--out", default=None, help="write the result JSON here")
    a = p.parse_args(argv)
    config = parse_overrides(a.set)
    result = run(a.workdir if a.workdir or a.data else "clair_demo", data=a.data, clip_model=a.clip_model,
                 clip_pretrained=a.clip_pretrained, bootstrap_steps=a.bootstrap_steps, bootstrap_share=a.bootstrap_share,
                 seeds=a.seeds, epochs=a.epochs,
                 batch_size=a.batch_size, k=a.k, pivot=a.pivot, config=config,
                 variants={n: (c, m) for n, (c, m) in json.loads(a.variants).items()} if a.variants else None)  # fmt: skip
    print(format_table(result))
    print(json.dumps(result["training"]))
    out = Path(a.out) if a.out else (Path(a.workdir) / "ablation.json" if a.workdir else None)
    if out:
        out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
