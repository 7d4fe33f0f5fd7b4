"""Writing a gallery into a collection: hash, skip what is stored, decode, embed, write.

Order matters for speed and safety: file bytes are hashed and looked up *before* anything is
decoded (a re-run over an indexed folder costs reads and hashes, not decoding and CLIP), and
each batch is written whole, so an interrupted run leaves whole batches that a re-run completes.
A file whose bytes changed since it was indexed gets a new id; the record of its old bytes is
removed, so a path is stored once.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from clair_vec.errors import CollectionMismatchError, CorruptImageError, DatasetError
from clair_vec.method.model_card import ModelCard
from clair_vec.progress import progress_bar
from clair_vec.retrieval import remote
from clair_vec.retrieval import sources as src_mod
from clair_vec.retrieval.sources import ImageSource
from clair_vec.store.backend import Backend, CollectionInfo, Record
from clair_vec.store.plugins import extra_payload, get_plugin_manager

if TYPE_CHECKING:  # the model (and torch) is needed to encode, not to write: Ray drivers import this module
    import torch

    from clair_vec.method.model import ClairModel

log = logging.getLogger(__name__)


@dataclass
class IndexSummary:
    collection: str
    backend: str
    indexed: int = 0
    already_present: int = 0
    replaced: int = 0  # records of files whose bytes changed, removed for the new version
    moved: int = 0  # stored images found under a new path (renamed, or a duplicate outliving its twin)
    pruned: int = 0  # records of files that no longer exist, removed by prune
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (source, reason): image files that failed
    #: (file, the file whose bytes it repeats): byte-identical copies, stored once under the first path
    duplicates: list[tuple[str, str]] = field(default_factory=list)
    ignored: list[tuple[str, str]] = field(default_factory=list)  # (entry, reason): not image files at all

    @property
    def total(self) -> int:
        """Every image file looked at: each is indexed, already present, a duplicate or skipped."""
        return self.indexed + self.already_present + len(self.duplicates) + len(self.skipped)

    def as_dict(self) -> dict:
        return {"collection": self.collection, "backend": self.backend, "indexed": self.indexed,
                "already_present": self.already_present, "replaced": self.replaced, "moved": self.moved,
                "pruned": self.pruned, "duplicates": self.duplicates, "skipped": self.skipped,
                "ignored": self.ignored}  # fmt: skip


@dataclass
class ReindexSummary(IndexSummary):
    """What re-embedding a collection did (``clair-vec reindex``, or the Ray job's ``--from-collection``)."""

    source: str = ""
    read: int = 0  # records of the old collection looked at
    changed: list[tuple[str, str]] = field(default_factory=list)  # (path, why): indexed with their bytes of now
    no_file: list[tuple[str, str]] = field(default_factory=list)  # (record id, why): nothing to read again

    def as_dict(self) -> dict:
        return {"from": self.source, **super().as_dict(), "read": self.read, "changed": self.changed, "no_file": self.no_file}


def encode_records(
    model: ClairModel,
    domain: str,
    items: Sequence[tuple[str, Image.Image | torch.Tensor, str, str]],
    vocabulary: Sequence[str] | None = None,
    precision: str | None = None,
) -> list[Record]:
    """Records of decoded images ``(id, image, path, label)``: mapped vectors plus payload. An
    image may be a PIL image or its preprocessed pixels (decoded ahead by :func:`index_sources`).

    With a ``vocabulary`` each record is tagged zero-shot over it (``pseudo_label`` and its
    ``confidence``); without one no tag is stored: a tag chosen among the training classes
    would label every unseen-class photo wrongly, with high confidence.
    """
    images = [im for _, im, _, _ in items]
    if images and not isinstance(images[0], Image.Image):
        import torch

        images = torch.stack(images)  # type: ignore[arg-type]
    feats = model.foundation.encode_images(images, batch_size=max(1, len(images)), precision=precision)  # type: ignore[arg-type]
    vectors = model.embed_features(feats, domain).numpy()
    tags = model.zero_shot_labels(feats, domain, vocabulary) if vocabulary else None
    records = []
    for n, ((rid, _, path, label), vec) in enumerate(zip(items, vectors, strict=True)):
        payload = {"path": path, "domain": domain, "label": label, "model": model.model_id}
        if tags is not None:
            payload.update(pseudo_label=tags[0][n], confidence=round(float(tags[1][n]), 6))
        payload.update(extra_payload(payload, domain, model.model_id))
        records.append(Record(rid, vec, payload))
    return records


def prepare_collection(
    be: Backend, collection: str, model: ClairModel | ModelCard, model_dir: str | Path | None = None, precision: str | None = None
) -> CollectionInfo:
    """Create (announcing it to plugins) or open ``collection`` for ``model``'s vectors. The
    collection records where its model lives (``extra["model_dir"]``, when known): a service that
    follows an alias to it loads that model before it answers from it. It also records the
    precision of the CLIP forward (``extra["precision"]``): queries are encoded the same way, and
    a later run at another precision is refused, so one collection never mixes the two."""
    extra: dict[str, str] = {"clip": model.clip_arch, "precision": precision or "fp32"}
    if model_dir is not None:
        extra["model_dir"] = os.path.abspath(model_dir)
    info = CollectionInfo(collection, model.dim, model.model_id, target_domain=model.pivot, extra=extra)
    created = not be.has_collection(collection)
    info = be.create_collection(info)
    if created:
        get_plugin_manager().hook.clair_vec_collection_created(
            backend_name=be.name, collection=collection, info={k: getattr(info, k) for k in ("dim", "model", "metric", "target_domain")}
        )
    elif info.model != model.model_id:
        raise CollectionMismatchError(
            f"collection {collection!r} holds vectors of model {info.model!r}, not {model.model_id!r}; "
            "index into a new collection or load the model that built it"
        )
    else:
        held = collection_precision(info)
        if precision is not None and precision != held:
            raise CollectionMismatchError(
                f"collection {collection!r} was indexed at precision {held}, not {precision}: index at "
                f"--precision {held}, or into a new collection"
            )
    return info


def collection_precision(info: CollectionInfo) -> str:
    """The CLIP forward's precision of a collection's vectors (collections made before it was
    recorded: fp32, the only one there was)."""
    return str(info.extra.get("precision") or "fp32")


def moved(stored: dict[str, dict], rid: str, path: str | None) -> bool:
    """Whether the stored record ``rid`` names a file that is gone while ``path`` holds the same
    bytes: its payload must follow the file, or a prune would delete a live image."""
    old = stored.get(rid, {}).get("path")
    # a URI cannot be checked from here: the same bytes at two URIs are a duplicate, not a move
    return (path is not None and isinstance(old, str) and old != path and not old.startswith("<")
            and not remote.is_remote(old) and not os.path.exists(remote.stored_file(old)))  # fmt: skip


def stale_ids(be: Backend, collection: str, domain: str, current: dict[str, str]) -> list[str]:
    """Ids stored for these paths (path -> current id) that are not the current ones."""
    if not current:
        return []
    flt = {"domain": domain, "path": sorted(current)}
    return [rid for rid, payload in be.records(collection, filter=flt) if current.get(payload.get("path")) != rid]


def index_sources(
    model: ClairModel,
    be: Backend,
    collection: str,
    sources: Sequence[ImageSource],
    *,
    domain: str,
    batch_size: int = 64,
    vocabulary: Sequence[str] | None = None,
    progress: bool = True,
    summary: IndexSummary | None = None,
    seen: dict[str, str] | None = None,
    on_read: Callable[[ImageSource, str], None] | None = None,
    flush: bool = True,
    precision: str | None = None,
) -> IndexSummary:
    """Index ``sources`` of ``domain``; ``summary`` and ``seen`` carry counts and the ids of this
    run across calls (a caller feeding pages), ``on_read`` sees each source with the id of its
    bytes before anything is decoded.

    Each batch is hashed and looked up here, then decoded and preprocessed by worker threads
    while the encoder works on the batch before it; batches are encoded and written in order."""
    from clair_vec.method.pixel_batches import prepared_batches

    summary = summary if summary is not None else IndexSummary(collection, be.name)
    seen = seen if seen is not None else {}  # id -> the first source with those bytes in this run
    preprocess = model.foundation.preprocess

    def read_one(s: ImageSource) -> tuple[str, bytes | None] | CorruptImageError:
        try:
            return src_mod.read(s, domain)
        except CorruptImageError as exc:
            return exc

    def plan(start: int) -> tuple[list[tuple[ImageSource, str, bytes | None]], list[tuple[str, ImageSource, bytes | None]]]:
        """Read, hash and look up one batch: what it holds, and what of it must be decoded."""
        read: list[tuple[ImageSource, str, bytes | None]] = []
        batch = sources[start : start + batch_size]
        # remote images are fetched side by side: a URL's latency, not the link, is what limits one at a time
        results = list(fetchers.map(read_one, batch)) if any(s.fetch is not None for s in batch) else map(read_one, batch)
        for s, got in zip(batch, results, strict=True):
            if isinstance(got, CorruptImageError):
                summary.skipped.append((got.path, got.reason))
                continue
            rid, data = got
            read.append((s, rid, data))
            if on_read is not None:
                on_read(s, rid)
        stored = be.get(collection, [rid for _, rid, _ in read])
        todo = []
        for s, rid, data in read:
            first = seen.setdefault(rid, s.name)
            if first != s.name:  # the same bytes earlier in this run: stored once, under the first path
                summary.duplicates.append((s.name, first))
                continue
            if rid in stored and not moved(stored, rid, s.path):
                held = stored[rid].get("path")
                if s.path is not None and isinstance(held, str) and held != s.path:
                    summary.duplicates.append((s.name, held))  # a copy of a file stored under its own path
                else:
                    summary.already_present += 1
                continue
            summary.moved += rid in stored
            todo.append((rid, s, data))
        return read, todo

    def pixels(job: tuple[str, ImageSource, bytes | None]) -> torch.Tensor:
        return preprocess(src_mod.decode(job[1], job[2]))

    def batches() -> Iterator[tuple[tuple[int, list, list], list]]:
        """((start, read, todo), todo) per batch: planned here, decoded by the worker threads."""
        for start in range(0, len(sources), batch_size):
            read, todo = plan(start)
            yield (start, read, todo), todo

    with progress_bar(total=len(sources), desc=f"index {collection}", unit="img", enabled=progress) as bar, \
            ThreadPoolExecutor(FETCHERS, thread_name_prefix="clair-fetch") as fetchers:
        for (start, read, todo), done in prepared_batches(batches(), pixels, capture=(CorruptImageError,)):
            ready = []
            for (rid, s, _), px in zip(todo, done, strict=True):
                if isinstance(px, CorruptImageError):
                    summary.skipped.append((px.path, px.reason))
                else:
                    ready.append((rid, px, s.name, s.label))
            if ready:
                summary.indexed += be.upsert(collection, encode_records(model, domain, ready, vocabulary, precision),
                                             model=model.model_id)  # fmt: skip
            # after the write: a crash in between leaves the old record, which the re-run removes
            stale = stale_ids(be, collection, domain, {s.path: rid for s, rid, _ in read if s.path is not None})
            if stale:
                summary.replaced += be.delete(collection, stale)
            n = min(batch_size, len(sources) - start)
            bar.update(n)
            log.info("%s: %d/%d read; indexed %d, already present %d, skipped %d", collection, start + n,
                     len(sources), summary.indexed, summary.already_present, len(summary.skipped))  # fmt: skip
        if flush and (summary.indexed or summary.replaced):
            # the engine may build its index now (minutes at a million vectors): the bar says so
            bar.set_postfix_str("flush: the database may build its index", refresh=True)
            be.flush(collection)
    return summary


#: remote images fetched at once (img2dataset's default thread count per process)
FETCHERS = 16
#: images per batch: each batch is decoded, encoded and written whole
BATCH_SIZES = (1, 4096)


def check_batch_size(batch_size: object) -> int:
    lo, hi = BATCH_SIZES
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not lo <= batch_size <= hi:
        raise ValueError(f"batch_size must be an integer from {lo} to {hi}, got {batch_size!r}")
    return batch_size


def check_prune_roots(roots: Sequence[str | Path]) -> None:
    missing = [str(r) for r in roots if not os.path.isdir(r)]
    if missing or not roots:
        raise DatasetError(f"--prune needs existing folders to compare against; not folders: {missing or '(none given)'} "
                           "(is a disk unmounted?)")  # fmt: skip


def prune(be: Backend, collection: str, roots: Sequence[str | Path], *, domain: str) -> int:
    """Remove records of ``domain`` whose file under one of ``roots`` no longer exists. A root that
    is not an existing folder is refused: an unmounted disk would otherwise empty the collection."""
    check_prune_roots(roots)
    bases = [os.path.abspath(r) for r in roots]

    def missing(path: object) -> bool:  # in-memory images are stored as "<image #i>", remote ones as URIs: never files
        return (isinstance(path, str) and not path.startswith("<") and not remote.is_remote(path)
                and src_mod.is_under(os.path.abspath(path), bases) and not os.path.exists(remote.stored_file(path)))  # fmt: skip

    gone = [rid for rid, payload in be.records(collection, filter={"domain": domain}) if missing(payload.get("path"))]
    removed = be.delete(collection, gone) if gone else 0
    if removed:
        be.flush(collection)
    return removed
