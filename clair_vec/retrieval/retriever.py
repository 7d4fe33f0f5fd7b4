"""One CLAIR model and one backend, opened once and kept open.

``clair_vec.index`` / ``clair_vec.search``, the CLI, ``clair-vec serve`` and the Ray jobs all go
through a :class:`Retriever`. Opening is the expensive part (loading CLIP, loading a Milvus
collection, a Qdrant Edge shard), so a long-lived process opens once and serves many calls.

A retriever is safe to share between threads: calls run one at a time, because embedded engines
and the CPU model gain nothing from running concurrently in one process.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from clair_vec.errors import CollectionMismatchError, DatasetError
from clair_vec.method.model import ClairModel, load_model
from clair_vec.retrieval import sources
from clair_vec.retrieval.indexing import (
    IndexSummary,
    check_batch_size,
    check_prune_roots,
    index_sources,
    prepare_collection,
    prune,
)
from clair_vec.retrieval.sources import ImageInput
from clair_vec.retrieval.vocabulary import vocabulary
from clair_vec.store.backend import Backend, CollectionInfo, Hit, check_collection_name
from clair_vec.store.plugins import get_backend


class Retriever:
    """``Retriever(model, backend="milvus", uri=None)``: index into and search collections."""

    def __init__(
        self,
        model: str | Path | ClairModel | None = None,
        *,
        backend: str | Backend | None = None,
        uri: str | None = None,
        backend_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.model = load_model(model)
        if isinstance(backend, Backend):
            self.backend, self._owns_backend = backend, False
        else:
            self.backend, self._owns_backend = get_backend(backend, uri, **dict(backend_options or {})), True
        self._lock = threading.RLock()
        self._checked: dict[str, CollectionInfo] = {}

    def __enter__(self) -> Retriever:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            if self._owns_backend:
                self.backend.close()

    # ------------------------------------------------------------------ collections
    def collection(self, name: str) -> CollectionInfo:
        """The spec of an existing collection, checked once to hold this model's vectors."""
        if name not in self._checked:
            info = self.backend.open_collection(name)
            if info.model != self.model.model_id:
                raise CollectionMismatchError(
                    f"collection {name!r} was indexed with model {info.model!r}, but the queries would be "
                    f"encoded with {self.model.model_id!r}: load the checkpoint that built the collection"
                )
            self._checked[name] = info
        return self._checked[name]

    # ------------------------------------------------------------------ writing
    def index(
        self,
        collection: str,
        images: ImageInput | Iterable[ImageInput],
        *,
        domain: str | None = None,
        label_from_folder: bool = False,
        labels: Sequence[str] | str | Path | None = None,
        prune_missing: bool = False,
        batch_size: int = 64,
        progress: bool = True,
    ) -> IndexSummary:
        """Embed ``images`` of ``domain`` (default: the model's gallery domain) into ``collection``.

        ``labels``: a vocabulary (or a file of one label a line) to tag each image with zero-shot
        (``pseudo_label``); without it no tag is stored. ``prune_missing``: afterwards remove
        records of files under the given folders that no longer exist.
        """
        m = self.model
        check_collection_name(collection)  # the cheap checks first: nothing is read before they pass
        domain = domain or m.pivot
        m.check_domain(domain)
        labels = vocabulary(labels)
        check_batch_size(batch_size)
        images = [images] if isinstance(images, (str, Path, Image.Image, np.ndarray)) else list(images)
        roots = [str(i) for i in images if isinstance(i, (str, Path))]
        if prune_missing:  # first: its message says why a missing folder matters there
            check_prune_roots(roots)
        missing = [r for r in roots if not os.path.lexists(r)]
        if missing:  # a typo: refused before anything is opened or written
            raise DatasetError(f"no such file or folder: {', '.join(missing)}")
        ignored: list[tuple[str, str]] = []
        items = sources.expand(images, label_from_folder=label_from_folder, ignored=ignored)  # array errors raise here
        if not items and not prune_missing:  # an empty --prune run is how a user clears deleted files
            raise DatasetError(f"no images to index in {', '.join(roots) or 'the input'}" + _why_none(ignored))
        with self._lock:
            prepare_collection(self.backend, collection, m)
            summary = index_sources(m, self.backend, collection, items, domain=domain, batch_size=batch_size,
                                    vocabulary=labels, progress=progress)  # fmt: skip
            summary.ignored = ignored
            if prune_missing:
                summary.pruned = prune(self.backend, collection, roots, domain=domain)
        return summary

    def count(self, collection: str) -> int:
        with self._lock:
            return self.backend.count(collection)

    def list_collections(self) -> list[str]:
        with self._lock:
            return self.backend.list_collections()

    # ------------------------------------------------------------------ reading
    def embed_queries(self, queries: ImageInput | Sequence[ImageInput], domain: str) -> np.ndarray:
        """Query vectors of ``domain``, mapped into the gallery domain. An unreadable query raises
        :class:`CorruptImageError` naming it: a dropped query would misalign results with inputs."""
        self.model.check_domain(domain)
        images = [sources.decode(s) for s in sources.expand(queries)]
        if not images:
            return np.zeros((0, self.model.dim), np.float32)
        with self._lock:
            return self.model.embed_images(images, domain)

    def search(
        self,
        collection: str,
        queries: ImageInput | Sequence[ImageInput],
        *,
        domain: str,
        top_k: int = 10,
        filter: Mapping[str, Any] | None = None,
    ) -> list[list[Hit]]:
        """Ranked hits for each query image of ``domain``, mapped into the gallery's domain first."""
        self.model.check_domain(domain)
        with self._lock:
            self.collection(collection)
        vectors = self.embed_queries(queries, domain)
        with self._lock:
            return self.backend.search(collection, vectors, top_k=top_k, filter=filter)

    def get(self, collection: str, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        with self._lock:
            return self.backend.get(collection, ids)


def _why_none(ignored: list[tuple[str, str]], shown: int = 3) -> str:
    if not ignored:
        return ": the folders are empty"
    listed = "; ".join(f"{path}: {reason}" for path, reason in ignored[:shown])
    return f": {len(ignored)} entries are not image files ({listed}{'; ...' if len(ignored) > shown else ''})"
