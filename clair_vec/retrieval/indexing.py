"""Writing a gallery into a collection, down the stages of :mod:`~clair_vec.retrieval.ingest`.

Order matters for speed and safety: file bytes are hashed and looked up *before* anything is
decoded (a re-run over an indexed folder costs reads and hashes, not decoding and CLIP), and
each batch is written whole, so an interrupted run leaves whole batches that a re-run completes.
A file whose bytes changed since it was indexed gets a new id; the record of its old bytes is
removed, so a path is stored once.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from clair_vec.errors import CollectionMismatchError, DatasetError, PluginHookError
from clair_vec.method.model_card import ModelCard
from clair_vec.progress import progress_bar
from clair_vec.retrieval import ingest, remote
from clair_vec.retrieval import sources as src_mod
from clair_vec.retrieval.sources import ImageSource
from clair_vec.store.backend import Backend, CollectionInfo
from clair_vec.store.plugins import call_each

if TYPE_CHECKING:  # the model (and torch) is needed to encode, not to write: Ray drivers import this module
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
    created = False
    if not be.has_collection(collection):
        try:  # exist_ok=False: of two runs that both found it missing, only the one that made it announces it
            info, created = be.create_collection(info, exist_ok=False), True
        except CollectionMismatchError:
            pass
    if not created:
        info = be.create_collection(info)
    if created:
        try:
            call_each("clair_vec_collection_created", backend_name=be.name, collection=collection,
                      info={k: getattr(info, k) for k in ("dim", "model", "metric", "target_domain")})  # fmt: skip
        except PluginHookError as exc:
            # drop it while still empty, so the next run creates it again and the plugin's hook runs then
            # (kept, it would be an existing collection, and the grant or index never made); one that
            # another run has begun to fill is not this run's to drop
            try:
                held = be.count(collection)
                if held == 0:
                    be.drop_collection(collection)
            except Exception:  # noqa: BLE001 - the hook's failure is the one to report
                held = None
            if held != 0:
                raise PluginHookError(f"{exc}; the new collection {collection!r} was kept (it "
                                      f"{'could not be dropped' if held is None else f'already holds {held} records'}): "
                                      "the hook has not run for it, so drop it, or do what the hook does, before "
                                      "indexing into it again") from None  # fmt: skip
            raise PluginHookError(f"{exc}; the new collection {collection!r} was dropped again, so run the same "
                                  "command once that is fixed") from None  # fmt: skip
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
    """Index ``sources`` of ``domain``, down the stages of :mod:`~clair_vec.retrieval.ingest`;
    ``summary`` and ``seen`` carry counts and the ids of this run across calls (a caller feeding
    pages), ``on_read`` sees each source with the id of its bytes before anything is decoded.

    Each batch is read, hashed and looked up here, then decoded by worker threads while the
    encoder works on the batch before it; batches are encoded and written in order."""
    summary = summary if summary is not None else IndexSummary(collection, be.name)
    seen = seen if seen is not None else {}  # id -> the first source with those bytes in this run
    store = ingest.local_store(ingest.Writer(be, collection))
    run = ingest.run(model, store, domain, sources, batch_size=batch_size, seen=seen, on_read=on_read,
                     vocabulary=vocabulary, precision=precision)  # fmt: skip
    # closed on the way out, even by an error in this loop: its decode and fetch threads stop with it
    with progress_bar(total=len(sources), desc=f"index {collection}", unit="img", enabled=progress) as bar, \
            contextlib.closing(run) as batches:
        for start, items, replaced in batches:
            summary.replaced += replaced
            summary.moved += sum(i.moved for i in items)
            ingest.tally(summary, ((i.name, i.status, i.note) for i in items))
            n = len(items)
            bar.update(n)
            log.info("%s: %d/%d read; indexed %d, already present %d, skipped %d", collection, start + n,
                     len(sources), summary.indexed, summary.already_present, len(summary.skipped))  # fmt: skip
        if flush and (summary.indexed or summary.replaced):
            # the engine may build its index now (minutes at a million vectors): the bar says so
            bar.set_postfix_str("flush: the database may build its index", refresh=True)
            be.flush(collection)
    return summary


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
