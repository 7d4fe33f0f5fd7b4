"""Distributed CLAIR training: ``ray job submit -- python ray_jobs/train.py --data DIR``.

The frozen-CLIP features are computed once on a Ray Data actor pool and cached under
``--storage-path/--name``; a Ray Train TorchTrainer then runs the same ClairTrainer as
single-process training on every worker (head in DDP, batch slices per rank, memory banks kept
in sync). Before that, the model selection trains one model per rotating fold of the seen classes
(Ray tasks, side by side; cached under the run for a resume) and picks, on their held-out classes,
the epoch and per query domain whether the head beats raw CLIP by more than the fold-to-fold
spread. Each epoch of the final training (every seen class, up to that epoch) reports every loss
term and pseudo-label confidence statistics, and checkpoints trainer state and the model.
Re-running with the same --name resumes (other settings or images under it are refused). The model with the per-domain decision is written to
--out (with a warning naming the domains that keep raw CLIP), ready for
``clair_vec.index(..., model=OUT)``.
Without CLIP weights on the machine, ``clair-vec bootstrap-clip`` makes a stand-in.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    class Fmt(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
        pass

    p = argparse.ArgumentParser(description=__doc__, formatter_class=Fmt)
    p.add_argument("--data", required=True, help="root/<domain>/<class>/<image>, optional {seen,unseen}_classes.txt; "
                                                 "with --classes, root/<domain>/<image> unlabeled")
    p.add_argument("--classes", default=None, metavar="FILE",
                   help="class names, one a line: train from unlabeled images (CLIP's zero-shot labels replace labels)")
    p.add_argument("--validation", default=None, metavar="ROOT",
                   help="with --classes: a small labeled folder root/<domain>/<class>/<image> the selection validates on")
    p.add_argument("--out", default="runs/clair", help="where the final model directory is written")
    p.add_argument("--storage-path", default="runs/ray", help="Ray Train storage (shared by all nodes on a cluster)")
    p.add_argument("--name", default="clair", help="run name; re-running with the same name resumes")
    p.add_argument("--workers", type=int, default=1, help="Ray Train workers (one GPU each with --gpus yes/auto)")
    p.add_argument("--gpus", choices=["auto", "yes", "no"], default="auto", help="auto: one GPU per worker if the cluster has them")
    p.add_argument("--feature-actors", type=int, default=1, help="Ray Data actors for the CLIP forward pass")
    p.add_argument("--val-fraction", type=float, default=0.3,
                   help="share of seen classes each selection fold holds out (0: no selection, the head ships unchecked)")
    p.add_argument("--clip-model", default="ViT-B-32", help="open_clip architecture")
    p.add_argument("--clip-pretrained", default="openai", help="open_clip tag or local checkpoint; 'none' = random")
    p.add_argument("--pivot", default="photo", help="gallery domain every other domain maps into")
    p.add_argument("--epochs", type=int, default=60, help="training epochs")
    p.add_argument("--batch-size", type=int, default=256, help="images per step over all workers, split evenly over domains")
    p.add_argument("--seed", type=int, default=0, help="seeds the class split (without split files) and training")
    p.add_argument("--set", action="append", metavar="FIELD=VALUE", help="any ClairConfig field, e.g. lr=0.003")
    p.add_argument("--json", action="store_true", help="print each epoch and the final metrics as JSON lines")
    p.add_argument("-v", "--verbose", action="store_true", help="print the traceback of a failure")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from clair_vec.method.config import TRAINING_FLAGS, ClairConfig, parse_overrides
    from clair_vec.training.ray_train import run_training

    pretrained = None if args.clip_pretrained.lower() == "none" else args.clip_pretrained
    try:
        config = ClairConfig(clip_model=args.clip_model, clip_pretrained=pretrained, pivot_domain=args.pivot,
                             epochs=args.epochs, batch_size=args.batch_size, seed=args.seed,
                             **parse_overrides(args.set, TRAINING_FLAGS))  # fmt: skip
        result = run_training(args.data, out=args.out, config=config, storage_path=args.storage_path, name=args.name,
                              workers=args.workers, gpus=args.gpus, val_fraction=args.val_fraction,
                              feature_actors=args.feature_actors, classes=args.classes, validation=args.validation)  # fmt: skip
    except (Exception, KeyboardInterrupt) as exc:  # noqa: BLE001 - Ray wraps a worker's error in pages of its own
        from clair_vec.ray_runtime import report_job_failure

        return report_job_failure(exc, "train.py", args.verbose)
    for epoch in result.history:
        print(json.dumps({k: v for k, v in epoch.items() if isinstance(v, (int, float))}))
    if args.json:
        print(json.dumps({"metrics": {k: v for k, v in result.metrics.items() if isinstance(v, (int, float))}}))
    r = result.record
    if r.get("warning"):
        print(f"train.py: warning: {r['warning']}", file=sys.stderr)
    held = f"trained from class names only ({len(r['seen_classes'])} classes)" if r.get("supervision") else \
        f"held out for zero-shot evaluation: {r['unseen_classes']}"
    print(f"model written to {result.model_dir}: shipped {r['shipped']} ({r['reason']}); {held}")
    return 0


if __name__ == "__main__":
    from clair_vec.ray_runtime import exit_process, leave_through_exit_process

    leave_through_exit_process()
    exit_process(main())  # a Ray driver ran here: see clair_vec.ray_runtime
