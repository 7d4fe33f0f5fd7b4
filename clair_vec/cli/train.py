"""``clair-vec train``, ``demo`` and ``bootstrap-clip``: making a model."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from clair_vec.cli.common import backend_args, device_arg
from clair_vec.errors import ClairVecError


def _train_config(a: argparse.Namespace, flags: dict[str, str] | None = None):
    """The config from a training command's flags and --set; ``flags``: the fields its flags (or
    something else) set, which --set refuses (default: train's)."""
    from clair_vec.method.config import TRAINING_FLAGS, ClairConfig, parse_overrides

    pretrained = None if str(a.clip_pretrained).lower() == "none" else a.clip_pretrained
    try:
        return ClairConfig(clip_model=a.clip_model, clip_pretrained=pretrained, pivot_domain=a.pivot, epochs=a.epochs,
                           batch_size=a.batch_size, seed=a.seed, **parse_overrides(a.set, flags or TRAINING_FLAGS))  # fmt: skip
    except (TypeError, ValueError) as exc:
        raise ClairVecError(str(exc)) from exc


def cmd_train(a: argparse.Namespace) -> None:
    from clair_vec.training.job import check_output, plan_training, train_local

    cfg = _train_config(a)
    check_output(a.out, a.data, cache_dir=a.cache_dir, validation=a.validation, classes=a.classes)
    split = plan_training(Path(a.data), cfg.seed, a.val_fraction, classes=a.classes, validation=a.validation)
    on_epoch = (lambda s: print(json.dumps(s.as_dict()), flush=True)) if a.json else (lambda s: print(epoch_line(s, cfg.epochs), flush=True))
    model = train_local(a.data, cfg, split=split, val_fraction=a.val_fraction, cache_dir=a.cache_dir, on_epoch=on_epoch,
                        device=a.device)  # fmt: skip
    path = model.save(a.out)
    r = model.record
    from clair_vec.evaluation.report import filter_summary

    if a.json:
        print(json.dumps({"saved": str(path), "shipped": r["shipped"], "reason": r["reason"], "warning": r.get("warning"),
                          "filter": filter_summary(r), "centring": r.get("centring"),
                          "unseen_classes": list(split.unseen.classes)}))  # fmt: skip
        return
    if filter_summary(r):
        print(f"pseudo-label confidence filter: {filter_summary(r)}")
    # the warning is the reason when raw CLIP ships: say it once, on stderr where warnings go
    reason = "" if r.get("warning") == r["reason"] else f" ({r['reason']})"
    held = (f"held out for zero-shot evaluation: {list(split.unseen.classes)}" if split.vocabulary is None else
            f"trained from {len(split.train)} unlabeled images and {len(split.classes)} class names")  # fmt: skip
    print(f"saved {path}: shipped {r['shipped']}{reason}; {held}")
    if r.get("warning"):
        print(f"clair-vec: warning: {r['warning']}", file=sys.stderr)


def epoch_line(stats, epochs: int) -> str:
    """One short line per epoch; the full record stays available with --json."""
    d = stats.as_dict()
    val = next((f"  val mAP@200 {v:.3f}" for k, v in d.items() if k.startswith("val_mAP") and isinstance(v, float)), "")
    return (f"epoch {stats.epoch + 1}/{epochs}  loss {stats.loss:.4f}  pseudo-labels kept {stats.kept_fraction:.0%}"
            f"{val}  {stats.seconds:.1f}s")  # fmt: skip


def cmd_demo(a: argparse.Namespace) -> None:
    from clair_vec.datasets.web_pool import parse_mix
    from clair_vec.demo import run_demo

    run_demo(a.workdir, data=a.data, backend=a.backend, uri=a.uri, epochs=a.epochs, per_class=a.per_class,
             bootstrap_steps=a.bootstrap_steps, clip_model=a.clip_model, clip_pretrained=a.clip_pretrained,
             batch_size=a.batch_size, seed=a.seed, web_mix=parse_mix(a.mix) if a.mix else None, device=a.device,
             threads=a.threads)  # fmt: skip


def cmd_bootstrap_clip(a: argparse.Namespace) -> None:
    from clair_vec.datasets.folders import scan_folder
    from clair_vec.datasets.web_pool import domain_weights, parse_mix
    from clair_vec.training.bootstrap_clip import bootstrap_clip

    root = Path(a.data)
    split_files = [f for f in ("seen_classes.txt", "unseen_classes.txt") if (root / f).is_file()]
    if split_files:  # a CLAIR dataset, not a pool: pretraining on it would show CLIP the images CLAIR is scored on
        raise ClairVecError(f"{root} has {split_files[0]}: it looks like a dataset CLAIR trains and is evaluated on, and "
                            "the stand-in CLIP must never see those images. Give --data a separate pool of images of "
                            "every class (python -m clair_vec.datasets.real pacs_mini OUT --web-share 0.3 lays one out "
                            "beside the data).")  # fmt: skip
    pool = scan_folder(root)
    mix = parse_mix(a.mix) if a.mix else None
    out = bootstrap_clip(pool, a.out, arch=a.clip_model, steps=a.steps, batch_size=a.batch_size, seed=a.seed, mix=mix,
                         device=a.device)  # fmt: skip
    shares = ", ".join(f"{d} {w:.0%}" for d, w in domain_weights(pool.domains, mix).items())
    print(f"wrote {out}: a {a.clip_model} CLIP trained on {len(pool)} pool images of {len(pool.classes)} classes "
          f"(sampled {shares}); use it with --clip-model {a.clip_model} --clip-pretrained {out}")  # fmt: skip


def training_args(sp: argparse.ArgumentParser, *, clip_model: str, clip_pretrained: str | None, epochs: int,
                  batch_size: int) -> None:  # fmt: skip
    sp.add_argument("--clip-model", default=clip_model, help="open_clip architecture")
    sp.add_argument("--clip-pretrained", default=clip_pretrained,
                    help="open_clip pretrained tag, or a local .pt/.safetensors checkpoint file; 'none' = random weights")
    sp.add_argument("--epochs", type=int, default=epochs, help="training epochs")
    sp.add_argument("--batch-size", type=int, default=batch_size, help="images per step, split evenly over domains")
    sp.add_argument("--seed", type=int, default=0, help="seeds the class split (without split files) and training")
    device_arg(sp)


def add_commands(add) -> None:
    t = add("train", cmd_train, "train CLAIR on root/<domain>/<class>/<image> (seen classes only)")
    t.add_argument("--data", required=True, help="dataset root/<domain>/<class>/<image>, optional seen_classes.txt / "
                                                 "unseen_classes.txt; with --classes, root/<domain>/<image> unlabeled")
    t.add_argument("--classes", default=None, metavar="FILE",
                   help="class names, one a line: train from unlabeled images, CLIP's zero-shot labels replacing labels")
    t.add_argument("--validation", default=None, metavar="ROOT",
                   help="with --classes: a small labeled folder root/<domain>/<class>/<image> the selection's folds "
                        "validate on (without it, and without class folders in --data, raw CLIP ships)")
    t.add_argument("--out", required=True, help="checkpoint directory to write")
    training_args(t, clip_model="ViT-B-32", clip_pretrained="openai", epochs=60, batch_size=256)
    t.add_argument("--pivot", default="photo", help="gallery domain every other domain maps into")
    t.add_argument("--val-fraction", type=float, default=0.3,
                   help="share of seen classes each validation fold holds out (at least 2; each fold a random class set) to "
                        "decide, per query domain, what beats raw CLIP beyond the folds' noise; 0: ship unchecked")
    t.add_argument("--cache-dir", default=None, help="reuse CLIP features across runs (default: no cache)")
    t.add_argument("--set", action="append", metavar="FIELD=VALUE", help="any ClairConfig field, e.g. inter_domain=prototype")
    t.add_argument("--json", action="store_true", help="print each epoch's full record and the result as JSON lines")

    d = add("demo", cmd_demo, "offline end-to-end run on generated data: bootstrap CLIP, train, index, search")
    d.add_argument("--workdir", default="clair_demo", help="where data, model, store and results go")
    d.add_argument("--data", default=None, help="use this dataset instead of generating one")
    # the demo's defaults differ from train's on purpose: a tiny CLIP bootstrapped on ~1,400 generated
    # images needs more, smaller steps than ViT-B-32 on a real dataset
    training_args(d, clip_model="clair-tiny", clip_pretrained=None, epochs=60, batch_size=64)
    d.add_argument("--per-class", type=int, default=40, help="generated images per class and domain")
    d.add_argument("--bootstrap-steps", type=int, default=1200, help="steps of the stand-in CLIP bootstrap")
    d.add_argument("--mix", default=None, metavar="DOMAIN=SHARE,...",
                   help="domain mix of the stand-in CLIP's web pool (default photo=0.8, the other domains share the rest)")
    d.add_argument("--threads", type=int, default=None,
                   help="torch threads (None: the cores free now). A seed gives the same numbers at the same thread "
                        "count: torch's sums, and so the stand-in CLIP, depend on it")  # fmt: skip
    backend_args(d)
    d.set_defaults(backend="milvus")

    bc = add("bootstrap-clip", cmd_bootstrap_clip,
             "train a small stand-in CLIP on a pool of web-like images, for machines without CLIP weights")
    bc.add_argument("--data", required=True,
                    help="pool root/<domain>/<class>/<image>: every class, and no image CLAIR will train or be evaluated on")
    bc.add_argument("--mix", default=None, metavar="DOMAIN=SHARE,...",
                    help="how often each domain is sampled (default photo=0.8, or real=0.8; the other domains share the rest)")
    bc.add_argument("--out", required=True, help="checkpoint file to write (.pt)")
    bc.add_argument("--clip-model", default="clair-tiny", help="open_clip architecture to train from scratch")
    bc.add_argument("--steps", type=int, default=1200, help="optimisation steps")
    bc.add_argument("--batch-size", type=int, default=64, help="images per step")
    bc.add_argument("--seed", type=int, default=0, help="seeds the sampling and training")
    device_arg(bc)
