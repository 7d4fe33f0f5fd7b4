"""Zero-shot evaluation of a trained model against raw CLIP, with diagnostics (spec §5.5, §6.3).

The classes evaluated are the ones the checkpoint itself recorded as held out of training, so a
model is never scored on classes it trained on; a dataset or an old checkpoint that would make
that happen is refused. Each query domain is retrieved into the model's gallery domain.

Two diagnostics travel with every row: the mean pairwise cosine of the query embeddings (near 1:
the embeddings have collapsed onto one direction) and hubness, the share of queries whose top-1
hit is the single most common top-1 (high: one gallery image answers most queries).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from clair_vec.datasets.folders import MultiDomainDataset, scan_folder, split_dataset
from clair_vec.errors import DatasetError, UnknownDomainError, ZeroShotLeakError
from clair_vec.method.metrics import retrieval_metrics
from clair_vec.method.model import ClairModel, load_model
from clair_vec.training.features import DomainFeatures, extract_features


def mean_pairwise_cosine(x: np.ndarray) -> float:
    """Mean cosine over all pairs i != j, in O(n d): ``(|sum x|^2 - n) / (n (n - 1))`` for unit rows."""
    x = x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12)
    n = len(x)
    if n < 2:
        return float("nan")
    s = x.astype(np.float64).sum(0)
    return float((s @ s - n) / (n * (n - 1)))


def hubness(top1: np.ndarray) -> float:
    """Share of queries whose top-1 hit is the most common top-1."""
    if len(top1) == 0:
        return float("nan")
    return Counter(top1.tolist()).most_common(1)[0][1] / len(top1)


def evaluation_classes(model: ClairModel, root: str | Path) -> tuple[MultiDomainDataset, str]:
    """The dataset restricted to the model's zero-shot classes, and where that list came from."""
    ds = scan_folder(root)
    recorded = model.record.get("unseen_classes")
    if recorded:
        classes, source = [c for c in recorded if c in set(ds.classes)], "the checkpoint's held-out classes"
        if not classes:
            raise DatasetError(
                f"none of the model's held-out classes {recorded} have images under {root}; evaluate on the dataset "
                "the model was trained from"
            )
    else:  # a checkpoint from before training recorded its split
        seed = int(model.record.get("split_seed", 0))
        classes, source = split_dataset(root, seed)[1].classes, f"the dataset's split (seed {seed})"
    leaked = sorted(set(classes) & set(model.classes))
    if leaked:
        raise ZeroShotLeakError(
            f"refusing to evaluate: classes {leaked} (from {source}) were seen in training, so the scores would not be "
            "zero-shot. Evaluate on the dataset and split the model was trained with (its held-out classes are "
            f"recorded in the checkpoint), or retrain."
        )
    return ds.subset(classes=classes), source


def diagnosed_metrics(q: np.ndarray, ql: Sequence[str], g: np.ndarray, gl: Sequence[str], k: int) -> dict[str, float]:
    """mAP@k, P@100, P@k (spec §5.5) and the two diagnostics, for one query domain against the gallery."""
    m = retrieval_metrics(q, ql, g, gl, map_ks=(k,), prec_ks=tuple(sorted({100, k})))
    top1 = np.argmax(q @ g.T, axis=1) if len(q) and len(g) else np.zeros(0, int)
    m.update(mean_pairwise_cosine=mean_pairwise_cosine(q), hubness=hubness(top1))
    return m


def chance_level(query_labels: Sequence[Any], gallery_labels: Sequence[Any]) -> float:
    """What a random ranking scores: its expected precision at every rank, hence its mAP, is the
    share of the gallery in the query's class, averaged over the queries."""
    counts = Counter(gallery_labels)
    n = max(1, len(gallery_labels))
    return float(np.mean([counts[q] / n for q in query_labels])) if len(query_labels) else 0.0


def spread_over_classes(labels: Sequence[Any], n: int, seed: int) -> list[int]:
    """``n`` query indices taken round-robin over the classes (seeded), so a report's samples show
    every class rather than whichever one a uniform draw happened to favour."""
    rng = random.Random(seed)
    by_class: dict[Any, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(label, []).append(i)
    pools = [rng.sample(v, len(v)) for _, v in sorted(by_class.items(), key=lambda kv: str(kv[0]))]
    picked: list[int] = []
    while len(picked) < n and any(pools):
        for pool in pools:
            if pool and len(picked) < n:
                picked.append(pool.pop())
    return sorted(picked)


def evaluate(
    model: str | Path | ClairModel,
    data: str | Path,
    *,
    query_domains: Sequence[str] | None = None,
    k: int = 200,
    report_dir: str | Path | None = None,
    samples: int = 6,
    seed: int = 0,
    device: str | None = None,
) -> dict[str, Any]:
    """Per-query-domain rows of metrics for raw CLIP (``raw_clip``) and the shipped model (``model``)."""
    m = load_model(model, device)
    pivot = m.pivot
    for q in query_domains or []:
        if q not in m.domains:
            raise UnknownDomainError(q, m.domains)
        if q == pivot:
            raise ValueError(f"{q!r} is the gallery domain; query domains are the others: {[d for d in m.domains if d != pivot]}")
    ds, source = evaluation_classes(m, data)
    missing = [q for q in (query_domains or []) + [pivot] if q not in ds.domains]
    if missing:
        raise DatasetError(f"domains {missing} have no images of the evaluated classes under {data}; it has {ds.domains}")
    domains = list(query_domains or [d for d in ds.domains if d != pivot and d in m.domains])
    feats: dict[str, DomainFeatures] = extract_features(m.foundation, ds.subset(domains=[pivot, *domains]), n_views=0, progress=False)
    gallery = feats[pivot]
    g_raw, g_model = gallery.clean.numpy(), m.embed_features(gallery.clean, pivot).numpy()
    rows, shown = [], {}
    for q in domains:
        f = feats[q]
        q_model = m.embed_features(f.clean, q).numpy()
        row = {"query": q, "gallery": pivot, "classes": ds.classes, "queries": len(f), "gallery_size": len(gallery),
               "shipped": m.record.get("shipped", "clair"), "blend": m.routing.get(q), "gallery_blend": m.routing.get(pivot),
               "decision": ((m.record.get("selection") or {}).get("domains") or {}).get(q),
               "raw_clip": diagnosed_metrics(f.clean.numpy(), f.labels, g_raw, gallery.labels, k),
               "model": diagnosed_metrics(q_model, f.labels, g_model, gallery.labels, k)}  # fmt: skip
        row["chance"] = chance_level(f.labels, gallery.labels)
        rows.append(row)
        pick = spread_over_classes(f.labels, samples, seed)
        order = np.argsort(-(q_model[pick] @ g_model.T), axis=1)[:, :10]
        shown[q] = [{"query": f.paths[i], "label": f.labels[i],
                     "hits": [{"path": gallery.paths[j], "label": gallery.labels[j]} for j in order[n]]}
                    for n, i in enumerate(pick)]  # fmt: skip
    result = {"model": m.model_id, "classes_from": source, "k": k, "rows": rows, "samples": shown, "record": m.record}
    if report_dir is not None:
        from clair_vec.evaluation.report import write_report

        write_report(result, report_dir)
    return result
