"""The single-process training job behind ``clair-vec train`` and the demo: split, CLIP features,
CLAIR training with per-epoch validation, model selection, and the training record."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from clair_vec.datasets.folders import Split, plan_split
from clair_vec.method.config import ClairConfig
from clair_vec.method.foundation import FoundationModel
from clair_vec.method.model import ClairModel
from clair_vec.training.features import extract_features
from clair_vec.training.selection import mapping_only_model, select
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


def choose(trained: ClairModel, split: Split, val_features: dict | None, progress: dict[str, Any]) -> ClairModel:
    """Best validation epoch vs mapping only (B1); the shipped model carries the whole record."""
    baseline = mapping_only_model(trained.foundation, trained.classes, trained.domains, trained.config)
    model, record = select(trained, baseline, val_features)
    model.record = {**split.record(), **record, **progress}
    return model


def train_local(
    data: str | Path,
    config: ClairConfig,
    *,
    foundation: FoundationModel | None = None,
    val_fraction: float = 0.1,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    on_epoch: Callable[[EpochStats], None] | None = None,
    split: Split | None = None,
) -> ClairModel:
    split = split or plan_split(data, config.seed, val_fraction)
    fm = foundation or FoundationModel.load(config.clip_model, config.clip_pretrained)
    feats = extract_features(fm, split.train, n_views=config.n_views, seed=config.seed, cache_dir=cache_dir, progress=progress)
    val = extract_features(fm, split.validation, n_views=0, cache_dir=cache_dir, progress=False) if split.validation else None
    trainer = ClairTrainer(config, fm, split.train.classes, feats, val_features=val, progress=progress)
    trainer.fit(on_epoch)
    return choose(trainer.build_model(best=True), split, val, progress_record(trainer))
