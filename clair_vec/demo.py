"""The offline end-to-end job: data -> foundation model -> CLAIR training -> index -> cross-domain search.

With no arguments it generates the shapes dataset, bootstraps a tiny CLIP on the *seen* classes
(no pretrained weights are reachable offline), trains CLAIR, indexes the *unseen*-class photos
into the embedded backend (Milvus Lite), queries them with unseen-class sketches and cliparts,
and prints mAP@200 / P@200 for raw CLIP features against CLAIR.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from clair_vec.datasets.folders import MultiDomainDataset, plan_split
from clair_vec.datasets.shapes import make_shapes_dataset
from clair_vec.method.config import ClairConfig
from clair_vec.method.foundation import FoundationModel
from clair_vec.method.metrics import ranked_metrics
from clair_vec.retrieval.retriever import Retriever
from clair_vec.store.backend import CollectionInfo, Record
from clair_vec.store.plugins import get_backend
from clair_vec.training.bootstrap_clip import bootstrap_clip
from clair_vec.training.features import extract_features
from clair_vec.training.job import train_local

log = logging.getLogger(__name__)
RAW, CLAIR = "clip_raw_gallery", "clair_gallery"


def _hits_relevance(rows: list, query_labels: list[str], top_k: int) -> np.ndarray:
    rel = np.zeros((len(rows), top_k))
    for i, (row, label) in enumerate(zip(rows, query_labels, strict=True)):
        for j, h in enumerate(row[:top_k]):
            rel[i, j] = h.payload.get("label") == label
    return rel


def run_demo(
    workdir: str | Path = "clair_demo",
    *,
    data: str | Path | None = None,
    backend: str = "milvus",
    uri: str | None = None,
    clip_model: str = "clair-tiny",
    clip_pretrained: str | None = None,
    per_class: int = 60,
    bootstrap_steps: int = 1200,
    epochs: int = 30,
    batch_size: int = 64,
    top_k: int = 200,
    seed: int = 0,
    val_fraction: float = 0.1,
    progress: bool = True,
) -> dict[str, Any]:
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    root = Path(data) if data else work / "data"
    if not data and not (root / "seen_classes.txt").exists():
        print(f"[1/6] generating the shapes dataset under {root}")
        make_shapes_dataset(root, per_class=per_class, seed=seed)
    split = plan_split(root, seed, val_fraction)
    seen = MultiDomainDataset(split.train.items + (split.validation.items if split.validation else []), str(root))
    unseen = split.unseen
    print(f"[1/6] data {root}: {len(seen)} seen-class images ({len(seen.classes)} classes, "
          f"{len(split.validation.classes) if split.validation else 0} of them held out for validation), "
          f"{len(unseen)} unseen-class images ({len(unseen.classes)} classes) for retrieval; domains {seen.domains}")  # fmt: skip
    pivot = "photo" if "photo" in seen.domains else ("real" if "real" in seen.domains else seen.domains[0])

    if clip_pretrained is None:
        ckpt = work / "foundation" / f"{clip_model}-bootstrap.pt"
        if not ckpt.exists():
            print(f"[2/6] bootstrapping {clip_model} CLIP on seen classes only ({bootstrap_steps} steps)")
            bootstrap_clip(seen, ckpt, arch=clip_model, steps=bootstrap_steps, seed=seed, progress=progress)
        clip_pretrained = str(ckpt)
    print(f"[2/6] foundation model {clip_model} / {clip_pretrained}")
    foundation = FoundationModel.load(clip_model, clip_pretrained)

    cfg = ClairConfig(clip_model=clip_model, clip_pretrained=clip_pretrained, pivot_domain=pivot, epochs=epochs,
                      batch_size=batch_size, seed=seed)  # fmt: skip
    print(f"[3/6] training CLAIR for {epochs} epochs on {len(split.train.classes)} classes")

    def report(s):
        if s.epoch == 0 or (s.epoch + 1) % 5 == 0 or s.epoch + 1 == epochs:
            val = f"  val mAP@200 {s.extra['val_mAP@200']:.3f}" if "val_mAP@200" in s.extra else ""
            print(f"  epoch {s.epoch + 1:3d}  loss {s.loss:.4f}  pseudo-label acc {s.pseudo_label_accuracy:.3f}  "
                  f"kept {s.kept_fraction:.2f}{val}  {s.seconds:.1f}s")  # fmt: skip

    model = train_local(root, cfg, foundation=foundation, split=split, cache_dir=work / "cache", progress=progress,
                        on_epoch=report)  # fmt: skip
    model_dir = model.save(work / "model")
    print(f"[4/6] model {model.model_id} saved to {model_dir}: shipped {model.record['shipped']} "
          f"({model.record['reason']})")  # fmt: skip

    uri = uri or (str(work / "clair_vec_milvus.db") if backend == "milvus" else str(work / f"{backend}_store"))
    be = get_backend(backend, uri)
    try:
        for name in (RAW, CLAIR):
            be.drop_collection(name)
        gallery = [i.path for i in unseen.by_domain(pivot)]
        summary = Retriever(model, backend=be).index(CLAIR, gallery, domain=pivot, label_from_folder=True, progress=progress)
        print(f"[5/6] indexed {summary.indexed} unseen-class {pivot} images into {backend} collection {CLAIR!r} "
              f"at {uri} (skipped {len(summary.skipped)})")  # fmt: skip
        ufeats = extract_features(foundation, unseen, n_views=1, seed=seed, cache_dir=work / "cache", progress=progress)
        g = ufeats[pivot]
        be.create_collection(CollectionInfo(RAW, foundation.embed_dim, f"clip-{clip_model}", target_domain=pivot))
        be.upsert(RAW, [Record(f"raw{i}", v.numpy(), {"label": lbl, "domain": pivot, "path": p})
                        for i, (v, lbl, p) in enumerate(zip(g.clean, g.labels, g.paths, strict=True))])  # fmt: skip
        be.flush(RAW)
        results: dict[str, Any] = {"backend": backend, "uri": uri, "model": model.model_id, "gallery": len(g), "rows": {},
                                   "shipped": model.record["shipped"], "validation": model.record.get("validation")}  # fmt: skip
        for q in [d for d in unseen.domains if d != pivot]:
            f = ufeats[q]
            raw_hits = be.search(RAW, f.clean.numpy(), top_k=top_k)
            clair_hits = be.search(CLAIR, model.embed_features(f.clean, q).numpy(), top_k=top_k)
            for method, hits in (("raw CLIP", raw_hits), ("CLAIR", clair_hits)):
                m = ranked_metrics(_hits_relevance(hits, f.labels, top_k), map_ks=(top_k,), prec_ks=(top_k,))
                results["rows"].setdefault(method, {})[f"{q}->{pivot}"] = {
                    f"mAP@{top_k}": m[f"mAP@{top_k}"], f"P@{top_k}": m[f"P@{top_k}"], "queries": len(f)
                }
    finally:
        be.close()
    print(f"[6/6] cross-domain retrieval on unseen classes {unseen.classes} (gallery: {len(g)} {pivot} images)")
    print(format_table(results, top_k))
    (work / "results.json").write_text(json.dumps(results, indent=2))
    return results


def format_table(results: dict[str, Any], top_k: int = 200) -> str:
    rows = results["rows"]
    pairs = sorted(next(iter(rows.values())))
    head = f"{'method':<10}" + "".join(f" | {p + ' mAP@' + str(top_k):>22} {'P@' + str(top_k):>7}" for p in pairs)
    lines = [head, "-" * len(head)]
    for method, cols in rows.items():
        lines.append(f"{method:<10}" + "".join(f" | {cols[p][f'mAP@{top_k}']:>22.4f} {cols[p][f'P@{top_k}']:>7.4f}" for p in pairs))
    return "\n".join(lines)
