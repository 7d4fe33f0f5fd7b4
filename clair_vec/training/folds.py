"""Folds of the seen classes, and one CLAIR training per fold (the selection's evidence).

Each fold holds out a seeded random set of ``max(2, round(fraction * n))`` seen classes, as a
user's unseen classes are a set of classes training never saw, and trains on the rest exactly as
the final model will (at least two classes left to train on). The folds are distinct class sets,
``max_folds`` of them where the classes allow, so that the spread of their gains measures how much
a gain depends on which classes are held out: the noise the selection must see past. Folds never
see their own validation classes: not in the head, the pseudo-label vocabulary, the prompts, the
centres or the mapping. In a weakly supervised run the unlabeled images of a held-out class cannot
be told apart and stay in the fold's training (never its labeled validation images, nor copies of
them): there, a fold validates on classes whose names it does not know.
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


def class_folds(classes: Sequence[str], *, fraction: float, seed: int, max_folds: int,
                vocabulary: Sequence[str] | None = None, cover: bool = False) -> list[list[str]]:  # fmt: skip
    """The validation classes of each fold; ``[]`` when the classes are too few to hold any out.

    ``cover``: the folds are consecutive runs of one seeded shuffle of the classes, wrapping round,
    so every class is held out once before any is held out twice (as k-fold cross-validation
    does); the fold mean then judges all the seen classes, not whichever ones independent draws
    hit. Runs that repeat a fold or leave too few names to train on give way to random draws, as
    every fold is drawn without ``cover``.

    ``vocabulary`` (weak supervision): the class names training knows, which may differ from the
    labeled ``classes``; a fold must leave at least two of them to train with."""
    n = len(classes)
    size = max(MIN_VALIDATION_CLASSES, round(n * fraction))
    if fraction <= 0 or max_folds <= 0 or n < size:
        return []
    names = set(classes if vocabulary is None else vocabulary)
    if len(names - set(classes)) + (n - size) < MIN_TRAINING_CLASSES:
        return []  # even the fold that holds out the fewest known names leaves too few
    rng, order = random.Random(seed), sorted(classes)
    count = min(max_folds, math.comb(n, size))
    folds: list[list[str]] = []
    if cover:
        shuffled = rng.sample(order, n)
        for i in range(count):
            fold = sorted(shuffled[(i * size + j) % n] for j in range(size))
            if fold not in folds and len(names - set(fold)) >= MIN_TRAINING_CLASSES:
                folds.append(fold)
    for _ in range(100 * count):  # bounded: some class sets may not be allowed, and draws repeat
        if len(folds) == count:
            break
        fold = sorted(rng.sample(order, size))
        if fold not in folds and len(names - set(fold)) >= MIN_TRAINING_CLASSES:
            folds.append(fold)
    return folds


def subset(features: dict[str, DomainFeatures], classes: Sequence[str], *, views: bool = True,
           exclude: bool = False) -> dict[str, DomainFeatures]:  # fmt: skip
    """The rows of ``features`` whose ground-truth class is in ``classes`` (a class split, as by
    folder), or with ``exclude`` every other row, unlabeled images included."""
    keep = set(classes)
    out = {}
    for d, f in features.items():
        rows = [i for i, lbl in enumerate(f.labels) if (lbl in keep) != exclude]
        v = f.views[rows] if views else f.views[rows][:, :0]
        out[d] = DomainFeatures(f.clean[rows], v, [f.labels[i] for i in rows], [f.paths[i] for i in rows])
    return out


@dataclass
class FoldRun:
    validation_classes: list[str]
    training_classes: list[str]
    threshold: float
    curve: list[dict[str, float]]  # per epoch: val mAP@200 of the full head path, per query domain and mean
    snapshots: list[dict[str, Any]] = field(default_factory=list)  # the last epoch's head and prompt weights
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
    vocabulary: Sequence[str] | None = None,
) -> FoldRun:
    """Train on every image of ``features`` but those of ``validation_classes``, with the class
    names of ``vocabulary`` (default: the labels of ``features``) less those; validate on the
    held-out images after each epoch."""
    held = set(validation_classes)
    names = vocabulary if vocabulary is not None else sorted({lbl for f in features.values() for lbl in f.labels})
    classes = [c for c in names if c not in held]
    train = subset(features, sorted(held), exclude=True)
    val = subset(features, sorted(held), views=False)
    trainer = ClairTrainer(config, foundation, classes, train, val_features=val, progress=progress, label=label)
    trainer.fit()
    curve = [{k: v for k, v in h.extra.items() if k.startswith("val_mAP@")} for h in trainer.history]
    last = {"head": {k: v.detach().clone() for k, v in trainer.head.state_dict().items()},
            "prompts": {k: v.detach().clone() for k, v in trainer.prompts.state_dict().items()} if trainer.prompts else None}  # fmt: skip
    return FoldRun(sorted(held), classes, config.confidence_threshold, curve, [last],
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
    vocabulary: Sequence[str] | None = None,
) -> tuple[list[FoldRun], dict[str, Any]]:
    """Every fold's run at the chosen confidence threshold, and how that threshold was chosen.

    With ``config.selection_thresholds`` each threshold trains every fold; the one whose last
    epoch has the highest mean validation mAP over the folds is kept. ``runner`` runs a list of
    (config, validation classes) jobs (Ray runs them as tasks); the default runs them here.
    ``vocabulary``: the class names of a weakly supervised run (see :func:`run_fold`).
    """
    if not folds:
        return [], {}
    thresholds = list(dict.fromkeys(config.selection_thresholds)) or [config.confidence_threshold]
    jobs = [(config.replace(confidence_threshold=t), fold) for t in thresholds for fold in folds]
    run = runner or (lambda js: [run_fold(c, foundation, features, f, progress=progress, label=f"fold {i + 1}/{len(js)} ",
                                          vocabulary=vocabulary) for i, (c, f) in enumerate(js)])  # fmt: skip
    results = run(jobs)
    by_threshold = {t: results[i * len(folds) : (i + 1) * len(folds)] for i, t in enumerate(thresholds)}
    scores = {t: mean_curve(runs)[-1] for t, runs in by_threshold.items()}
    best = max(thresholds, key=lambda t: (scores[t], -thresholds.index(t)))
    record = {"thresholds": {f"{t:g}": {"best_mean_val": round(scores[t], 4),
                                         "kept_fraction": round(statistics.fmean(r.kept_fraction for r in by_threshold[t]), 4)}
                             for t in thresholds}, "chosen": best}  # fmt: skip
    return by_threshold[best], record


def mean_curve(runs: Sequence[FoldRun]) -> list[float]:
    """Mean over folds of each epoch's validation mAP of the head path."""
    epochs = min(len(r.curve) for r in runs)
    return [statistics.fmean(r.curve[e].get(VAL_KEY, 0.0) for r in runs) for e in range(epochs)]

