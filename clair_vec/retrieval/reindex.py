"""Re-embedding a gallery with a new model: every record of an old collection, read again from
its file and written into a new collection, ready for an alias to move to it.

Streamed: the old collection is read a page at a time (nothing the size of the gallery is held),
each page indexed like ``clair-vec index`` indexes a folder (hash, skip what the new collection
holds, decode, encode, write whole batches). Resumable: ids are content hashes, so after a crash
(even ``kill -9``) a re-run skips what was written. Each record keeps its path, domain and
``label``; zero-shot tags belong to the model that computed them, so they are re-computed over
``labels`` when given, and dropped otherwise. A file that is gone, or whose bytes changed since
it was indexed, is reported by name (a changed file is indexed as it is now).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from itertools import islice
from pathlib import Path

from clair_vec.method.pixel_batches import default_batch_size
from clair_vec.progress import progress_bar
from clair_vec.retrieval.indexing import (
    ReindexSummary,
    check_batch_size,
    collection_precision,
    index_sources,
    prepare_collection,
)
from clair_vec.retrieval.retriever import Retriever
from clair_vec.retrieval.sources import CHANGED, NO_FILE, ImageSource, names_a_file, stored_source
from clair_vec.retrieval.vocabulary import vocabulary
from clair_vec.store.backend import Backend, check_collection_name

PAGE = 512


def _pages(records: Iterator, size: int) -> Iterator[list]:
    while page := list(islice(records, size)):
        yield page


def reindex(
    source: Backend,
    old: str,
    target: Retriever,
    new: str,
    *,
    labels: Sequence[str] | str | Path | None = None,
    batch_size: int | None = None,
    progress: bool = True,
    precision: str | None = None,
) -> ReindexSummary:
    """Re-embed every record of ``old`` (on ``source``) with ``target``'s model into ``new`` (on
    ``target``'s backend, often the same handle). ``old`` may be an alias. ``batch_size`` and
    ``precision`` as in :meth:`Retriever.index`."""
    check_collection_name(new)
    batch_size = check_batch_size(default_batch_size(target.model.device) if batch_size is None else batch_size)
    if precision is not None:
        target.model.foundation.check_precision(precision)
    tags = vocabulary(labels)
    old = source.resolve(old)
    if old == target.backend.resolve(new) and source is target.backend:
        raise ValueError(f"--from and --to are the same collection {old!r}: re-embed into a new collection, then move the alias")
    source.open_collection(old)
    m, be = target.model, target.backend
    precision = collection_precision(prepare_collection(be, new, m, target.model_dir, precision))
    summary = ReindexSummary(new, be.name, source=old)
    seen: dict[str, str] = {}
    with progress_bar(total=source.count(old), desc=f"reindex {old} -> {new}", unit="img", enabled=progress) as bar:
        for page in _pages(source.records(old, page_size=PAGE), PAGE):
            summary.read += len(page)
            by_domain: dict[str, list[ImageSource]] = {}
            was: dict[str, str] = {}  # path -> the id its bytes had when the old collection indexed them
            for rid, payload in page:
                path, domain = payload.get("path"), payload.get("domain") or m.pivot
                if not names_a_file(path):
                    summary.no_file.append((rid, NO_FILE))
                elif domain not in m.domains:
                    summary.skipped.append((path, f"domain {domain!r} is not one the new model knows ({m.domains})"))
                else:
                    src = stored_source(path, str(payload.get("label") or ""))
                    if src.problem is None and src.fetch is None and not os.path.isfile(path):
                        src.problem = "the file is gone (it was indexed from here)"
                    by_domain.setdefault(domain, []).append(src)
                    was[path] = rid

            def changed(src: ImageSource, rid: str, was: dict[str, str] = was) -> None:
                if was.get(src.path or "") not in (None, rid):
                    summary.changed.append((src.name, CHANGED))

            for domain, items in by_domain.items():
                index_sources(m, be, new, items, domain=domain, batch_size=batch_size, vocabulary=tags, progress=False,
                              summary=summary, seen=seen, on_read=changed, flush=False, precision=precision)  # fmt: skip
            bar.update(len(page))
    if summary.indexed or summary.replaced:
        be.flush(new)
    return summary
