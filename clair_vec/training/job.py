"""The single-process training job behind ``clair-vec train`` and the demo: split, CLIP features,
CLAIR training on rotating folds of the seen classes, the per-domain selection, the final model
on every seen class, and the training record."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from clair_vec.datasets.folders import MultiDomainDataset, Split, plan_split
from clair_vec.datasets.unlabeled import labeled_classes, plan_weak_split
from clair_vec.errors import DatasetError
from clair_vec.method.centering import decide_centring
from clair_vec.method.config import ClairConfig
from clair_vec.method.devices import resolve_device
from clair_vec.method.foundation import FoundationModel
from clair_vec.method.model import ClairModel, check_replaceable
from clair_vec.training.features import DomainFeatures, extract_features
from clair_vec.training.folds import MIN_TRAINING_CLASSES, MIN_VALIDATION_CLASSES, FoldRun, class_folds, run_folds
from clair_vec.training.selection import average_fold_heads, select_on_folds, ship
from clair_vec.training.trainer import ClairTrainer, EpochStats

HIST_BINS = 20


def training_stats(trainer: ClairTrainer) -> dict[str, Any]:
    """Pseudo-label accuracy, kept fraction and confidence histograms per domain (for reports)."""
    out: dict[str, Any] = {"bins": [i / HIST_BINS for i in range(HIST_BINS + 1)], "domains": {}}
    for d in trainer.domains:
        pl = trainer.pseudo[d]
        truth = torch.tensor([trainer.label_index.get(lbl, -1) for lbl in trainer.features[d].labels], dtype=torch.long)
        known = truth >= 0  # an unlabeled image (weak supervision) says nothing about the labels' accuracy
        out["domains"][d] = {
            "images": len(truth),
            "labeled_images": int(known.sum()),
            # None, not NaN, where no image is labeled: clair.json stays JSON that any parser reads
            "pseudo_label_accuracy": float((pl.labels.cpu() == truth)[known].float().mean()) if known.any() else None,
            "kept_fraction": float(pl.kept.float().mean()) if len(truth) else float("nan"),
            "confidence_histogram": torch.histc(pl.confidence.float(), HIST_BINS, 0, 1).int().tolist(),
            "weight_histogram": torch.histc(pl.weights.float(), HIST_BINS, 0, 1).int().tolist(),
        }
    return out


def progress_record(trainer: ClairTrainer) -> dict[str, Any]:
    """What a run learned about itself: per-epoch history, best epoch, pseudo-label statistics."""
    return {"best_epoch": trainer.best["epoch"] if trainer.best else trainer.epoch - 1, "epochs": trainer.epoch,
            "history": [h.as_dict() for h in trainer.history], "stats": training_stats(trainer)}  # fmt: skip


def check_val_fraction(val_fraction: float) -> None:
    if not 0.0 <= val_fraction < 1.0:  # NaN too
        raise ValueError(f"val_fraction must lie in [0, 1): the share of seen classes each selection fold holds out "
                         f"(0: no selection), got {val_fraction}")  # fmt: skip


def check_output(out: str | Path, data: str | Path, **others: str | Path | None) -> None:
    """Refuse, before training, an ``out`` that saving the model would destroy or that would mix
    the model into the dataset. ``others``: the run's other paths by flag name (``cache_dir=``,
    ``storage_path=``, ``validation=``, ``classes=``); none may lie inside ``out``, which saving
    replaces whole: a cache made there by this very run would turn ``out`` into a folder that is
    no model, and the save after an hour of training would be refused."""
    o = Path(out).resolve()
    for flag, given in {"data": data, **others}.items():
        if given is None:
            continue
        p, name = Path(given).resolve(), "--" + flag.replace("_", "-")
        if flag == "data" and (o == p or p in o.parents):
            raise DatasetError(f"--out {out} is inside --data {data}: the model folder would be read as part of the dataset "
                               "by the next run; write it elsewhere")  # fmt: skip
        if o == p or o in p.parents:
            raise DatasetError(f"{name} {given} is inside --out {out}: saving the model replaces --out whole, which would "
                               f"delete it; put {name} elsewhere or write the model elsewhere")  # fmt: skip
    check_replaceable(out)


def check_domains(seen: MultiDomainDataset, pivot: str) -> None:
    """Before any image is encoded: the gallery domain and at least one query domain to align to it."""
    domains = seen.domains
    if pivot not in domains:
        raise DatasetError(f"the gallery domain {pivot!r} has no training images; the data has {domains}. Pass --pivot "
                           f"with one of them (pivot_domain in ClairConfig), or add root/{pivot}/<class>/ folders")  # fmt: skip
    if len(domains) < 2:
        raise DatasetError(f"only the gallery domain {pivot!r} has training images: CLAIR learns to search it with queries "
                           "of other domains (sketches, cliparts, paintings); add root/<domain>/<class>/ folders of at "
                           "least one more domain")  # fmt: skip


def plan_training(data: str | Path, seed: int, val_fraction: float, *, classes: str | Path | list[str] | None = None,
                  validation: str | Path | None = None) -> Split:  # fmt: skip
    """The split of a labeled dataset (class folders), or, given ``classes``, of unlabeled images."""
    check_val_fraction(val_fraction)
    if classes is not None:
        return plan_weak_split(data, classes, validation=validation, seed=seed)
    if validation is not None:
        raise DatasetError("--validation goes with --classes (training from unlabeled images); a labeled dataset "
                           "validates on folds of its own seen classes (--val-fraction)")  # fmt: skip
    return plan_split(data, seed, val_fraction)


def seen_dataset(split: Split) -> MultiDomainDataset:
    """Every seen class: the folds rotate over them all, and the final model trains on them all."""
    if split.validation is None:
        return split.train
    return MultiDomainDataset(split.train.items + split.validation.items, split.train.root, list(split.train.skipped))


def plan_folds(seen: MultiDomainDataset, config: ClairConfig, val_fraction: float,
               vocabulary: list[str] | None = None) -> tuple[list[list[str]], str]:  # fmt: skip
    """The folds' validation classes, and why there are none when there are none. Only labeled
    images can be held out: in a weakly supervised run (``vocabulary``), those of class folders or
    of --validation."""
    if val_fraction <= 0 or config.selection_folds <= 0:
        return [], "disabled"
    labeled = labeled_classes(seen)
    if not labeled:
        return [], ("no training image is labeled and no --validation folder was given, so no class can be held out to "
                    "validate on. Pass --validation ROOT, a small labeled folder ROOT/<domain>/<class>/<image>")  # fmt: skip
    folds = class_folds(labeled, fraction=val_fraction, seed=config.seed, max_folds=config.selection_folds,
                        vocabulary=vocabulary, cover=config.selection_fold_classes == "cover")  # fmt: skip
    kind = "seen" if vocabulary is None else "labeled"
    why = (f"the {len(labeled)} {kind} classes are too few for validation folds (each fold holds out at least "
           f"{MIN_VALIDATION_CLASSES} and trains on at least {MIN_TRAINING_CLASSES}); more classes would make folds")  # fmt: skip
    return folds, "" if folds else why


def choose(trained: ClairModel, split: Split, selection: dict[str, Any] | None, progress: dict[str, Any],
           features: dict[str, DomainFeatures], *, why_none: str = "disabled", runs: Sequence[FoldRun] = ()) -> ClairModel:  # fmt: skip
    """The shipped model (the selection applied to the final head, averaged with the fold heads
    of ``runs`` as the config says) carrying the whole record."""
    width = trained.head.mlp[0].out_features
    trained = average_fold_heads(trained, runs)
    model, record = ship(trained, selection, {d: f.clean for d, f in features.items()}, why_none=why_none)
    record["heads_averaged"] = trained.head.mlp[0].out_features // width  # the final head's and each fold head's width are one
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
    classes: str | Path | list[str] | None = None,
    validation: str | Path | None = None,
) -> ClairModel:
    """Folds (selection evidence), then the final model on every seen class, with the per-domain
    decision applied. ``device`` (``auto``: CUDA when there is a GPU) runs CLIP and training;
    a given ``foundation`` runs where it was loaded.

    ``classes`` (a class-name file or list) makes the run weakly supervised: ``data`` is
    ``ROOT/<domain>/<image>``, unlabeled, and ``validation`` an optional labeled folder for the
    selection (:mod:`clair_vec.datasets.unlabeled`)."""
    check_val_fraction(val_fraction)  # a given split (benchmark run) skips plan_training's check
    split = split or plan_training(data, config.seed, val_fraction, classes=classes, validation=validation)
    check_domains(seen_dataset(split), config.pivot_domain)
    fm = foundation or FoundationModel.load(config.clip_model, config.clip_pretrained, str(resolve_device(device)),
                                            seed=config.seed)  # fmt: skip
    seen = seen_dataset(split)
    feats = extract_features(fm, seen, n_views=config.n_views, seed=config.seed, cache_dir=cache_dir, progress=progress)
    config, centring = decide_centring(config, {d: f.clean for d, f in feats.items()})
    folds, why_none = plan_folds(seen, config, val_fraction, split.vocabulary)
    runs, thresholds = run_folds(config, fm, feats, folds, progress=progress, vocabulary=split.classes)
    selection = None
    if runs:
        config = config.replace(confidence_threshold=thresholds["chosen"])
        selection = select_on_folds(runs, fm, config, feats, thresholds)
    trainer = ClairTrainer(config, fm, split.classes, feats, progress=progress)
    trainer.fit(on_epoch)
    return choose(trainer.build_model(), split, selection, {**progress_record(trainer), "centring": centring}, feats,
                  why_none=why_none, runs=runs)
