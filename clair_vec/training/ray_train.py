"""Ray: the CLIP feature pass on Ray Data actors and CLAIR training on Ray Train (bulk indexing:
:mod:`clair_vec.retrieval.bulk_index`).

Lives in the package (not in ``ray_jobs/``) because Ray workers import what they run; the
scripts in ``ray_jobs/`` are thin command lines over these functions. Ray is imported lazily.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clair_vec.datasets.folders import MultiDomainDataset
from clair_vec.datasets.images import load_images
from clair_vec.extras import require
from clair_vec.method.centering import decide_centring
from clair_vec.method.config import ClairConfig
from clair_vec.method.foundation import FoundationModel
from clair_vec.method.model import ClairModel
from clair_vec.method.tensor_files import load_tensor_file, save_tensor_file, write_tensor_file
from clair_vec.ray_runtime import check_gpu_choice, gpus_each, ray_session, sigterm_as_interrupt
from clair_vec.training.features import DomainFeatures, encode_domain_images, extract_features, view_key
from clair_vec.training.folds import FoldRun, run_fold, run_folds
from clair_vec.training.job import (
    check_domains,
    check_output,
    choose,
    plan_folds,
    plan_training,
    progress_record,
    seen_dataset,
)
from clair_vec.training.selection import select_on_folds

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------- CLIP features on Ray Data
class ClipFeatureActor:
    """Holds one CLIP model; turns batches of image paths into clean and augmented-view features."""

    def __init__(self, clip_model: str, clip_pretrained: str | None, n_views: int, seed: int, device: str = "cpu") -> None:
        self.fm = FoundationModel.load(clip_model, clip_pretrained, device)
        self.n_views, self.seed = n_views, seed

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n, dim = len(batch["path"]), self.fm.embed_dim
        clean = np.zeros((n, dim), np.float32)
        views = np.zeros((n, self.n_views, dim), np.float32)
        error = np.array([""] * n, dtype=object)
        for domain in sorted(set(batch["domain"].tolist())):
            rows = np.flatnonzero(batch["domain"] == domain)
            paths = [str(batch["path"][r]) for r in rows]
            keys = [str(batch["key"][r]) for r in rows]
            images, ok, skipped = load_images(paths)
            for path, reason in skipped:
                error[rows[paths.index(path)]] = reason
            if images:
                c, v = encode_domain_images(self.fm, images, [keys[i] for i in ok], domain, n_views=self.n_views, seed=self.seed)
                clean[rows[ok]], views[rows[ok]] = c.numpy(), v.numpy()
        return {**batch, "clean": clean, "views": views, "error": error}


def ray_extract_features(
    foundation: FoundationModel,
    dataset: MultiDomainDataset,
    *,
    n_views: int,
    seed: int,
    actors: int = 1,
    batch_size: int = 64,
    gpus_per_actor: float = 0.0,
    cache_dir: str | Path | None = None,
) -> dict[str, DomainFeatures]:
    """:func:`clair_vec.features.extract_features`, with the CLIP forward pass on a Ray Data actor pool.

    Views are seeded per image, so the result equals the single-process pass (up to float
    rounding of different batch compositions).
    """
    import ray

    def compute() -> dict[str, DomainFeatures]:
        items = [{"idx": i, "path": it.path, "key": view_key(it.path, dataset.root), "domain": it.domain, "label": it.label}
                 for i, it in enumerate(dataset.items)]  # fmt: skip
        ds = ray.data.from_items(items).map_batches(
            ClipFeatureActor,
            fn_constructor_kwargs={"clip_model": foundation.arch, "clip_pretrained": foundation.pretrained,
                                   "n_views": n_views, "seed": seed, "device": "cuda" if gpus_per_actor else "cpu"},  # fmt: skip
            compute=ray.data.ActorPoolStrategy(size=actors),
            batch_size=batch_size,
            num_gpus=gpus_per_actor,
            batch_format="numpy",
        )
        rows: dict[str, list] = {}
        for batch in ds.iter_batches(batch_size=1024, batch_format="numpy"):
            for k, v in batch.items():
                rows.setdefault(k, []).append(v)
        cols = {k: np.concatenate(v) for k, v in rows.items()}
        order = np.argsort(cols["idx"])
        cols = {k: v[order] for k, v in cols.items()}
        out = {}
        for domain in dataset.domains:
            sel = cols["domain"] == domain
            good = sel & (cols["error"] == "")
            skipped = [(str(p), str(e)) for p, e in zip(cols["path"][sel & ~good], cols["error"][sel & ~good], strict=True)]
            for p, e in skipped:
                log.warning("skipping cannot read image %r: %s", p, e)
            out[domain] = DomainFeatures(
                torch.from_numpy(cols["clean"][good]), torch.from_numpy(cols["views"][good]),
                [str(x) for x in cols["label"][good]], [str(x) for x in cols["path"][good]], skipped,
            )  # fmt: skip
        return out

    if foundation.pretrained is None:
        raise ValueError("Ray feature actors load CLIP by tag or file; save random weights to a file first")
    return extract_features(foundation, dataset, n_views=n_views, seed=seed, cache_dir=cache_dir, progress=False, compute=compute)


# ---------------------------------------------------------------------- training on Ray Train
def train_loop_per_worker(config: dict[str, Any]) -> None:
    """One Ray Train worker: the same :class:`ClairTrainer` as single-process training."""
    import ray
    import ray.train
    import torch.distributed as dist
    from ray.train.torch import get_device, prepare_model

    from clair_vec.training.trainer import ClairTrainer

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    feats = ray.get(config["features"])
    val = ray.get(config["val_features"]) if config["val_features"] is not None else None
    cfg = ClairConfig.from_dict(config["clair"])
    # the GPU Ray assigned this worker (cuda:N on a multi-GPU node), where prepare_model puts the head
    device = str(get_device()) if config["use_gpu"] else "cpu"
    fm = FoundationModel.load(cfg.clip_model, cfg.clip_pretrained, device)

    def gather(t: torch.Tensor) -> torch.Tensor:
        if world == 1:
            return t
        parts = [torch.empty_like(t) for _ in range(world)]
        dist.all_gather(parts, t.contiguous())
        return torch.cat(parts)

    def mean(t: torch.Tensor) -> None:
        if world > 1:
            dist.all_reduce(t)
            t /= world

    trainer = ClairTrainer(cfg, fm, config["classes"], feats, rank=rank, world_size=world, wrap_head=prepare_model,
                           all_gather=gather, all_reduce_mean=mean, val_features=val, progress=False)  # fmt: skip
    start = ray.train.get_checkpoint()
    if start:
        with start.as_directory() as d:
            trainer.load_state_dict(load_tensor_file(Path(d) / "trainer.pt", what="Ray trainer checkpoint"))
    while trainer.epoch < min(cfg.epochs, config["until"]):
        stats = trainer.train_epoch()
        metrics = {k: v for k, v in stats.as_dict().items() if isinstance(v, (int, float))}
        metrics["samples_per_s"] = trainer.steps_per_epoch * trainer.per_domain_batch * len(trainer.domains) * world / stats.seconds
        with tempfile.TemporaryDirectory() as d:
            checkpoint = None
            if rank == 0:
                write_tensor_file(trainer.state_dict(), Path(d) / "trainer.pt")  # a full disk said as one, not torch's words
                trainer.build_model().save(Path(d) / "model")
                (Path(d) / "progress.json").write_text(json.dumps(progress_record(trainer)))
                checkpoint = ray.train.Checkpoint.from_directory(d)
            ray.train.report(metrics, checkpoint=checkpoint)


def fold_task(clair: dict[str, Any], features: dict[str, DomainFeatures], validation_classes: list[str],
              vocabulary: list[str] | None = None) -> FoldRun:  # fmt: skip
    """One selection fold as a Ray task: folds are independent trainings, so they run side by side."""
    cfg = ClairConfig.from_dict(clair)
    return run_fold(cfg, FoundationModel.load(cfg.clip_model, cfg.clip_pretrained), features, validation_classes,
                    vocabulary=vocabulary)  # fmt: skip


def _ray_folds(config: ClairConfig, fm: FoundationModel, feats: dict[str, DomainFeatures], folds: list[list[str]],
               run_dir: Path, vocabulary: list[str]) -> tuple[list[FoldRun], dict[str, Any]]:  # fmt: skip
    """The folds on Ray tasks, cached in the run directory so that a resumed run does not redo them."""
    import hashlib

    import ray

    key = hashlib.sha256(json.dumps([config.to_dict(), folds, vocabulary], sort_keys=True).encode()).hexdigest()[:16]
    cache = run_dir / f"folds-{key}.pt"
    if cache.exists():
        saved = load_tensor_file(cache, what="selection folds")
        return [FoldRun(**r) for r in saved["runs"]], saved["thresholds"]
    task = ray.remote(num_cpus=1)(fold_task)
    ref = ray.put(feats)

    def runner(jobs: list[tuple[ClairConfig, list[str]]]) -> list[FoldRun]:
        return ray.get([task.remote(c.to_dict(), ref, f, vocabulary) for c, f in jobs])

    runs, thresholds = run_folds(config, fm, feats, folds, runner=runner, vocabulary=vocabulary)
    try:
        save_tensor_file({"runs": [vars(r) for r in runs], "thresholds": thresholds}, cache)
    except OSError as exc:  # the cache spares a resumed run the folds; a full disk under it is no reason to stop
        log.warning("the selection folds were not cached in %s (%s); the run goes on without it", cache, exc.strerror or exc)
    return runs, thresholds


@dataclass
class TrainResult:
    model_dir: Path
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    record: dict[str, Any]


def _run_identity(config: ClairConfig, split: Any, val_fraction: float) -> dict[str, Any]:
    """What a resumed run must share with the run it resumes: every setting but the epochs (a run
    may be extended), and the images."""
    seen = seen_dataset(split)
    # paths relative to the data root: the same images given as data/ or /abs/data, or on another mount, are one run
    images = hashlib.sha256("\n".join(sorted(f"{i.domain}/{i.label}/{os.path.relpath(i.path, seen.root or os.curdir)}"
                                             for i in seen.items)).encode())  # fmt: skip
    settings = {k: v for k, v in config.to_dict().items() if k != "epochs"}
    if isinstance(settings.get("clip_pretrained"), str) and os.path.exists(settings["clip_pretrained"]):
        settings["clip_pretrained"] = os.path.realpath(settings["clip_pretrained"])
    return {"config": settings, "val_fraction": val_fraction, "images": images.hexdigest()[:16],
            "unseen": sorted(split.unseen.classes) if split.unseen is not None else None, "epochs": config.epochs}  # fmt: skip


def _same_run(run_dir: Path, name: str, identity: dict[str, Any]) -> None:
    """Refuse to resume a run made with other settings or images: Ray Train would hand its last
    checkpoint to the new run, which would train on from it (or, past its epochs, not at all) and
    write a model under settings that were never used."""
    path = run_dir / "run.json"
    if next(run_dir.glob("checkpoint_*"), None) is None:  # nothing trained yet (a first try failed): nothing to mix with
        return
    try:
        before = json.loads(path.read_text())
    except FileNotFoundError:
        before = None
    except (OSError, ValueError) as exc:
        raise ValueError(f"run {name!r} at {run_dir} cannot be resumed: its run.json is unreadable ({exc}); give a new "
                         "--name, or remove its checkpoint_* folders to start it over") from None  # fmt: skip
    if before is not None and int(before.get("epochs", 0)) > identity["epochs"]:
        raise ValueError(f"run {name!r} at {run_dir} was started for {before['epochs']} epochs, more than the "
                         f"{identity['epochs']} asked: re-running a --name resumes it, so ask for at least "
                         f"{before['epochs']} epochs, or give this run a new --name")  # fmt: skip
    same = before is not None and {k: v for k, v in before.items() if k != "epochs"} == json.loads(
        json.dumps({k: v for k, v in identity.items() if k != "epochs"}))  # fmt: skip
    if before is None or same:  # a new run, or the same one resumed (perhaps for more epochs)
        return
    old, new = before.get("config", {}), identity["config"]
    changed = [f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    changed += [f"the {k}" if k != "val_fraction" else f"val_fraction {before.get(k)!r} -> {identity[k]!r}"
                for k in ("images", "unseen", "val_fraction") if before.get(k) != identity[k]]  # fmt: skip
    raise ValueError(f"run {name!r} at {run_dir} was started with other settings ({'; '.join(changed[:6])}"
                     f"{'; ...' if len(changed) > 6 else ''}): re-running a --name resumes it, so give this run a new "
                     "--name (or remove its checkpoint_* folders to start it over)")  # fmt: skip


def _record_run(run_dir: Path, identity: dict[str, Any]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / "run.json.tmp"
    tmp.write_text(json.dumps(identity, indent=1, sort_keys=True))
    os.replace(tmp, run_dir / "run.json")


def run_training(
    data: str | Path,
    *,
    out: str | Path,
    config: ClairConfig,
    storage_path: str | Path,
    name: str = "clair",
    workers: int = 1,
    gpus: str = "auto",
    val_fraction: float = 0.3,
    feature_actors: int = 1,
    classes: str | Path | list[str] | None = None,
    validation: str | Path | None = None,
) -> TrainResult:
    """Validate, compute features once on Ray Data, train on ``workers`` Ray Train workers.
    ``classes`` and ``validation``: weakly supervised data, as :func:`~clair_vec.training.job.train_local` takes.

    Bad input (missing data, more GPU workers than GPUs) raises before any worker starts.
    Re-running with the same ``name`` and ``storage_path`` resumes from the last checkpoint (for
    more epochs, it trains on); other settings or images under that name are refused first.
    """
    require("ray", "ray.train.torch", "ray.data", needed_for="distributed training (ray_jobs/train.py)")
    import ray
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if feature_actors < 1:
        raise ValueError(f"feature_actors must be >= 1 (--feature-actors), got {feature_actors}")
    check_gpu_choice(gpus)
    # raises DatasetError naming a missing folder or class file, before Ray starts
    split = plan_training(Path(data), config.seed, val_fraction, classes=classes, validation=validation)
    check_output(out, data, storage_path=storage_path, validation=validation,
                 classes=classes if isinstance(classes, (str, Path)) else None)  # fmt: skip
    check_domains(seen_dataset(split), config.pivot_domain)
    run_dir = Path(storage_path) / name
    identity = _run_identity(config, split, val_fraction)
    _same_run(run_dir, name, identity)  # before Ray starts
    with ray_session(), sigterm_as_interrupt():  # `ray job stop` ends it as Ctrl-C does (after ray.init's own handler)
        use_gpu = gpus_each(gpus, workers, "workers") > 0
        _record_run(run_dir, identity)  # once nothing more can refuse the run
        fm = FoundationModel.load(config.clip_model, config.clip_pretrained, seed=config.seed)
        if fm.pretrained is None:  # random CLIP (tests): workers load it from a file like any checkpoint
            weights = run_dir / "foundation.pt"
            if not weights.exists():  # atomic: a run killed mid-write must not leave a torn file to resume from
                save_tensor_file(fm.state_dict(), weights)
            config = config.replace(clip_pretrained=str(weights))
            fm = FoundationModel.load(config.clip_model, config.clip_pretrained)
        common = {"seed": config.seed, "actors": feature_actors, "gpus_per_actor": 1.0 if use_gpu else 0.0,
                  "cache_dir": run_dir / "features"}  # fmt: skip
        seen = seen_dataset(split)
        feats = ray_extract_features(fm, seen, n_views=config.n_views, **common)
        config, centring = decide_centring(config, {d: f.clean for d, f in feats.items()})
        folds, why_none = plan_folds(seen, config, val_fraction, split.vocabulary)
        selection, runs = None, []
        if folds:
            runs, thresholds = _ray_folds(config, fm, feats, folds, run_dir, split.classes)
            config = config.replace(confidence_threshold=thresholds["chosen"])
            selection = select_on_folds(runs, fm, config, feats, thresholds)
        loop_config = {"features": ray.put(feats), "val_features": None, "clair": config.to_dict(),
                       "classes": split.classes, "use_gpu": use_gpu,
                       "until": config.epochs}  # fmt: skip
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config=loop_config,
            scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu),
            # same name + storage_path = resume: workers get the last checkpoint via get_checkpoint()
            # the last two epochs' checkpoints: each holds the memory banks (images x dim), and a
            # run that kept all 60 would fill a shared --storage-path for nothing
            run_config=RunConfig(name=name, storage_path=str(Path(storage_path).resolve()),
                                 checkpoint_config=CheckpointConfig(num_to_keep=2)),  # fmt: skip
        )
        result = trainer.fit()
        if result.error:
            raise result.error
        with result.checkpoint.as_directory() as d:
            trained = ClairModel.load(Path(d) / "model")
            progress = json.loads((Path(d) / "progress.json").read_text())
        model = choose(trained, split, selection, {**progress, "centring": centring}, feats, why_none=why_none, runs=runs)
        out = model.save(out)
        log.info("zero-shot classes held out of training: %s", split.unseen.classes)
        return TrainResult(out, dict(result.metrics), progress["history"], model.record)
