"""Distributed CLAIR training on Ray Train: ``ray job submit -- python ray_jobs/train.py --data DIR``.

The driver computes frozen-CLIP features once (they are shared by every worker), then a
TorchTrainer runs :class:`clair_vec.trainer.ClairTrainer` on each worker: the head is wrapped
in DDP by ``prepare_model``, each worker takes its slice of every batch, memory banks are kept
identical with all_gather and prompt gradients are averaged with all_reduce. Each epoch reports
every loss term and pseudo-label statistics and checkpoints (trainer state + deployable model) to
``--storage-path/--name``; re-running with the same name resumes. The final model directory is
copied to ``--out``, loadable by ``clair_vec.index``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="root/<domain>/<class>/<image> with optional {seen,unseen}_classes.txt")
    p.add_argument("--out", default="runs/clair", help="where the final model directory is copied")
    p.add_argument("--storage-path", default=str(Path("runs/ray").resolve()))
    p.add_argument("--name", default="clair", help="run name; re-running with the same name resumes")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--gpus", choices=["auto", "yes", "no"], default="auto")
    p.add_argument("--clip-model", default="ViT-B-32")
    p.add_argument("--clip-pretrained", default="openai")
    p.add_argument("--pivot", default="photo")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def check_resources(args: argparse.Namespace, cluster_gpus: float) -> bool:
    """Decide GPU use, failing before any worker starts when the request cannot be met."""
    if not Path(args.data).is_dir():
        sys.exit(f"train.py: error: --data {args.data!r} does not exist (expected root/<domain>/<class>/<image>)")
    if args.workers < 1:
        sys.exit("train.py: error: --workers must be >= 1")
    use_gpu = args.gpus == "yes" or (args.gpus == "auto" and cluster_gpus >= args.workers)
    if args.gpus == "yes" and cluster_gpus < args.workers:
        sys.exit(f"train.py: error: {args.workers} GPU workers requested but the cluster has {cluster_gpus:g} GPUs; "
                 "lower --workers or pass --gpus no")  # fmt: skip
    return use_gpu


def train_loop_per_worker(config: dict) -> None:
    import ray.train
    import torch
    import torch.distributed as dist
    from ray.train.torch import prepare_model

    from clair_vec.config import ClairConfig
    from clair_vec.features import DomainFeatures
    from clair_vec.foundation import FoundationModel
    from clair_vec.trainer import ClairTrainer

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    feats = {d: DomainFeatures(**v) for d, v in torch.load(config["features"], weights_only=False).items()}
    cfg = ClairConfig.from_dict(config["clair"])
    fm = FoundationModel.load(cfg.clip_model, config["foundation"])

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

    trainer = ClairTrainer(cfg, fm, config["classes"], feats, rank=rank, world_size=world,
                           wrap_head=prepare_model, all_gather=gather, all_reduce_mean=mean, progress=False)  # fmt: skip
    start = ray.train.get_checkpoint()
    if start:
        with start.as_directory() as d:
            trainer.load_state_dict(torch.load(Path(d) / "trainer.pt", weights_only=False))
    while trainer.epoch < cfg.epochs:
        stats = trainer.train_epoch()
        metrics = {k: v for k, v in stats.as_dict().items() if isinstance(v, (int, float))}
        with tempfile.TemporaryDirectory() as d:
            checkpoint = None
            if rank == 0:
                torch.save(trainer.state_dict(), Path(d) / "trainer.pt")
                trainer.build_model().save(Path(d) / "model")
                checkpoint = ray.train.Checkpoint.from_directory(d)
            ray.train.report(metrics, checkpoint=checkpoint)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import ray
    import torch
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from clair_vec.config import ClairConfig
    from clair_vec.demo import split_dataset
    from clair_vec.features import extract_features
    from clair_vec.foundation import FoundationModel

    if not Path(args.data).is_dir():
        check_resources(args, 0)
    ray.init(ignore_reinit_error=True)
    use_gpu = check_resources(args, ray.cluster_resources().get("GPU", 0))
    seen, unseen = split_dataset(Path(args.data), args.seed)
    cfg = ClairConfig(clip_model=args.clip_model, clip_pretrained=args.clip_pretrained, pivot_domain=args.pivot,
                      epochs=args.epochs, batch_size=args.batch_size, seed=args.seed)  # fmt: skip
    fm = FoundationModel.load(args.clip_model, args.clip_pretrained, "cuda" if use_gpu else "cpu")
    run_dir = Path(args.storage_path) / args.name
    run_dir.mkdir(parents=True, exist_ok=True)
    feats = extract_features(fm, seen, n_views=cfg.n_views, seed=args.seed, cache_dir=run_dir / "features")
    feature_file = run_dir / "features.pt"
    torch.save({d: vars(f) for d, f in feats.items()}, feature_file)
    foundation = args.clip_pretrained
    if foundation is None:  # random CLIP: ship its weights to the workers as a local checkpoint
        foundation = str(run_dir / "foundation.pt")
        torch.save(fm.state_dict(), foundation)
    loop_config = {"features": str(feature_file), "clair": cfg.to_dict(), "classes": seen.classes, "foundation": foundation}
    run_config = RunConfig(name=args.name, storage_path=args.storage_path)
    scaling = ScalingConfig(num_workers=args.workers, use_gpu=use_gpu)
    # Ray Train v2 resumes a run by name: the same name + storage_path hands the workers the
    # latest checkpoint through ray.train.get_checkpoint()
    trainer = TorchTrainer(train_loop_per_worker, train_loop_config=loop_config, scaling_config=scaling, run_config=run_config)
    result = trainer.fit()
    if result.error:
        raise result.error
    with result.checkpoint.as_directory() as d:
        out = Path(args.out)
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(Path(d) / "model", out)
    print(f"final metrics: {result.metrics}")
    print(f"model written to {out} (zero-shot classes held out: {unseen.classes})")


if __name__ == "__main__":
    main()
