"""Rotating folds of the seen classes, and one CLAIR training per fold (the selection's evidence).

Two held-out classes are too few to tell a head that helps from one that over-fits the seen
classes (measured: a +0.007 validation win on two classes shipped a head that lost 0.074 mAP@200
on unseen sketches). So the seen classes are shuffled once (seeded) and every fold holds out the
next window of ``max(2, round(fraction * n))`` of them, wrapping around, until every seen class
has been held out once (at most ``max_folds`` folds, at least two classes left to train on). Each
fold trains on its remaining classes exactly as the final model will, and keeps the head of every
epoch; the fold's held-out classes play the unseen classes. Folds never see their own validation
classes: not in the head, the pseudo-label vocabulary, the prompts or the mapping.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from clair_vec.method.config import ClairConfig
from clair_vec.method.foundation import FoundationModel
from clair_vec.training.features import DomainFeatures
from clair_vec.training.trainer import VAL_KEY, ClairTrainer

MIN_VALIDATION_CLASSES = 2  # one class would make retrieval trivially right
MIN_TRAINING_CLASSES = 2


def class_folds(classes: Sequence[str], *, fraction: float, seed: int, max_folds: int) -> list[list[str]]:
    """The validation classes of each fold; ``[]`` when the classes are too few to hold any out."""
    n = len(classes)
    size = max(MIN_VALIDATION_CLASSES, round(n * fraction))
    if fraction <= 0 or max_folds <= 0 or n - size < MIN_TRAINING_CLASSES:
        return []
    order = sorted(classes)
    random.Random(seed).shuffle(order)
    count = min(max_folds, math.ceil(n / size))
    return [sorted(order[(i * size + j) % n] for j in range(size)) for i in range(count)]


def subset(features: dict[str, DomainFeatures], classes: Sequence[str], *, views: bool = True) -> dict[str, DomainFeatures]:
    """The rows of ``features`` whose ground-truth class is in ``classes`` (a class split, as by folder)."""
    keep = set(classes)
    out = {}
    for d, f in features.items():
        rows = [i for i, lbl in enumerate(f.labels) if lbl in keep]
        v = f.views[rows] if views else f.views[rows][:, :0]
        out[d] = DomainFeatures(f.clean[rows], v, [f.labels[i] for i in rows], [f.paths[i] for i in rows])
    return out


@dataclass
class FoldRun:
    validation_classes: list[str]
    training_classes: list[str]
    threshold: float
    curve: list[dict[str, float]]  # per epoch: val mAP@200 of the full head path, per query domain and mean
    snapshots: list[dict[str, Any]] = field(default_factory=list)  # per epoch: head and prompt weights
    kept_fraction: float = float("nan")

    def as_record(self) -> dict[str, Any]:
        return {"validation_classes": self.validation_classes, "threshold": self.threshold,
                "curve": [round(c.get(VAL_KEY, float("nan")), 4) for c in self.curve],
                "kept_fraction": round(self.kept_fraction, 4)}  # fmt: skip


def run_fold(
    config: ClairConfig,
    foundation: FoundationModel,
    features: dict[str, DomainFeatures],
    validation_classes: Sequence[str],
    *,
    progress: bool = False,
    label: str = "",
) -> FoldRun:
    """Train on every class of ``features`` but ``validation_classes``; validate on those after each epoch."""
    held = set(validation_classes)
    classes = sorted({lbl for f in features.values() for lbl in f.labels} - held)
    train = subset(features, classes)
    val = subset(features, sorted(held), views=False)
    trainer = ClairTrainer(config, foundation, classes, train, val_features=val, progress=progress, keep_snapshots=True,
                           label=label)  # fmt: skip
    trainer.fit()
    curve = [{k: v for k, v in h.extra.items() if k.startswith("val_mAP@")} for h in trainer.history]
    return FoldRun(sorted(held), classes, config.confidence_threshold, curve, trainer.snapshots,
                   trainer.history[-1].kept_fraction if trainer.history else float("nan"))  # fmt: skip


FoldRunner = Callable[[list[tuple[ClairConfig, list[str]]]], list[FoldRun]]


def run_folds(
    config: ClairConfig,
    foundation: FoundationModel,
    features: dict[str, DomainFeatures],
    folds: list[list[str]],
    *,
    runner: FoldRunner | None = None,
    progress: bool = False,
) -> tuple[list[FoldRun], dict[str, Any]]:
    """Every fold's run at the chosen confidence threshold, and how that threshold was chosen.

    With ``config.selection_thresholds`` each threshold trains every fold; the one whose best
    epoch has the highest mean validation mAP over the folds is kept. ``runner`` runs a list of
    (config, validation classes) jobs (Ray runs them as tasks); the default runs them here.
    """
    if not folds:
        return [], {}
    thresholds = list(dict.fromkeys(config.selection_thresholds)) or [config.confidence_threshold]
    jobs = [(config.replace(confidence_threshold=t), fold) for t in thresholds for fold in folds]
    run = runner or (lambda js: [run_fold(c, foundation, features, f, progress=progress, label=f"fold {i + 1}/{len(js)} ")
                                 for i, (c, f) in enumerate(js)])  # fmt: skip
    results = run(jobs)
    by_threshold = {t: results[i * len(folds) : (i + 1) * len(folds)] for i, t in enumerate(thresholds)}
    scores = {t: max(mean_curve(runs)) for t, runs in by_threshold.items()}
    best = max(thresholds, key=lambda t: (scores[t], -thresholds.index(t)))
    record = {"thresholds": {f"{t:g}": {"best_mean_val": round(scores[t], 4),
                                         "kept_fraction": round(statistics.fmean(r.kept_fraction for r in by_threshold[t]), 4)}
                             for t in thresholds}, "chosen": best}  # fmt: skip
    return by_threshold[best], record


def mean_curve(runs: Sequence[FoldRun]) -> list[float]:
    """Mean over folds of each epoch's validation mAP of the head path."""
    epochs = min(len(r.curve) for r in runs)
    return [statistics.fmean(r.curve[e].get(VAL_KEY, 0.0) for r in runs) for e in range(epochs)]


def best_epoch(runs: Sequence[FoldRun]) -> int:
    """Early stopping on the folds: the epoch whose mean validation mAP is highest (earliest on ties)."""
    curve = mean_curve(runs)
    return max(range(len(curve)), key=lambda e: (curve[e], -e))
