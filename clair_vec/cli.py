"""``clair-vec``: train, index, search, evaluate, serve, demo, bootstrap-clip, backends."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from clair_vec.errors import ClairVecError

EPILOG = "Every option's default is shown. Errors are printed as 'clair-vec: error: ...' with exit status 2."


def _filters(items: list[str] | None) -> dict[str, list[str]] | None:
    if not items:
        return None
    out: dict[str, list[str]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ClairVecError(f"--filter {item!r} must look like key=value (e.g. domain=photo)")
        out.setdefault(key, []).append(value)
    return out


def _train_config(a: argparse.Namespace):
    from clair_vec.method.config import ClairConfig, parse_overrides

    pretrained = None if str(a.clip_pretrained).lower() == "none" else a.clip_pretrained
    try:
        return ClairConfig(clip_model=a.clip_model, clip_pretrained=pretrained, pivot_domain=a.pivot, epochs=a.epochs,
                           batch_size=a.batch_size, seed=a.seed, **parse_overrides(a.set))  # fmt: skip
    except (TypeError, ValueError) as exc:
        raise ClairVecError(str(exc)) from exc


def cmd_train(a: argparse.Namespace) -> None:
    from clair_vec.datasets.folders import plan_split
    from clair_vec.training.job import train_local

    cfg = _train_config(a)
    split = plan_split(Path(a.data), cfg.seed, a.val_fraction)
    model = train_local(a.data, cfg, split=split, val_fraction=a.val_fraction, cache_dir=a.cache_dir,
                        on_epoch=lambda s: print(json.dumps(s.as_dict()), flush=True))  # fmt: skip
    path = model.save(a.out)
    r = model.record
    if r.get("warning"):
        print(f"clair-vec: warning: {r['warning']}", file=sys.stderr)
    print(f"saved {path}: shipped {r['shipped']} ({r['reason']}); held out for zero-shot evaluation: {split.unseen.classes}")


def cmd_index(a: argparse.Namespace) -> None:
    from clair_vec.retrieval.retriever import Retriever

    with Retriever(a.model, backend=a.backend, uri=a.uri) as r:
        s = r.index(a.collection, a.images, domain=a.domain, label_from_folder=a.label_from_folder, labels=a.labels,
                    prune_missing=a.prune, batch_size=a.batch_size)  # fmt: skip
    print(json.dumps(s.as_dict()))


def cmd_search(a: argparse.Namespace) -> None:
    from clair_vec.retrieval.retriever import Retriever

    with Retriever(a.model, backend=a.backend, uri=a.uri) as r:
        hits = r.search(a.collection, a.images, domain=a.domain, top_k=a.top_k, filter=_filters(a.filter))
    for query, row in zip(a.images, hits, strict=True):
        print(json.dumps({"query": query, "hits": [{"id": h.id, "score": round(h.score, 5), **h.payload} for h in row]}))


def cmd_evaluate(a: argparse.Namespace) -> None:
    from clair_vec.evaluation.zero_shot import evaluate

    result = evaluate(a.model, a.data, query_domains=a.query_domain, k=a.k, report_dir=a.report, samples=a.samples, seed=a.seed)
    for row in result["rows"]:
        print(json.dumps(row))
    if a.report:
        print(f"report written to {Path(a.report) / 'index.html'}", file=sys.stderr)


def cmd_serve(a: argparse.Namespace) -> None:
    from clair_vec.service.app import serve

    serve(a.model, a.collection, backend=a.backend, uri=a.uri, host=a.host, port=a.port, ray=a.ray, replicas=a.replicas,
          gallery_roots=a.gallery_root, max_upload_mb=a.max_upload_mb)  # fmt: skip


def cmd_demo(a: argparse.Namespace) -> None:
    from clair_vec.demo import run_demo

    run_demo(a.workdir, data=a.data, backend=a.backend, uri=a.uri, epochs=a.epochs, per_class=a.per_class,
             bootstrap_steps=a.bootstrap_steps, clip_model=a.clip_model, clip_pretrained=a.clip_pretrained,
             batch_size=a.batch_size, seed=a.seed)  # fmt: skip


def cmd_bootstrap_clip(a: argparse.Namespace) -> None:
    from clair_vec.datasets.folders import plan_split
    from clair_vec.training.bootstrap_clip import bootstrap_clip

    split = plan_split(Path(a.data), a.seed, 0.0)
    out = bootstrap_clip(split.train, a.out, arch=a.clip_model, steps=a.steps, batch_size=a.batch_size, seed=a.seed)
    print(f"wrote {out}: a {a.clip_model} CLIP trained on the seen classes {split.train.classes} only; "
          f"use it with --clip-model {a.clip_model} --clip-pretrained {out}")  # fmt: skip


def cmd_backends(a: argparse.Namespace) -> None:
    from clair_vec.store.plugins import plugins

    found = plugins()
    if a.json:
        print(json.dumps([vars(p) for p in found], indent=2))
        return
    rows = [("BACKEND", "PLUGIN", "DISTRIBUTION", "VERSION", "HOOKS")]
    for p in found:
        if p.loaded:
            for name in p.backends or ["-"]:
                rows.append((name, p.name, p.distribution or f"({p.source})", p.version or "-", ", ".join(p.hooks)))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:4], widths, strict=True)) + "  " + r[4])
    broken = [p for p in found if not p.loaded]
    if broken:
        print("\nplugins that failed to load (their backends are unavailable; the others work):")
        for p in broken:
            where = f"{p.distribution} {p.version}" if p.distribution else p.source
            print(f"  {p.name} ({where}): {p.error}")


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.ArgumentDefaultsHelpFormatter
    p = argparse.ArgumentParser(prog="clair-vec", description=__doc__, epilog=EPILOG, formatter_class=fmt)
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func, helptext: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=helptext, description=helptext, formatter_class=fmt, epilog=EPILOG)
        sp.set_defaults(func=func)
        return sp

    def backend_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--backend", default=None, help="milvus, qdrant, or an installed plugin's name "
                        "(None: $CLAIR_VEC_BACKEND or milvus)")  # fmt: skip
        sp.add_argument("--uri", default=None, help="Milvus Lite store (*.db) / Qdrant Edge directory, or a server URL "
                        "(None: the backend's embedded default in the current directory)")  # fmt: skip

    def model_arg(sp: argparse.ArgumentParser, required: bool = False) -> None:
        sp.add_argument("--model", default=None, required=required, help="checkpoint directory written by train "
                        "(None: $CLAIR_VEC_MODEL)")  # fmt: skip

    def training_args(sp: argparse.ArgumentParser, *, clip_model: str, clip_pretrained: str | None, epochs: int,
                      batch_size: int) -> None:  # fmt: skip
        sp.add_argument("--clip-model", default=clip_model, help="open_clip architecture")
        sp.add_argument("--clip-pretrained", default=clip_pretrained,
                        help="open_clip pretrained tag, or a local .pt/.safetensors checkpoint file; 'none' = random weights")
        sp.add_argument("--epochs", type=int, default=epochs, help="training epochs")
        sp.add_argument("--batch-size", type=int, default=batch_size, help="images per step, split evenly over domains")
        sp.add_argument("--seed", type=int, default=0, help="seeds the class split (without split files) and training")

    t = add("train", cmd_train, "train CLAIR on root/<domain>/<class>/<image> (seen classes only)")
    t.add_argument("--data", required=True, help="dataset root; optional seen_classes.txt / unseen_classes.txt")
    t.add_argument("--out", required=True, help="checkpoint directory to write")
    training_args(t, clip_model="ViT-B-32", clip_pretrained="openai", epochs=20, batch_size=256)
    t.add_argument("--pivot", default="photo", help="gallery domain every other domain maps into")
    t.add_argument("--val-fraction", type=float, default=0.1,
                   help="share of seen classes held out to pick the best epoch and to check the head beats raw CLIP")
    t.add_argument("--cache-dir", default=None, help="reuse CLIP features across runs (None: no cache)")
    t.add_argument("--set", action="append", metavar="FIELD=VALUE", help="any ClairConfig field, e.g. inter_domain=prototype")

    ix = add("index", cmd_index, "embed images into a collection (creating it), skipping what is stored")
    model_arg(ix)
    ix.add_argument("--collection", required=True, help="collection name: letters, digits, underscores")
    ix.add_argument("--domain", default=None, help="domain of the images (None: the model's gallery domain)")
    ix.add_argument("images", nargs="+", help="image files or folders (searched recursively)")
    backend_args(ix)
    ix.add_argument("--label-from-folder", action="store_true", help="store each image's folder name as its label")
    ix.add_argument("--labels", default=None, metavar="FILE",
                    help="label vocabulary, one a line: tag each image zero-shot over it (None: store no tag)")
    ix.add_argument("--prune", action="store_true", help="then remove records of files under these folders that no longer exist")
    ix.add_argument("--batch-size", type=int, default=64, help="images per write")

    s = add("search", cmd_search, "query a collection with images of any domain; prints one JSON line per query")
    model_arg(s)
    s.add_argument("--collection", required=True, help="collection to search")
    s.add_argument("--domain", required=True, help="domain of the query images (e.g. sketch)")
    s.add_argument("images", nargs="+", help="query image files")
    backend_args(s)
    s.add_argument("--top-k", type=int, default=10, help="hits per query")
    s.add_argument("--filter", action="append", metavar="KEY=VALUE",
                   help="domain/label/path/pseudo_label=VALUE; repeat a key for OR, different keys AND")

    e = add("evaluate", cmd_evaluate, "mAP/Prec of raw CLIP vs the model on the zero-shot classes it held out")
    model_arg(e, required=True)
    e.add_argument("--data", required=True, help="the dataset root the model was trained from")
    e.add_argument("--query-domain", action="append", help="query domain (repeatable; None: every non-gallery domain)")
    e.add_argument("--k", type=int, default=200, help="cut-off of mAP@k and P@k")
    e.add_argument("--report", default=None, metavar="DIR", help="also write a self-contained HTML report to DIR")
    e.add_argument("--samples", type=int, default=6, help="sample queries per domain shown in the report")
    e.add_argument("--seed", type=int, default=0, help="seeds the report's choice of sample queries")

    sv = add("serve", cmd_serve, "HTTP search service and drawing page for one collection")
    model_arg(sv)
    sv.add_argument("--collection", required=True, help="collection to serve (must exist)")
    backend_args(sv)
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on")
    sv.add_argument("--port", type=int, default=8000, help="port to listen on")
    sv.add_argument("--gallery-root", action="append", default=None, metavar="DIR",
                    help="serve thumbnails only of files under DIR (repeatable; None: any indexed file whose bytes still match)")
    sv.add_argument("--max-upload-mb", type=float, default=10.0, help="largest query image accepted")
    sv.add_argument("--ray", action="store_true", help="deploy on Ray Serve instead of one uvicorn process")
    sv.add_argument("--replicas", type=int, default=1, help="Ray Serve replicas (needs a server backend when > 1)")

    d = add("demo", cmd_demo, "offline end-to-end run on generated data: bootstrap CLIP, train, index, search")
    d.add_argument("--workdir", default="clair_demo", help="where data, model, store and results go")
    d.add_argument("--data", default=None, help="use this dataset instead of generating one")
    # the demo's defaults differ from train's on purpose: a tiny CLIP bootstrapped on ~1,400 generated
    # images needs more, smaller steps than ViT-B-32 on a real dataset
    training_args(d, clip_model="clair-tiny", clip_pretrained=None, epochs=30, batch_size=64)
    d.add_argument("--per-class", type=int, default=60, help="generated images per class and domain")
    d.add_argument("--bootstrap-steps", type=int, default=1200, help="steps of the stand-in CLIP bootstrap")
    backend_args(d)
    d.set_defaults(backend="milvus")

    bc = add("bootstrap-clip", cmd_bootstrap_clip,
             "train a small stand-in CLIP on a dataset's seen classes, for machines without CLIP weights")
    bc.add_argument("--data", required=True, help="dataset root (unseen classes are never used)")
    bc.add_argument("--out", required=True, help="checkpoint file to write (.pt)")
    bc.add_argument("--clip-model", default="clair-tiny", help="open_clip architecture to train from scratch")
    bc.add_argument("--steps", type=int, default=1200, help="optimisation steps")
    bc.add_argument("--batch-size", type=int, default=64, help="images per step")
    bc.add_argument("--seed", type=int, default=0, help="seeds the class split and training")

    b = add("backends", cmd_backends, "list backend plugins: distribution, version, hooks, and any that failed to load")
    b.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        args.func(args)
        code = 0
    except (ClairVecError, ValueError, FileNotFoundError) as exc:
        print(f"clair-vec: error: {exc}", file=sys.stderr)
        code = 2
    from clair_vec.ray_runtime import exit_process, started_here

    if started_here():  # `serve --ray` ran a Ray driver here: leave without the interpreter's teardown
        exit_process(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
