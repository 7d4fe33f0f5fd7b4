"""The single-process training job behind ``clair-vec train`` and the demo: split, CLIP features,
CLAIR training on rotating folds of the seen classes, the per-domain selection, the final model
on every seen class, and the training record."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from clair_vec.datasets.folders import MultiDomainDataset, Split, plan_split
from clair_vec.method.config import ClairConfig
from clair_vec.method.devices import resolve_device
from clair_vec.method.foundation import FoundationModel
from clair_vec.method.model import ClairModel
from clair_vec.training.features import DomainFeatures, extract_features
from clair_vec.training.folds import MIN_TRAINING_CLASSES, MIN_VALIDATION_CLASSES, class_folds, run_folds
from clair_vec.training.selection import select_on_folds, ship
from clair_vec.training.trainer import ClairTrainer, EpochStats

HIST_BINS = 20


def training_stats(trainer: ClairTrainer) -> dict[str, Any]:
    """Pseudo-label accuracy, kept fraction and confidence histograms per domain (for reports)."""
    out: dict[str, Any] = {"bins": [i / HIST_BINS for i in range(HIST_BINS + 1)], "domains": {}}
    for d in trainer.domains:
        pl = trainer.pseudo[d]
        truth = torch.tensor([trainer.label_index.get(lbl, -1) for lbl in trainer.features[d].labels])
        out["domains"][d] = {
            "images": len(truth),
            "pseudo_label_accuracy": float((pl.labels == truth).float().mean()) if len(truth) else float("nan"),
            "kept_fraction": float(pl.kept.float().mean()) if len(truth) else float("nan"),
            "confidence_histogram": torch.histc(pl.confidence.float(), HIST_BINS, 0, 1).int().tolist(),
            "weight_histogram": torch.histc(pl.weights.float(), HIST_BINS, 0, 1).int().tolist(),
        }
    return out


def progress_record(trainer: ClairTrainer) -> dict[str, Any]:
    """What a run learned about itself: per-epoch history, best epoch, pseudo-label statistics."""
    return {"best_epoch": trainer.best["epoch"] if trainer.best else trainer.epoch - 1, "epochs": trainer.epoch,
            "history": [h.as_dict() for h in trainer.history], "stats": training_stats(trainer)}  # fmt: skip


def seen_dataset(split: Split) -> MultiDomainDataset:
    """Every seen class: the folds rotate over them all, and the final model trains on them all."""
    if split.validation is None:
        return split.train
    return MultiDomainDataset(split.train.items + split.validation.items, split.train.root, list(split.train.skipped))


def plan_folds(seen: MultiDomainDataset, config: ClairConfig, val_fraction: float) -> tuple[list[list[str]], str]:
    """The folds' validation classes, and why there are none when there are none."""
    if val_fraction <= 0 or config.selection_folds <= 0:
        return [], "disabled"
    folds = class_folds(seen.classes, fraction=val_fraction, seed=config.seed, max_folds=config.selection_folds)
    why = (f"the {len(seen.classes)} seen classes are too few for validation folds (each fold holds out at least "
           f"{MIN_VALIDATION_CLASSES} and trains on at least {MIN_TRAINING_CLASSES})")  # fmt: skip
    return folds, "" if folds else why


def choose(trained: ClairModel, split: Split, selection: dict[str, Any] | None, progress: dict[str, Any],
           features: dict[str, DomainFeatures], *, why_none: str = "disabled") -> ClairModel:  # fmt: skip
    """The shipped model (the selection applied to the final head) carrying the whole record."""
    model, record = ship(trained, selection, {d: f.clean for d, f in features.items()}, why_none=why_none)
    folds = selection["folds"] if selection else []
    model.record = {**split.record(), "validation_classes": sorted({c for f in folds for c in f["validation_classes"]}),
                    **record, **progress}  # fmt: skip
    return model


def train_local(
    data: str | Path,
    config: ClairConfig,
    *,
    foundation: FoundationModel | None = None,
    val_fraction: float = 0.3,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    on_epoch: Callable[[EpochStats], None] | None = None,
    split: Split | None = None,
    device: str | None = None,
) -> ClairModel:
    """Folds (selection evidence), then the final model on every seen class, with the per-domain
    decision applied. ``device`` (``auto``: CUDA when there is a GPU) runs CLIP and training;
    a given ``foundation`` runs where it was loaded."""
    split = split or plan_split(data, config.seed, val_fraction)
    fm = foundation or FoundationModel.load(config.clip_model, config.clip_pretrained, str(resolve_device(device)))
    seen = seen_dataset(split)
    feats = extract_features(fm, seen, n_views=config.n_views, seed=config.seed, cache_dir=cache_dir, progress=progress)
    folds, why_none = plan_folds(seen, config, val_fraction)
    runs, thresholds = run_folds(config, fm, feats, folds, progress=progress)
    selection = None
    if runs:
        config = config.replace(confidence_threshold=thresholds["chosen"])
        selection = select_on_folds(runs, fm, config, feats, thresholds)
    trainer = ClairTrainer(config, fm, seen.classes, feats, progress=progress)
    trainer.fit(on_epoch)
    return choose(trainer.build_model(), split, selection, progress_record(trainer), feats, why_none=why_none)
