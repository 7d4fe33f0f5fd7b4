"""What each kind of query is worth, on the classes a model never saw: the measurement behind the
query defaults (text through the head or not, text weight, query expansion on or off).

    python -m clair_vec.benchmarks.query_quality --model clair_demo/model --data clair_demo/data
    python -m clair_vec.datasets.real pacs_mini /tmp/pacs --unseen dog,house   # then train a model on it
    python -m clair_vec.benchmarks.query_quality --model /tmp/pacs_model --data /tmp/pacs --json

Exact retrieval in NumPy over the checkpoint's held-out classes (gallery: their photos; queries:
their images of every other domain), mAP@k as everywhere else (spec §5.5):

- text -> photo: each class name, prompted as the gallery domain is ("a photo of a {}." plus the
  learned context), against raw CLIP's own text -> photo (hand-crafted prompt, raw image features);
  with and without passing the text through the CLAIR head;
- image, text, image + class-name text at several text weights (what ``Part.text(w)`` does);
- one round of relevance feedback: the top 10 of the first search marked "more like this" when
  they share the query's class and "less like this" otherwise (as a user clicking on the page
  would, from the ground truth), combined as the service combines them;
- alpha query expansion (``rerank="aqe"``) against none.

Prints a table (``--json``: one JSON object). Quality only: no test asserts on these numbers.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from clair_vec.method.metrics import average_precision
from clair_vec.retrieval.queries import AQE_TOP, Part, combine, expand_query

TEXT_WEIGHTS = (0.5, 1.0, 2.0)


def ranked_ap(queries: np.ndarray, labels: Sequence[str], gallery: np.ndarray, gallery_labels: np.ndarray, k: int) -> float:
    sims = queries @ gallery.T
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    rel = (gallery_labels[order] == np.asarray(labels)[:, None]).astype(np.float64)
    return float(average_precision(rel).mean()) if len(rel) else float("nan")


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True).clip(1e-12)


def feedback_round(q: np.ndarray, label: str, gallery: np.ndarray, gallery_labels: np.ndarray, top: int = 10) -> np.ndarray:
    """The query after one round of clicks: its top ``top`` hits liked if of its class, unliked otherwise."""
    order = np.argsort(-(gallery @ q), kind="stable")[:top]
    parts = [Part.text("q")] + [Part("id", str(i), None, 1.0 if gallery_labels[i] == label else -1.0) for i in order]
    return combine(parts, [q, *gallery[order]])


def aqe(q: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    sims = gallery @ q
    order = np.argsort(-sims, kind="stable")[:AQE_TOP]
    return expand_query(q, gallery[order], sims[order])


def study(model_dir: str | Path, data: str | Path, k: int = 200) -> dict[str, Any]:
    from clair_vec.evaluation.zero_shot import evaluation_classes
    from clair_vec.method.model import load_model
    from clair_vec.method.prompts import hand_crafted_text_embeddings
    from clair_vec.training.features import extract_features

    m = load_model(model_dir)
    ds, _ = evaluation_classes(m, data)
    pivot = m.pivot
    feats = extract_features(m.foundation, ds.subset(domains=[d for d in ds.domains if d in m.domains]), n_views=0,
                             progress=False)  # fmt: skip
    gal = feats[pivot]
    g_raw, g = gal.clean.numpy(), m.embed_features(gal.clean, pivot).numpy()
    gl = np.asarray(gal.labels)
    classes = sorted(set(gal.labels))
    text = m.class_text_embeddings(classes, pivot)
    text_head = _unit(m.embed_features(text, pivot).numpy())
    text, raw_text = text.numpy(), hand_crafted_text_embeddings(m.foundation, classes, pivot, m.config.templates).numpy()
    rows: dict[str, Any] = {
        "text -> photo, raw CLIP": ranked_ap(raw_text, classes, g_raw, gl, k),
        "text -> photo, model (text as is)": ranked_ap(text, classes, g, gl, k),
        "text -> photo, model (text through the head)": ranked_ap(text_head, classes, g, gl, k),
    }
    by_class = dict(zip(classes, text, strict=True))
    for d in sorted(set(feats) - {pivot}):
        f = feats[d]
        q = m.embed_features(f.clean, d).numpy()
        labels = list(f.labels)
        t = np.stack([by_class[c] for c in labels])
        rows[f"{d}: image"] = ranked_ap(q, labels, g, gl, k)
        rows[f"{d}: class-name text alone"] = ranked_ap(t, labels, g, gl, k)
        for w in TEXT_WEIGHTS:
            mixed = np.stack([combine([Part.text("i"), Part.text("t", w)], [qi, ti]) for qi, ti in zip(q, t, strict=True)])
            rows[f"{d}: image + text (weight {w:g})"] = ranked_ap(mixed, labels, g, gl, k)
        fb = np.stack([feedback_round(qi, c, g, gl) for qi, c in zip(q, labels, strict=True)])
        rows[f"{d}: image, one round of more/less like this"] = ranked_ap(fb, labels, g, gl, k)
        rows[f"{d}: image, query expansion (aqe)"] = ranked_ap(np.stack([aqe(qi, g) for qi in q]), labels, g, gl, k)
    return {"model": m.model_id, "data": str(data), "classes": classes, "gallery": len(gl), "k": k,
            "shipped": m.record.get("shipped"), "mAP": rows}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="checkpoint directory")
    p.add_argument("--data", required=True, help="the dataset root the model was trained from (its held-out classes are used)")
    p.add_argument("--k", type=int, default=200, help="cut-off of mAP@k")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    a = p.parse_args(argv)
    result = study(a.model, a.data, a.k)
    if a.json:
        print(json.dumps(result))
        return
    print(f"model {result['model']} on {result['data']}: unseen classes {result['classes']}, gallery {result['gallery']}")
    width = max(len(r) for r in result["mAP"])
    print(f"{'query':<{width}}  mAP@{a.k}")
    for row, value in result["mAP"].items():
        print(f"{row:<{width}}  {value:.4f}")


if __name__ == "__main__":
    from clair_vec.benchmarks import run_script

    run_script(main)
