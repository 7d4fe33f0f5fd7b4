"""``clair-vec``: train, index, search, evaluate, demo, backends."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from .errors import ClairVecError


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


def cmd_train(a: argparse.Namespace) -> None:
    from .config import ClairConfig
    from .data import split_dataset
    from .features import extract_features
    from .foundation import FoundationModel
    from .trainer import ClairTrainer

    seen, unseen = split_dataset(Path(a.data), a.seed)
    cfg = ClairConfig(clip_model=a.clip_model, clip_pretrained=a.clip_pretrained, pivot_domain=a.pivot,
                      epochs=a.epochs, batch_size=a.batch_size, seed=a.seed)  # fmt: skip
    fm = FoundationModel.load(a.clip_model, a.clip_pretrained)
    feats = extract_features(fm, seen, n_views=cfg.n_views, seed=a.seed, cache_dir=a.cache_dir)
    trainer = ClairTrainer(cfg, fm, seen.classes, feats)
    trainer.fit(lambda s: print(json.dumps(s.as_dict())))
    path = trainer.build_model().save(a.out)
    print(f"saved {path} (held out for zero-shot evaluation: {unseen.classes})")


def cmd_index(a: argparse.Namespace) -> None:
    from .api import index

    s = index(a.collection, a.images, domain=a.domain, backend=a.backend, uri=a.uri, model=a.model,
              label_from_folder=a.label_from_folder)  # fmt: skip
    print(json.dumps({"collection": s.collection, "backend": s.backend, "indexed": s.indexed,
                      "already_present": s.already_present, "skipped": s.skipped}))  # fmt: skip


def cmd_search(a: argparse.Namespace) -> None:
    from .api import search

    hits = search(a.collection, a.images, domain=a.domain, top_k=a.top_k, filter=_filters(a.filter),
                  backend=a.backend, uri=a.uri, model=a.model)  # fmt: skip
    for query, row in zip(a.images, hits, strict=True):
        print(json.dumps({"query": query, "hits": [{"id": h.id, "score": round(h.score, 5), **h.payload} for h in row]}))


def cmd_evaluate(a: argparse.Namespace) -> None:
    from .api import load_model
    from .data import split_dataset
    from .features import extract_features
    from .metrics import retrieval_metrics

    m = load_model(a.model)
    _, unseen = split_dataset(Path(a.data))
    feats = extract_features(m.foundation, unseen, n_views=0)
    gallery = feats[m.pivot]
    g = m.embed_features(gallery.clean, m.pivot).numpy()
    for q in a.query_domain or [d for d in feats if d != m.pivot]:
        out = {"query": q, "gallery": m.pivot, "classes": unseen.classes}
        for name, fq, fg in (("raw_clip", feats[q].clean.numpy(), gallery.clean.numpy()),
                             ("clair", m.embed_features(feats[q].clean, q).numpy(), g)):  # fmt: skip
            out[name] = retrieval_metrics(fq, feats[q].labels, fg, gallery.labels)
        print(json.dumps(out))


def cmd_demo(a: argparse.Namespace) -> None:
    from .demo import run_demo

    run_demo(a.workdir, data=a.data, backend=a.backend, uri=a.uri, epochs=a.epochs, per_class=a.per_class,
             bootstrap_steps=a.bootstrap_steps, clip_model=a.clip_model, clip_pretrained=a.clip_pretrained)  # fmt: skip


def cmd_backends(a: argparse.Namespace) -> None:
    from .plugin_manager import backends

    for name, (_, plugin) in sorted(backends().items()):
        print(f"{name}\t(plugin {plugin})")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="clair-vec", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

    def backend_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--backend", default=None, help="milvus (default), qdrant, or an installed plugin's name")
        sp.add_argument("--uri", default=None, help="Milvus Lite file / Qdrant directory, or a server URL")

    t = sub.add_parser("train", help="train CLAIR on root/<domain>/<class>/<image> (seen classes only)")
    t.add_argument("--data", required=True)
    t.add_argument("--out", required=True, help="checkpoint directory to write")
    t.add_argument("--clip-model", default="ViT-B-32")
    t.add_argument("--clip-pretrained", default="openai", help="open_clip tag or local checkpoint file")
    t.add_argument("--pivot", default="photo", help="gallery domain every other domain maps into")
    t.add_argument("--epochs", type=int, default=20)
    t.add_argument("--batch-size", type=int, default=256)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--cache-dir", default=None, help="reuse CLIP features across runs")
    t.set_defaults(func=cmd_train)

    for name, func, helptext in (("index", cmd_index, "embed images into a collection"),
                                 ("search", cmd_search, "query a collection with images of any domain")):  # fmt: skip
        s = sub.add_parser(name, help=helptext)
        s.add_argument("--model", default=None, help="checkpoint directory (or $CLAIR_VEC_MODEL)")
        s.add_argument("--collection", required=True)
        s.add_argument("--domain", default=None if name == "index" else argparse.SUPPRESS, required=name == "search")
        s.add_argument("images", nargs="+", help="image files or folders")
        backend_args(s)
        if name == "index":
            s.add_argument("--label-from-folder", action="store_true", help="store each image's folder name as label")
        else:
            s.add_argument("--top-k", type=int, default=10)
            s.add_argument("--filter", action="append", help="key=value on domain/label/path; repeatable")
        s.set_defaults(func=func)

    e = sub.add_parser("evaluate", help="mAP/Prec of raw CLIP vs CLAIR on the unseen classes of a dataset")
    e.add_argument("--model", required=True)
    e.add_argument("--data", required=True)
    e.add_argument("--query-domain", action="append")
    e.set_defaults(func=cmd_evaluate)

    d = sub.add_parser("demo", help="offline end-to-end run on generated data")
    d.add_argument("--workdir", default="clair_demo")
    d.add_argument("--data", default=None, help="use this dataset instead of generating one")
    d.add_argument("--epochs", type=int, default=30)
    d.add_argument("--per-class", type=int, default=60)
    d.add_argument("--bootstrap-steps", type=int, default=1200)
    d.add_argument("--clip-model", default="clair-tiny")
    d.add_argument("--clip-pretrained", default=None, help="real CLIP weights instead of the bootstrap")
    backend_args(d)
    d.set_defaults(func=cmd_demo, backend="milvus")

    b = sub.add_parser("backends", help="list installed backend plugins")
    b.set_defaults(func=cmd_backends)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        args.func(args)
    except ClairVecError as exc:
        print(f"clair-vec: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
