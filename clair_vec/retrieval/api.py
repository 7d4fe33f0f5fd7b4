"""The public API: ``index`` a gallery and ``search`` it across domains.

Flow: images -> CLIP features -> CLAIR head -> mapping into the gallery (pivot) domain ->
backend plugin. Records are keyed by a hash of (domain, image content), so re-running an
interrupted ``index`` skips what is stored and never duplicates. Each call opens the model (cached
per process) and the backend, and closes the backend; a long-lived process keeps a
:class:`clair_vec.retriever.Retriever` open instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from clair_vec.method.model import ClairModel, load_model
from clair_vec.retrieval.indexing import IndexSummary, prepare_collection
from clair_vec.retrieval.ingest import encode_records
from clair_vec.retrieval.retriever import Retriever
from clair_vec.retrieval.sources import ImageInput
from clair_vec.store.backend import Backend, Hit
from clair_vec.store.ids import record_id

__all__ = ["index", "search", "load_model", "record_id", "encode_records", "prepare_collection", "IndexSummary", "Retriever"]


def index(
    collection: str,
    images: ImageInput | Iterable[ImageInput],
    *,
    domain: str | None = None,
    backend: str | Backend | None = None,
    uri: str | None = None,
    model: str | Path | ClairModel | None = None,
    label_from_folder: bool = False,
    labels: Sequence[str] | str | Path | None = None,
    prune: bool = False,
    batch_size: int | None = None,
    progress: bool = True,
    backend_options: Mapping[str, Any] | None = None,
    device: str | None = None,
    precision: str | None = None,
) -> IndexSummary:
    """Embed ``images`` of ``domain`` (default: the model's gallery domain) into ``collection``.

    Unreadable images are skipped and reported in the summary; images already stored are
    skipped, so re-running after a failure completes the collection without duplicates.
    ``labels`` (a list, or a file with one label a line) tags each image zero-shot over those
    labels; ``prune`` removes records of files under the given folders that no longer exist.
    ``device``: ``auto`` (CUDA when there is a GPU, the default), ``cpu``, ``cuda`` or ``cuda:N``.
    ``batch_size``: images per encode and write (default: 256 on a GPU, 64 on a CPU).
    ``precision``: ``fp32``, ``bf16`` or ``fp16`` for the CLIP forward, recorded with the
    collection; searches encode their queries the same way (default: the collection's, else fp32).
    """
    with Retriever(model, backend=backend, uri=uri, backend_options=backend_options, device=device) as r:
        return r.index(collection, images, domain=domain, label_from_folder=label_from_folder, labels=labels,
                       prune_missing=prune, batch_size=batch_size, progress=progress, precision=precision)  # fmt: skip


def search(
    collection: str,
    queries: ImageInput | Sequence[ImageInput],
    *,
    domain: str,
    top_k: int = 10,
    filter: Mapping[str, Any] | None = None,
    backend: str | Backend | None = None,
    uri: str | None = None,
    model: str | Path | ClairModel | None = None,
    backend_options: Mapping[str, Any] | None = None,
    device: str | None = None,
) -> list[list[Hit]]:
    """Ranked hits for each query image of ``domain``, mapped into the gallery's domain first.

    A query that cannot be read raises :class:`CorruptImageError` naming it (a silently dropped
    query would misalign results with inputs). Searching never creates a store or a collection.
    """
    with Retriever(model, backend=backend, uri=uri, backend_options=backend_options, device=device) as r:
        return r.search(collection, queries, domain=domain, top_k=top_k, filter=filter)
