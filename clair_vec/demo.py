"""The offline end-to-end job: data -> foundation model -> CLAIR training -> index -> cross-domain search.

With no arguments it generates the shapes dataset and a separate "web" pool of every class in the
domain mix of web data (mostly photos), bootstraps a tiny CLIP on the pool (no pretrained weights
are reachable offline; it stands in for a web-pretrained CLIP that has seen every category but few
sketches), trains CLAIR on the seen classes, indexes the *unseen*-class photos into the embedded
backend (Milvus Lite), queries them with unseen-class sketches and cliparts, and prints mAP@200 /
P@200 for raw CLIP features against CLAIR.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from clair_vec.datasets.folders import MultiDomainDataset, plan_split, scan_folder
from clair_vec.datasets.shapes import make_shapes_dataset, make_web_pool
from clair_vec.method.config import ClairConfig
from clair_vec.method.devices import resolve_device
from clair_vec.method.foundation import FoundationModel
from clair_vec.method.metrics import ranked_metrics
from clair_vec.retrieval.retriever import Retriever
from clair_vec.store.backend import CollectionInfo, Record
from clair_vec.store.plugins import get_backend
from clair_vec.store.redaction import uri_secrets, without_credentials
from clair_vec.training.bootstrap_clip import bootstrap_clip
from clair_vec.training.features import extract_features
from clair_vec.training.job import plan_folds, train_local

log = logging.getLogger(__name__)
RAW, CLAIR = "clip_raw_gallery", "clair_gallery"


def _hits_relevance(rows: list, query_labels: list[str], top_k: int) -> np.ndarray:
    rel = np.zeros((len(rows), top_k))
    for i, (row, label) in enumerate(zip(rows, query_labels, strict=True)):
        for j, h in enumerate(row[:top_k]):
            rel[i, j] = h.payload.get("label") == label
    return rel


def torch_threads() -> tuple[int, str]:
    """Threads for torch: one per core this process may use, less one for the thread that reads
    and augments the bootstrap's next batch. Not fitted to the load: torch's sums depend on the
    thread count, so a count chosen by how busy the box was made one seed give two tables. On a
    busy box the demo takes longer, and says so."""
    from clair_vec.method.pixel_batches import usable_cores

    cores = usable_cores()
    threads = max(1, cores - 1)
    why = f"{cores} core{'s' if cores != 1 else ''}: {threads} torch thread{'s' if threads != 1 else ''}"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if load > cores - threads + 0.5:
        why += f" (the box is busy, load {load:.1f}: this run will be slower; --threads N chooses the count)"
    return threads, why


def estimate(clip_model: str, batch_size: int, steps: int, epochs: int, images: int, folds: int = 5) -> str:
    """A rough time for the whole demo on this machine now, from three timed bootstrap-sized steps."""
    import time

    import torch

    from clair_vec.method.foundation import FoundationModel
    from clair_vec.method.pixel_batches import usable_cores
    from clair_vec.training.bootstrap_clip import bootstrap_optimizer, deterministic_algorithms, image_layout

    fm = FoundationModel.load(clip_model, None)
    model = fm.model.train()
    size = fm.image_size
    # the bootstrap's own optimiser, layout and kernels, so a timed step costs what a real one does
    layout = image_layout(model.visual)
    tokens = fm.tokenize(["a photo of a circle."] * 8)
    opt = bootstrap_optimizer(model.parameters(), 0.0)
    t0 = 0.0
    with deterministic_algorithms():
        for i in range(4):  # the first step allocates: time the three after it
            if i == 1:
                t0 = time.perf_counter()
            for p_ in model.parameters():
                p_.requires_grad_(True)
            pixels = torch.randn(batch_size, 3, size, size).contiguous(memory_format=layout)
            loss = model.encode_image(pixels).sum() + model.encode_text(tokens).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
    step = (time.perf_counter() - t0) / 3
    # A real bootstrap step also reads and augments the next batch on a second thread. With a core
    # left over that hides behind the step (1.2 timed steps: 0.17 s timed, 0.20 s a step over 1200
    # steps, 1 thread on 2 cores); with every core stepping it adds to it (1.75: 0.10 s, 0.175 s).
    # Measured in the ordinary layout on the AMX box; channels-last on the AMD EPYC (0.15 s timed,
    # 0.16 s a real step) the whole demo came within 1 % of this formula, so the factors stay.
    # The other stages, in timed steps: a CLIP pass over every image (3 views), the training epochs
    # over cached features for the model and each validation fold, then about 20 s of indexing and
    # evaluation
    per_step = 1.2 if torch.get_num_threads() < usable_cores() else 1.75
    total = step * (per_step * steps + 1.5 * images / batch_size + 0.02 * epochs * images / batch_size * (1 + folds)) + 20
    return f"about {total / 60:.0f} min ({step:.2f} s a bootstrap step now)" if total >= 90 else f"about {total:.0f} s"


def _restoring_torch_threads(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The demo sets torch's thread count for itself; a caller (a notebook, a test) keeps its own."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import torch

        before = torch.get_num_threads()
        try:
            return fn(*args, **kwargs)
        finally:
            torch.set_num_threads(before)

    return wrapper


@_restoring_torch_threads
def run_demo(
    workdir: str | Path = "clair_demo",
    *,
    data: str | Path | None = None,
    backend: str = "milvus",
    uri: str | None = None,
    clip_model: str = "clair-tiny",
    clip_pretrained: str | None = None,
    per_class: int = 40,
    web_per_class: int = 100,
    web_mix: dict[str, float] | None = None,
    bootstrap_steps: int = 1200,
    epochs: int = 60,
    batch_size: int = 64,
    top_k: int = 200,
    seed: int = 0,
    val_fraction: float = 0.3,
    progress: bool = True,
    device: str | None = None,
    threads: int | None = None,
) -> dict[str, Any]:
    import torch

    where = resolve_device(device)  # a device that is not there fails here, before any work
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    if threads is not None and threads < 1:
        raise ValueError(f"--threads {threads}: give at least 1 torch thread")
    threads, why = (threads, f"{threads} torch thread{'s' if threads != 1 else ''} as asked") if threads else torch_threads()
    why += f"; device {where}"
    torch.set_num_threads(threads)
    root = Path(data) if data else work / "data"
    web = work / "web"
    if not data and not (root / "seen_classes.txt").exists():
        print(f"[1/6] generating the shapes dataset under {root}")
        make_shapes_dataset(root, per_class=per_class, seed=seed)
    if clip_pretrained is None and not (web / ".complete").exists():
        print(f"[1/6] generating the stand-in CLIP's web pool under {web}: every class, mostly photos, no image of the dataset")
        make_web_pool(web, per_class=web_per_class, mix=web_mix, seed=seed)
        (web / ".complete").touch()
    split = plan_split(root, seed, val_fraction)
    seen = MultiDomainDataset(split.train.items + (split.validation.items if split.validation else []), str(root))
    unseen = split.unseen
    print(f"[1/6] data {root}: {len(seen)} seen-class images ({len(seen.classes)} classes), "
          f"{len(unseen)} unseen-class images ({len(unseen.classes)} classes) for retrieval; domains {seen.domains}")  # fmt: skip
    pivot = "photo" if "photo" in seen.domains else ("real" if "real" in seen.domains else seen.domains[0])
    if clip_pretrained is None and not (work / "foundation" / f"{clip_model}-bootstrap.pt").exists():
        eta = estimate(clip_model, batch_size, bootstrap_steps, epochs, len(seen) + len(unseen), 5 if val_fraction > 0 else 0)
        print(f"[1/6] {why}; the demo should take {eta} (a progress bar shows the time left of each stage)")
    else:
        print(f"[1/6] {why}")

    if clip_pretrained is None:
        ckpt = work / "foundation" / f"{clip_model}-bootstrap.pt"
        if not ckpt.exists():
            pool = scan_folder(web)
            print(f"[2/6] bootstrapping {clip_model} CLIP on the web pool ({len(pool)} images of {len(pool.classes)} classes, "
                  f"{bootstrap_steps} steps)")  # fmt: skip
            bootstrap_clip(pool, ckpt, arch=clip_model, steps=bootstrap_steps, seed=seed, progress=progress, mix=web_mix,
                           device=str(where))  # fmt: skip
            # a later run in this folder reuses the stand-in: what made it is recorded beside it
            ckpt.with_suffix(".json").write_text(json.dumps({"seed": seed, "steps": bootstrap_steps, "threads": threads,
                                                             "device": str(where), "mix": web_mix}))  # fmt: skip
        clip_pretrained = str(ckpt)
    print(f"[2/6] foundation model {clip_model} / {clip_pretrained}")
    foundation = FoundationModel.load(clip_model, clip_pretrained, str(where))

    cfg = ClairConfig(clip_model=clip_model, clip_pretrained=clip_pretrained, pivot_domain=pivot, epochs=epochs,
                      batch_size=batch_size, seed=seed)  # fmt: skip
    folds, _ = plan_folds(seen, cfg, val_fraction)
    print(f"[3/6] training CLAIR, {epochs} epochs a run: "
          + (f"{len(folds)} selection folds that each hold out {len(folds[0])} of the {len(seen.classes)} seen classes, "
             "then " if folds else "")
          + f"the model on all {len(seen.classes)}")

    def report(s):
        if s.epoch == 0 or (s.epoch + 1) % 5 == 0 or s.epoch + 1 == epochs:
            val = f"  val mAP@200 {s.extra['val_mAP@200']:.3f}" if "val_mAP@200" in s.extra else ""
            print(f"  epoch {s.epoch + 1:3d}  loss {s.loss:.4f}  pseudo-label acc {s.pseudo_label_accuracy:.3f}  "
                  f"kept {s.kept_fraction:.2f}{val}  {s.seconds:.1f}s")  # fmt: skip

    model = train_local(root, cfg, foundation=foundation, split=split, val_fraction=val_fraction, cache_dir=work / "cache",
                        progress=progress, on_epoch=report)  # fmt: skip
    model_dir = model.save(work / "model")
    print(f"[4/6] model {model.model_id} saved to {model_dir}: shipped {model.record['shipped']} "
          f"({model.record['reason']})")  # fmt: skip

    uri = uri or (str(work / "clair_vec_milvus.db") if backend == "milvus" else str(work / f"{backend}_store"))
    be = get_backend(backend, uri)
    try:
        for name in (RAW, CLAIR):
            be.drop_collection(name)
        gallery = [i.path for i in unseen.by_domain(pivot)]
        indexer = Retriever(model, backend=be)
        indexer.model_dir = str(model_dir)  # recorded in the collection: a service following an alias finds it
        summary = indexer.index(CLAIR, gallery, domain=pivot, label_from_folder=True, progress=progress)
        print(f"[5/6] indexed {summary.indexed} unseen-class {pivot} images into {backend} collection {CLAIR!r} "
              f"at {be.display_uri} (skipped {len(summary.skipped)})")  # fmt: skip
        ufeats = extract_features(foundation, unseen, n_views=1, seed=seed, cache_dir=work / "cache", progress=progress)
        g = ufeats[pivot]
        be.create_collection(CollectionInfo(RAW, foundation.embed_dim, f"clip-{clip_model}", target_domain=pivot))
        be.upsert(RAW, [Record(f"raw{i}", v.numpy(), {"label": lbl, "domain": pivot, "path": p})
                        for i, (v, lbl, p) in enumerate(zip(g.clean, g.labels, g.paths, strict=True))])  # fmt: skip
        be.flush(RAW)
        # torch's float sums depend on its thread count, and 1,200 bootstrap steps amplify that into a
        # different stand-in CLIP: a seed reproduces its numbers at the same thread count
        made = Path(clip_pretrained).with_suffix(".json")
        stand_in = json.loads(made.read_text()) if made.is_file() else None
        results: dict[str, Any] = {"backend": backend, "uri": be.display_uri, "seed": seed, "threads": threads, "stand_in": stand_in,
                                   "model": model.model_id, "gallery": len(g), "rows": {},
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
    print(verdict(results, top_k, model.record.get("shipped", "clair")))
    results["next"] = next_steps(root, work, model_dir, CLAIR, backend, uri, unseen, pivot)
    if uri_secrets(uri):  # the commands carry the URI without its credentials: they are not repeated anywhere
        results["next"].append("(the URI's credentials are left out above: add them back, or set the backend's token variable, "
                               "e.g. $CLAIR_VEC_MILVUS_TOKEN)")  # fmt: skip
    print("\nnext:\n" + "\n".join(f"  {line}" for line in results["next"]))
    (work / "results.json").write_text(json.dumps(results, indent=2))
    return results


#: mAP differences below this are ties: the same ranking up to float noise
TIE = 5e-4


def verdict(results: dict[str, Any], top_k: int, shipped: str) -> str:
    """What the table says, in words: where the trained model beat raw CLIP on the unseen classes,
    and where it did not (that happens: the promise is measured, not assumed)."""
    raw, ours = results["rows"]["raw CLIP"], results["rows"]["CLAIR"]
    key = f"mAP@{top_k}"
    lost = [f"{pair} {raw[pair][key]:.3f} -> {ours[pair][key]:.3f}" for pair in sorted(raw) if ours[pair][key] < raw[pair][key] - TIE]
    won = [pair for pair in sorted(raw) if ours[pair][key] > raw[pair][key] + TIE]
    tied = [pair for pair in sorted(raw) if abs(ours[pair][key] - raw[pair][key]) <= TIE]
    if not lost and not tied:
        return f"the model beats raw CLIP on the unseen classes for every query domain ({', '.join(won)})"
    if not lost:
        # a tie is what shipping raw CLIP for a domain looks like: say so, not "beats"
        why = (f"The model that shipped ({shipped}) keeps raw CLIP where training did not beat it by more than the spread "
               "of the validation folds; more or cleaner training data may change that."
               if shipped in ("raw_clip", "mapping_only", "per_domain") else
               f"The model that shipped ({shipped}) changes those embeddings, and ranks these unseen classes as raw CLIP "
               "does there.")  # fmt: skip
        return (f"the model ranks like raw CLIP on the unseen classes for {', '.join(tied)}"
                + (f" and beats it for {', '.join(won)}" if won else "") + f" ({key}). {why}")
    return (f"note: the model lost to raw CLIP on the unseen classes for {'; '.join(lost)} ({key}). The model that "
            f"shipped ({shipped}) was chosen on held-out seen classes; what it learned from them did not carry over "
            "to these unseen ones here. Evaluate a model on your own unseen classes before you deploy it "
            "(`clair-vec evaluate`), and keep raw CLIP where it is better.")  # fmt: skip


def next_steps(root: Path, work: Path, model_dir: Path, collection: str, backend: str, uri: str, unseen: MultiDomainDataset,
               pivot: str) -> list[str]:  # fmt: skip
    """The commands to run next, exactly as they work from the current directory."""
    store = ["--backend", backend] if backend != "milvus" else []
    sketch = next((i.path for i in unseen.items if i.domain != pivot), None)
    common = f"--model {model_dir} --collection {collection} {' '.join(store)} --uri {without_credentials(uri)}".replace("  ", " ")
    lines = [f"clair-vec serve {common}    # then open http://127.0.0.1:8000/ and draw"]
    if sketch:
        domain = next(i.domain for i in unseen.items if i.path == sketch)
        lines.append(f"clair-vec search {common} --domain {domain} {sketch}")
    lines.append(f"clair-vec evaluate --model {model_dir} --data {root} --report {work / 'report'}")
    return lines


def format_table(results: dict[str, Any], top_k: int = 200) -> str:
    rows = results["rows"]
    pairs = sorted(next(iter(rows.values())))
    head = f"{'method':<10}" + "".join(f" | {p + ' mAP@' + str(top_k):>22} {'P@' + str(top_k):>7}" for p in pairs)
    lines = [head, "-" * len(head)]
    for method, cols in rows.items():
        lines.append(f"{method:<10}" + "".join(f" | {cols[p][f'mAP@{top_k}']:>22.4f} {cols[p][f'P@{top_k}']:>7.4f}" for p in pairs))
    return "\n".join(lines)
