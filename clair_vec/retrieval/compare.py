"""A gate before an alias moves: the same queries against two collections, each searched with its
own model, and how their answers differ.

Per pair: overlap@k (the share of the old top-k the new top-k keeps) and, where the query folders
carry class names (``DIR/<class>/<image>`` and a gallery indexed with ``--label-from-folder``),
mAP@k and P@k of each (spec §5.5: a hit is relevant when its ``label`` is the query's class).
``fail_if_worse`` makes a worse new collection an error a deployment pipeline can stop on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clair_vec.datasets.images import walk_images
from clair_vec.errors import DatasetError
from clair_vec.method.metrics import ranked_metrics
from clair_vec.retrieval.queries import Part, Query
from clair_vec.retrieval.retriever import Retriever
from clair_vec.store.backend import Backend

BATCH = 32


@dataclass(frozen=True)
class Side:
    collection: str  # as resolved (an alias names the collection it points to now)
    model: str
    metrics: dict[str, float]


def model_of(be: Backend, collection: str, given: str | Path | None) -> str:
    """The model that built ``collection``: ``given``, else the one the collection recorded."""
    if given is not None:
        return str(given)
    recorded = be.open_collection(collection).extra.get("model_dir")
    if not recorded or not Path(recorded).is_dir():
        raise DatasetError(
            f"collection {collection!r} does not record where its model lives"
            f"{f' (it names {recorded!r}, which is gone)' if recorded else ''}: pass the model with --old-model / --new-model"
        )
    return recorded


def query_images(folder: str | Path) -> tuple[list[Path], list[str] | None]:
    """The query files under ``folder`` and, when every one sits in a class folder below it, their classes."""
    root = Path(folder)
    files = walk_images(root).files
    if not files:
        raise DatasetError(f"no query images under {str(root)!r}")
    nested = all(f.parent != root for f in files)
    return files, [f.parent.name for f in files] if nested else None


def compare(
    be: Backend,
    old: str,
    new: str,
    queries: str | Path,
    *,
    domain: str,
    k: int = 10,
    old_model: str | Path | None = None,
    new_model: str | Path | None = None,
    fail_if_worse: float | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    files, labels = query_images(queries)
    if fail_if_worse is not None and labels is None:
        raise DatasetError("--fail-if-worse compares mAP, which needs query folders named by class (DIR/<class>/<image>)")
    names = be.resolve(old), be.resolve(new)
    retrievers = [Retriever(model_of(be, n, m), backend=be, device=device) for n, m in zip(names, (old_model, new_model), strict=True)]
    hits: list[list[list[str]]] = [[], []]
    rel: list[list[list[float]]] = [[], []]
    try:
        for side, (r, name) in enumerate(zip(retrievers, names, strict=True)):
            r.model.check_domain(domain)
            for start in range(0, len(files), BATCH):
                chunk = files[start : start + BATCH]
                rows = r.run(name, [Query.of(Part.image(f, domain), top_k=k) for f in chunk])
                for n, row in enumerate(rows):
                    hits[side].append([h.id for h in row])
                    if labels is not None:
                        want = labels[start + n]
                        rel[side].append([float(h.payload.get("label") == want) for h in row] + [0.0] * (k - len(row)))
    finally:
        for r in retrievers:
            r.close()
    overlap = float(np.mean([len(set(a) & set(b)) / max(len(a), 1) for a, b in zip(*hits, strict=True)]))
    sides = []
    for side, (r, name) in enumerate(zip(retrievers, names, strict=True)):
        metrics = ranked_metrics(np.asarray(rel[side]), map_ks=(k,), prec_ks=(k,)) if labels is not None else {}
        sides.append(Side(name, r.model.model_id, {key: v for key, v in metrics.items() if key != "mAP@all"}))
    result = {"old": vars(sides[0]), "new": vars(sides[1]), "queries": len(files), "domain": domain, "k": k,
              f"overlap@{k}": overlap, "labelled": labels is not None}  # fmt: skip
    if labels is not None:
        result["delta"] = {m: sides[1].metrics[m] - sides[0].metrics[m] for m in sides[0].metrics}
        if fail_if_worse is not None and rel[0] and not any(any(r) for r in rel[0]):
            # a baseline without labels scores 0, and so does anything compared with it: "not worse"
            # would pass blind (a new side without them is simply worse, and says so)
            raise DatasetError(f"no hit in {names[0]!r} carries a label that matches a query class, so the baseline's mAP "
                               "cannot be measured; index it with --label-from-folder (or --labels) to gate on it")  # fmt: skip
        if fail_if_worse is not None:
            worse = result["delta"][f"mAP@{k}"] < -fail_if_worse
            result["verdict"] = "worse" if worse else "not worse"
            result["reason"] = (
                f"mAP@{k} {sides[1].metrics[f'mAP@{k}']:.4f} for {names[1]!r} against {sides[0].metrics[f'mAP@{k}']:.4f} for "
                f"{names[0]!r}; allowed loss {fail_if_worse:g}"
            )
    return result


def format_table(result: dict[str, Any]) -> str:
    k = result["k"]
    lines = [f"{result['queries']} {result['domain']} queries, top {k}: overlap@{k} {result[f'overlap@{k}']:.3f}"]
    if result["labelled"]:
        metrics: Sequence[str] = list(result["old"]["metrics"])
        lines.append(f"{'':<5} {'collection':<24} " + " ".join(f"{m:>9}" for m in metrics))
        for side in ("old", "new"):
            row = result[side]
            lines.append(f"{side:<5} {row['collection']:<24} " + " ".join(f"{row['metrics'][m]:>9.4f}" for m in metrics))
        lines.append(f"{'delta':<5} {'':<24} " + " ".join(f"{result['delta'][m]:>+9.4f}" for m in metrics))
    else:
        lines.append("(query folders carry no class names: overlap only)")
    return "\n".join(lines)
