"""The two measurements behind the ``confidence_norm`` and ``head_center`` options, as commands:

    python -m clair_vec.evaluation.diagnostics pseudo-labels --model clair_demo/model --data clair_demo/data
    python -m clair_vec.evaluation.diagnostics collapse --model clair_demo/model --data clair_demo/data

- ``pseudo-labels``: on the model's training classes, per domain, how often CLIP's pseudo-label is
  right, the confidence of right and of wrong labels before and after each normalisation, and how
  many wrong labels each filter rule (normalisation, threshold) drops and how many it keeps.
- ``collapse``: on the model's held-out classes, per query domain, how much of the head's residual
  is one offset shared by every input (the norm of its mean against the mean per-sample spread,
  for unit-length features), and the mean pairwise cosine of the query embeddings: raw CLIP,
  raw + mapping, through the head, through the head with its residual centred, head + mapping, and
  the shipped model (the head only where the per-domain selection kept it).

Both print JSON. Quantiles are (10%, 50%, 90%).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from clair_vec.datasets.folders import scan_folder
from clair_vec.evaluation.zero_shot import evaluation_classes, mean_pairwise_cosine
from clair_vec.method.model import ClairModel, load_model
from clair_vec.method.prompts import hand_crafted_text_embeddings
from clair_vec.method.pseudo_labels import NORMS, pseudo_label, refine_weights
from clair_vec.training.features import extract_features

QUANTILES = (0.1, 0.5, 0.9)


def _quantiles(x: torch.Tensor) -> list[float]:
    return [round(float(v), 3) for v in torch.quantile(x.float(), torch.tensor(QUANTILES))] if len(x) else []


def pseudo_label_report(model: str | Path | ClairModel, data: str | Path, thresholds: tuple[float, ...] = (0.2, 0.5)) -> dict[str, Any]:
    """Pseudo-label quality on the training classes, as training computes it (hand-crafted text)."""
    m = load_model(model)
    cfg, fm = m.config, m.foundation
    ds = scan_folder(data).subset(classes=m.classes, domains=m.domains)
    feats = extract_features(fm, ds, n_views=0, progress=False)
    out: dict[str, Any] = {}
    for d, f in feats.items():
        text = hand_crafted_text_embeddings(fm, m.classes, d, cfg.templates)
        pl = pseudo_label(f.clean, text, fm.logit_scale, method=cfg.confidence, threshold=0.0)
        truth = torch.tensor([m.classes.index(lbl) for lbl in f.labels])
        right = pl.labels == truth
        row: dict[str, Any] = {"images": len(truth), "accuracy": round(float(right.float().mean()), 3), "wrong": int((~right).sum()),
                               "confidence": {"right": _quantiles(pl.confidence[right]), "wrong": _quantiles(pl.confidence[~right])},
                               "normalised": {}, "rules": []}  # fmt: skip
        for norm in NORMS:
            w = refine_weights(pl.confidence, pl.labels, norm=norm, threshold=0.0)
            row["normalised"][norm] = {"right": _quantiles(w[right]), "wrong": _quantiles(w[~right])}
            for t in thresholds:
                kept = w >= t
                row["rules"].append({"norm": norm, "threshold": t, "kept": round(float(kept.float().mean()), 3),
                                     "kept_accuracy": round(float(right[kept].float().mean()), 3) if kept.any() else None,
                                     "wrong_dropped": int((~kept & ~right).sum())})  # fmt: skip
        out[d] = row
    return out


def collapse_report(model: str | Path | ClairModel, data: str | Path) -> dict[str, Any]:
    """How far the head pulls held-out query embeddings onto one shared direction."""
    m = load_model(model)
    ds, _ = evaluation_classes(m, data)
    queries = [d for d in ds.domains if d != m.pivot and d in m.domains]
    feats = extract_features(m.foundation, ds.subset(domains=queries), n_views=0, progress=False)
    return collapse_stats(m, {d: feats[d].clean for d in queries})


@torch.no_grad()
def collapse_stats(m: ClairModel, clip_features: dict[str, torch.Tensor]) -> dict[str, Any]:
    """:func:`collapse_report` on given CLIP features of each query domain."""
    head, out = m.head, {}
    for d, feats in clip_features.items():
        v = feats.float()
        r = head.mlp(v) - (head.offset if head.center else 0)
        delta = head.alpha * r
        shared = delta.mean(0)
        centred = F.normalize(v + delta - shared, dim=-1)
        out[d] = {
            "queries": len(v),
            "shared_offset_norm": round(float(shared.norm()), 3),
            "per_sample_spread": round(float((delta - shared).norm(dim=1).mean()), 3),
            "mean_pairwise_cosine": {
                "raw_clip": round(mean_pairwise_cosine(v.numpy()), 3),
                "raw_clip_mapped": round(mean_pairwise_cosine(m.mapping.apply(F.normalize(v, dim=-1), d).numpy()), 3),
                "head": round(mean_pairwise_cosine(head(v).numpy()), 3),
                "head_centred": round(mean_pairwise_cosine(centred.numpy()), 3),
                "head_mapped": round(mean_pairwise_cosine(m.mapping.apply(head(v), d).numpy()), 3),
                # what the shipped model embeds: the head only as far as the selection let it (routing)
                "shipped": round(mean_pairwise_cosine(m.embed_features(v, d).numpy()), 3),
            },
        }
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("report", choices=["pseudo-labels", "collapse"], help="which measurement")
    p.add_argument("--model", required=True, help="checkpoint directory")
    p.add_argument("--data", required=True, help="the dataset root the model was trained from")
    a = p.parse_args(argv)
    report = pseudo_label_report if a.report == "pseudo-labels" else collapse_report
    print(json.dumps(report(a.model, a.data), indent=2))


if __name__ == "__main__":
    main()
