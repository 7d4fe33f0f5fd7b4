"""The ablation table: raw CLIP, each component alone, the components added one by one, and the
full and default methods, mean ± std over seeds, on the unseen classes; with the pseudo-labels'
accuracy per domain before and after the confidence filter.

    clair-vec demo --workdir d0 --seed 0; clair-vec demo --workdir d1 --seed 1; clair-vec demo --workdir d2 --seed 2
    python -m clair_vec.evaluation.ablation --workdir d0 --workdir d1 --workdir d2          # one seed a demo run

    python -m clair_vec.datasets.real pacs_mini /tmp/pacs --unseen dog,house --web-share 0.3
    python -m clair_vec.evaluation.ablation --data /tmp/pacs --seeds 3

A seed is a whole run: with ``--data``, the stand-in CLIP is bootstrapped anew for every seed on
the pool beside the data (``ROOT/web``), so the table counts the bootstrap among the things a
seed changes; each demo workdir brings its own data and bootstrap. Retrieval is exact (NumPy):
queries of every non-gallery domain against the gallery domain, unseen classes only (spec §5.5).
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from clair_vec.datasets.folders import scan_folder, split_dataset
from clair_vec.evaluation.zero_shot import diagnosed_metrics
from clair_vec.method.centering import DomainCenters, decide_centring
from clair_vec.method.config import ClairConfig, parse_overrides
from clair_vec.method.foundation import FoundationModel
from clair_vec.method.mapping import DomainMapping
from clair_vec.method.prompts import hand_crafted_text_embeddings
from clair_vec.method.pseudo_labels import pseudo_label
from clair_vec.training.features import DomainFeatures, extract_features
from clair_vec.training.trainer import ClairTrainer

NO_TERMS = {"w_inst_disc": 0.0, "w_instance": 0.0, "w_cluster": 0.0, "w_domain": 0.0, "w_prompt": 0.0}


@dataclass(frozen=True)
class Variant:
    """A row: ClairConfig changes and whether the head is trained (else raw CLIP), centred, mapped."""

    changes: dict[str, Any] = field(default_factory=dict)
    trained: bool = True
    center: bool = True
    map: bool = False
    #: centring as training decides it (on where the domains are styles), not forced by ``center``
    decided: bool = False


#: the rows, in the order a reader builds the method up
VARIANTS: dict[str, Variant] = {
    "B0 raw CLIP": Variant(trained=False, center=False),
    "B1 raw CLIP + text map": Variant(trained=False, center=False, map=True),
    "centring": Variant(trained=False),
    "centring + text map": Variant(trained=False, map=True),
    "head, L_inst_disc alone": Variant({**NO_TERMS, "w_inst_disc": 1.0}),
    "head, L_ins alone": Variant({**NO_TERMS, "w_instance": 1.0}),
    "head, L_clu alone": Variant({**NO_TERMS, "w_cluster": 1.0}),
    "head, L_dom alone": Variant({**NO_TERMS, "w_domain": 1.0}),
    "head, L_inst_disc alone, uncentred": Variant({**NO_TERMS, "w_inst_disc": 1.0, "domain_center": False}, center=False),
    "+ L_dom": Variant({**NO_TERMS, "w_inst_disc": 1.0, "w_domain": 1.0}),
    "+ L_dom + text map": Variant({**NO_TERMS, "w_inst_disc": 1.0, "w_domain": 1.0}, map=True),
    "+ L_dom + text map + prompts": Variant({**NO_TERMS, "w_inst_disc": 1.0, "w_domain": 1.0, "w_prompt": 1.0,
                                             "prompt_side": "text"}, map=True),  # fmt: skip
    "full: every term + text map + prompts": Variant({"w_inst_disc": 1.0, "w_instance": 1.0, "w_cluster": 1.0, "w_domain": 1.0,
                                                      "w_prompt": 1.0, "prompt_side": "text"}, map=True),  # fmt: skip
    "default, unchecked": Variant(map=True, decided=True),
}
METRICS = ("mAP", "cos")


@dataclass
class Run:
    """One seed's material: a foundation model, the seen-class training features and the unseen-class test features."""

    foundation: FoundationModel
    clip_pretrained: str
    seen_classes: list[str]
    train: dict[str, DomainFeatures]
    test: dict[str, DomainFeatures]
    seed: int


def score(embed: Callable[[torch.Tensor, str], torch.Tensor], test: dict, pivot: str, queries: list[str], k: int) -> list[float]:
    """Per query domain: mAP@k and the mean pairwise cosine of the query embeddings."""
    g = embed(test[pivot].clean, pivot).numpy()
    out = []
    for q in queries:
        e = embed(test[q].clean, q).numpy()
        m = diagnosed_metrics(e, test[q].labels, g, test[pivot].labels, k)
        out += [m[f"mAP@{k}"], m["mean_pairwise_cosine"]]
    return out


def closed_form(run: Run, config: ClairConfig, variant: Variant) -> Callable[[torch.Tensor, str], torch.Tensor]:
    """Raw CLIP, optionally centred per domain and mapped by the text map: no training."""
    def raw(v: torch.Tensor, _d: str) -> torch.Tensor:
        return F.normalize(v.float(), dim=-1)

    centers = DomainCenters.fit({d: f.clean for d, f in run.train.items()}, raw) if variant.center else DomainCenters()
    text = {d: hand_crafted_text_embeddings(run.foundation, run.seen_classes, d, config.templates) for d in run.train}
    mapping = DomainMapping.fit(text, config.pivot_domain, config.mapping, config.mapping_lambda, center=variant.center)

    def embed(v: torch.Tensor, d: str) -> torch.Tensor:
        z = centers.apply(raw(v, d), d)
        return mapping.apply(z, d) if variant.map else z

    return embed


def pseudo_label_rows(run: Run, config: ClairConfig) -> dict[str, dict[str, float]]:
    """Per domain: pseudo-label accuracy before the filter, of the labels it keeps and of those it
    drops, the share kept; and the same for the spec's filter (class-max normalisation, 0.2)."""
    out = {}
    for d, f in run.train.items():
        text = hand_crafted_text_embeddings(run.foundation, run.seen_classes, d, config.templates)
        truth = torch.tensor([run.seen_classes.index(lbl) for lbl in f.labels])
        row: dict[str, float] = {}
        for name, norm, threshold in (("", config.confidence_norm, config.confidence_threshold), ("spec_", "class", 0.2)):
            pl = pseudo_label(f.clean.float(), text, run.foundation.logit_scale, method=config.confidence, norm=norm,
                              threshold=threshold)  # fmt: skip
            right = (pl.labels == truth).float()
            row["accuracy"] = float(right.mean())
            row[f"{name}kept"] = float(pl.kept.float().mean())
            row[f"{name}kept_accuracy"] = float(right[pl.kept].mean()) if pl.kept.any() else float("nan")
            row[f"{name}dropped_accuracy"] = float(right[~pl.kept].mean()) if (~pl.kept).any() else float("nan")
        out[d] = row
    return out


def demo_run(workdir: str | Path) -> tuple[Run, str]:
    """The material of a `clair-vec demo` work directory: its data, its stand-in CLIP, its seed."""
    work = Path(workdir)
    ckpt = next((work / "foundation").glob("*.pt"), None)
    results = work / "results.json"
    if ckpt is None or not results.exists():
        raise FileNotFoundError(f"{work} holds no finished demo; run `clair-vec demo --workdir {work}` first")
    seed = int(json.loads(results.read_text()).get("seed", 0))
    fm = FoundationModel.load(ckpt.stem.removesuffix("-bootstrap"), str(ckpt))
    return _run(work / "data", fm, str(ckpt), seed, work / "cache"), "photo"


def data_run(root: str | Path, seed: int, *, clip_model: str, clip_pretrained: str | None, bootstrap_steps: int,
             mix: dict[str, float] | None = None) -> tuple[Run, str]:  # fmt: skip
    """A dataset root laid out with a web pool (``ROOT/web`` and ``ROOT/data``, see
    :mod:`clair_vec.datasets.real`), or a bare dataset with ``clip_pretrained``; the stand-in CLIP
    is bootstrapped on the pool once per seed."""
    root = Path(root)
    data = root / "data" if (root / "data").is_dir() else root
    if clip_pretrained is None:
        if not (root / "web").is_dir():
            raise FileNotFoundError(f"{root} has no web/ pool for the stand-in CLIP: lay it out with "
                                    f"`python -m clair_vec.datasets.real ... {root} --web-share 0.3`, or pass --clip-pretrained")  # fmt: skip
        from clair_vec.training.bootstrap_clip import bootstrap_clip

        ckpt = root / ".clair_ablation" / f"{clip_model}-web-{bootstrap_steps}-seed{seed}.pt"
        if not ckpt.exists():
            bootstrap_clip(scan_folder(root / "web"), ckpt, arch=clip_model, steps=bootstrap_steps, seed=seed, progress=False,
                           mix=mix)  # fmt: skip
        clip_pretrained = str(ckpt)
    fm = FoundationModel.load(clip_model, clip_pretrained)
    pivot = "photo" if (data / "photo").is_dir() else sorted(p.name for p in data.iterdir() if p.is_dir())[0]
    return _run(data, fm, clip_pretrained, seed, root / ".clair_ablation" / "cache"), pivot


def _run(data: Path, fm: FoundationModel, clip_pretrained: str, seed: int, cache: Path) -> Run:
    seen, unseen = split_dataset(data, seed)
    train = extract_features(fm, seen, n_views=2, seed=seed, cache_dir=cache, progress=False)
    test = extract_features(fm, unseen, n_views=0, cache_dir=cache, progress=False)
    return Run(fm, clip_pretrained, seen.classes, train, test, seed)


def run(
    runs: Sequence[tuple[Run, str]],
    *,
    epochs: int = 60,
    batch_size: int = 64,
    k: int = 200,
    config: dict[str, Any] | None = None,
    variants: dict[str, Variant] | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The table over ``runs`` (one per seed); each row is mean and std over the runs."""
    base = dict(config or {})
    rows: dict[str, list[list[float]]] = {}
    labels: list[dict[str, dict[str, float]]] = []
    queries: list[str] = []
    pivot = runs[0][1]
    for r, pivot in runs:
        queries = sorted(d for d in r.test if d != pivot)
        default = ClairConfig(clip_model=r.foundation.arch, clip_pretrained=r.clip_pretrained, pivot_domain=pivot, epochs=epochs,
                              batch_size=batch_size, seed=r.seed, **base)  # fmt: skip
        labels.append(pseudo_label_rows(r, default))
        for name, v in (variants or VARIANTS).items():
            cfg = default.replace(**v.changes)
            if v.decided:
                cfg, _ = decide_centring(cfg, {d: f.clean for d, f in r.train.items()})
            if v.trained:
                trainer = ClairTrainer(cfg, r.foundation, r.seen_classes, r.train, progress=False)
                trainer.fit()
                model = trainer.build_model()
                embed: Callable[[torch.Tensor, str], torch.Tensor] = lambda f, d, m=model, u=v.map: m.embed_features(f, d, map_domain=u)  # noqa: E731
            else:
                embed = closed_form(r, cfg, v)
            rows.setdefault(name, []).append(score(embed, r.test, pivot, queries, k))
            if progress:
                progress(f"seed {r.seed}: {name}")
    columns = [f"{q}->{pivot} {m}" for q in queries for m in METRICS]
    table = {name: {c: (statistics.mean(v), statistics.stdev(v) if len(v) > 1 else 0.0)
                    for c, v in zip(columns, zip(*cells, strict=True), strict=True)} for name, cells in rows.items()}  # fmt: skip
    domains = sorted(labels[0])
    keys = sorted(labels[0][domains[0]])
    pseudo = {d: {key: statistics.mean(s[d][key] for s in labels) for key in keys} for d in domains}
    return {"columns": columns, "rows": table, "seeds": [r.seed for r, _ in runs], "k": k, "pseudo_labels": pseudo,
            "raw": rows}  # fmt: skip


def format_table(result: dict[str, Any]) -> str:
    k = result.get("k", 200)
    names = {"mAP": f"mAP@{k}", "cos": "mean cos"}
    cols = result["columns"]
    base = result["rows"].get("B0 raw CLIP")
    heads = [c.rsplit(" ", 1)[0] + " " + names[c.rsplit(" ", 1)[1]] for c in cols]
    lines = ["| method | " + " | ".join(heads) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, cells in result["rows"].items():
        parts = []
        for c in cols:
            m, s = cells[c]
            delta = f" ({m - base[c][0]:+.3f})" if base and c.endswith("mAP") and name != "B0 raw CLIP" else ""
            parts.append(f"{m:.3f} ± {s:.3f}{delta}")
        lines.append(f"| {name} | " + " | ".join(parts) + " |")
    lines += ["", "| domain | pseudo-label accuracy | kept by the filter | accuracy kept / dropped | spec filter (class, 0.2): kept | kept / dropped |",
              "|---|---|---|---|---|---|"]  # fmt: skip
    for d, p in result["pseudo_labels"].items():
        lines.append(f"| {d} | {p['accuracy']:.2f} | {p['kept']:.0%} | {p['kept_accuracy']:.2f} / {p['dropped_accuracy']:.2f} | "
                     f"{p['spec_kept']:.0%} | {p['spec_kept_accuracy']:.2f} / {_nan(p['spec_dropped_accuracy'])} |")  # fmt: skip
    return "\n".join(lines)


def _nan(x: float) -> str:
    return "-" if x != x else f"{x:.2f}"


def main(argv: list[str] | None = None) -> None:
    from clair_vec.datasets.web_pool import parse_mix

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", action="append", default=[], help="a finished `clair-vec demo` work directory; one per seed")
    p.add_argument("--data", default=None, help="a dataset root laid out with a web pool (ROOT/web, ROOT/data)")
    p.add_argument("--seeds", type=int, default=3, help="with --data: seeds, each with its own stand-in CLIP and training")
    p.add_argument("--clip-model", default="clair-tiny", help="with --data: open_clip architecture")
    p.add_argument("--clip-pretrained", default=None, help="with --data: CLIP weights (default: bootstrap a stand-in per seed)")
    p.add_argument("--bootstrap-steps", type=int, default=1200, help="steps of each stand-in bootstrap")
    p.add_argument("--mix", default=None, metavar="DOMAIN=SHARE,...", help="domain mix of the bootstrap (default photo=0.8)")
    p.add_argument("--epochs", type=int, default=60, help="epochs per training (as the demo)")
    p.add_argument("--batch-size", type=int, default=64, help="images per step")
    p.add_argument("--k", type=int, default=200, help="cut-off of mAP@k")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=JSON", help="a ClairConfig field for every row")
    p.add_argument("--row", action="append", default=[], metavar="NAME",
                   help=f"only these rows (repeatable; B0 is always kept), from: {'; '.join(VARIANTS)}")
    p.add_argument("--out", default=None, help="write the result JSON here")
    a = p.parse_args(argv)
    unknown = [r for r in a.row if r not in VARIANTS]
    if unknown:
        p.error(f"unknown --row {unknown}; rows: {list(VARIANTS)}")
    variants = {n: v for n, v in VARIANTS.items() if n in a.row or n == "B0 raw CLIP"} if a.row else None
    if bool(a.workdir) == bool(a.data):
        p.error("give either --workdir (one or more demo runs) or --data")
    if a.workdir:
        runs = [demo_run(w) for w in a.workdir]
    else:
        mix = parse_mix(a.mix) if a.mix else None
        runs = [data_run(a.data, s, clip_model=a.clip_model, clip_pretrained=a.clip_pretrained, bootstrap_steps=a.bootstrap_steps,
                         mix=mix) for s in range(a.seeds)]  # fmt: skip
    result = run(runs, epochs=a.epochs, batch_size=a.batch_size, k=a.k, config=parse_overrides(a.set, {"epochs": "--epochs", "batch_size": "--batch-size"}), variants=variants,
                 progress=lambda s: print(f"  {s}", flush=True))  # fmt: skip
    print(format_table(result))
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
