"""Cross-domain retrieval metrics, exactly as the UCDR protocol code defines them (spec §5.5).

mAP@all: average precision over the whole ranked gallery. mAP@k: AP on the top-k items alone,
normalised by the relevant items found within them (0 when none). Prec@k: relevant in top-k / k.
Rankings are by cosine similarity in float32, ties broken by gallery order.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _ranked_relevance(sim: np.ndarray, query_labels: np.ndarray, gallery_labels: np.ndarray) -> np.ndarray:
    order = np.argsort(-sim, axis=1, kind="stable")
    return (gallery_labels[order] == query_labels[:, None]).astype(np.float64)


def average_precision(rel: np.ndarray) -> np.ndarray:
    """AP of each row of a ranked 0/1 relevance matrix (0 for rows with no relevant item)."""
    hits = np.cumsum(rel, axis=1)
    ranks = np.arange(1, rel.shape[1] + 1)
    n_rel = rel.sum(1)
    ap = (rel * hits / ranks).sum(1)
    return np.divide(ap, n_rel, out=np.zeros_like(ap), where=n_rel > 0)


def ranked_metrics(rel: np.ndarray, map_ks: Sequence[int] = (200,), prec_ks: Sequence[int] = (100, 200)) -> dict[str, float]:
    """Metrics from a ranked relevance matrix (rows = queries, columns = gallery ranks).

    ``mAP@all`` is reported only when ``rel`` covers the whole gallery; callers holding only
    top-k hits (a vector database) pass their partial ranking and read the @k entries.
    """
    out: dict[str, float] = {"mAP@all": float(average_precision(rel).mean())}
    for k in map_ks:
        out[f"mAP@{k}"] = float(average_precision(rel[:, :k]).mean())
    for k in prec_ks:
        out[f"P@{k}"] = float((rel[:, :k].sum(1) / k).mean())
    return out


def retrieval_metrics(
    query_feats: np.ndarray,
    query_labels: Sequence,
    gallery_feats: np.ndarray,
    gallery_labels: Sequence,
    *,
    map_ks: Sequence[int] = (200,),
    prec_ks: Sequence[int] = (100, 200),
    chunk: int = 1024,
) -> dict[str, float]:
    """mAP@all, mAP@k and Prec@k of cosine retrieval from queries into the gallery."""
    q = np.asarray(query_feats, dtype=np.float32)
    g = np.asarray(gallery_feats, dtype=np.float32)
    q = q / np.linalg.norm(q, axis=1, keepdims=True).clip(1e-12)
    g = g / np.linalg.norm(g, axis=1, keepdims=True).clip(1e-12)
    ql, gl = np.asarray(query_labels), np.asarray(gallery_labels)
    sums: dict[str, float] = {}
    for start in range(0, len(q), chunk):
        rel = _ranked_relevance(q[start : start + chunk] @ g.T, ql[start : start + chunk], gl)
        part = ranked_metrics(rel, map_ks, prec_ks)
        for key, value in part.items():
            sums[key] = sums.get(key, 0.0) + value * len(rel)
    return {k: v / max(len(q), 1) for k, v in sums.items()}
