"""The spec's §6.3 table: baselines and one-component-off ablations, mean ± std over seeds.

    python -m clair_vec.ablation --workdir clair_demo --seeds 5

Reuses what ``clair-vec demo`` left in the work directory (dataset, foundation checkpoint,
feature cache). Retrieval is exact (NumPy), queries of every non-pivot domain against the pivot
domain, unseen classes only; metrics per §5.5.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from .config import ClairConfig
from .data import split_dataset
from .features import extract_features
from .foundation import FoundationModel
from .mapping import DomainMapping
from .metrics import retrieval_metrics
from .prompts import hand_crafted_text_embeddings
from .trainer import ClairTrainer

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


def run(workdir: str | Path, *, seeds: int = 5, epochs: int = 30, batch_size: int = 64, k: int = 200) -> dict[str, Any]:
    work = Path(workdir)
    ckpt = next((work / "foundation").glob("*.pt"), None)
    if ckpt is None:
        raise FileNotFoundError(f"no foundation checkpoint under {work / 'foundation'}; run `clair-vec demo --workdir {work}` first")
    seen, unseen = split_dataset(work / "data")
    arch = ckpt.stem.removesuffix("-bootstrap")
    fm = FoundationModel.load(arch, str(ckpt))
    cache = work / "cache"
    test = extract_features(fm, unseen, n_views=0, cache_dir=cache, progress=False)
    pivot = "photo" if "photo" in test else sorted(test)[0]
    queries = sorted(d for d in test if d != pivot)

    def score(embed) -> list[float]:
        g = embed(test[pivot].clean, pivot).numpy()
        out = []
        for q in queries:
            m = retrieval_metrics(embed(test[q].clean, q).numpy(), test[q].labels, g, test[pivot].labels, map_ks=(k,), prec_ks=(k,))
            out += [m[f"mAP@{k}"], m[f"P@{k}"]]
        return out

    rows: dict[str, list[list[float]]] = {"B0 raw CLIP": [score(lambda f, d: f)]}
    text = {d: hand_crafted_text_embeddings(fm, seen.classes, d) for d in test}
    b1 = DomainMapping.fit(text, pivot)
    rows["B1 raw CLIP + mapping"] = [score(lambda f, d: b1.apply(f, d))]
    for name, (changes, use_map) in VARIANTS.items():
        for seed in range(seeds):
            feats = extract_features(fm, seen, n_views=2, seed=seed, cache_dir=cache, progress=False)
            cfg = ClairConfig(clip_model=arch, clip_pretrained=str(ckpt), pivot_domain=pivot, epochs=epochs,
                              batch_size=batch_size, seed=seed, **changes)  # fmt: skip
            trainer = ClairTrainer(cfg, fm, seen.classes, feats, progress=False)
            trainer.fit()
            model = trainer.build_model()
            rows.setdefault(name, []).append(score(lambda f, d, m=model, u=use_map: m.embed_features(f, d, map_domain=u)))
        print(f"  {name}: done", flush=True)
    columns = [f"{q}->{pivot} {m}@{k}" for q in queries for m in ("mAP", "P")]
    table = {
        name: {c: (statistics.mean(v), statistics.stdev(v) if len(v) > 1 else 0.0) for c, v in zip(columns, zip(*runs, strict=True), strict=True)}
        for name, runs in rows.items()
    }
    return {"columns": columns, "rows": table, "seeds": seeds, "classes": unseen.classes}


def format_table(result: dict[str, Any]) -> str:
    cols = result["columns"]
    lines = ["| method | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, cells in result["rows"].items():
        lines.append(f"| {name} | " + " | ".join(f"{m:.4f} ± {s:.4f}" for m, s in (cells[c] for c in cols)) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="clair_demo")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--epochs", type=int, default=30)
    a = p.parse_args(argv)
    result = run(a.workdir, seeds=a.seeds, epochs=a.epochs)
    print(format_table(result))
    (Path(a.workdir) / "ablation.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
