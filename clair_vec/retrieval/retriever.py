"""One CLAIR model and one backend, opened once and kept open.

``clair_vec.index`` / ``clair_vec.search``, the CLI, ``clair-vec serve`` and the Ray jobs all go
through a :class:`Retriever`. Opening is the expensive part (loading CLIP, loading a Milvus
collection, a Qdrant Edge shard), so a long-lived process opens once and serves many calls.

A retriever is safe to share between threads: calls run one at a time, because embedded engines
and the CPU model gain nothing from running concurrently in one process.
"""

from __future__ import annotations

import itertools
import json
import os
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from clair_vec.errors import BackendError, CollectionMismatchError, CorruptImageError, DatasetError, RecordNotFoundError
from clair_vec.method.model import MODEL_ENV, ClairModel, load_model
from clair_vec.method.pixel_batches import default_batch_size
from clair_vec.method.prompts import domain_templates
from clair_vec.retrieval import remote, sources
from clair_vec.retrieval.indexing import (
    IndexSummary,
    check_batch_size,
    check_prune_roots,
    collection_precision,
    index_sources,
    prepare_collection,
    prune,
)
from clair_vec.retrieval.queries import AQE_TOP, Part, Query, QueryError, combine, expand_query, text_token_problem
from clair_vec.retrieval.sources import ImageInput
from clair_vec.retrieval.vocabulary import vocabulary
from clair_vec.store.backend import Backend, CollectionInfo, Hit, check_collection_name, normalize_filter
from clair_vec.store.plugins import get_backend


class Retriever:
    """``Retriever(model, backend="milvus", uri=None, device="auto")``: index into and search collections.

    ``device``: where a model loaded from a directory runs (``auto``: CUDA when there is a GPU); a
    model object stays where it is unless ``device`` is given."""

    def __init__(
        self,
        model: str | Path | ClairModel | None = None,
        *,
        backend: str | Backend | None = None,
        uri: str | None = None,
        backend_options: Mapping[str, Any] | None = None,
        text_through_head: bool = False,
        device: str | None = None,
    ) -> None:
        self.model = load_model(model, device)
        #: where the model was loaded from (recorded in the collections it creates); None for an object
        self.model_dir = None if isinstance(model, ClairModel) else os.path.abspath(model or os.environ.get(MODEL_ENV, ""))
        if isinstance(backend, Backend):
            self.backend, self._owns_backend = backend, False
        else:
            self.backend, self._owns_backend = get_backend(backend, uri, **dict(backend_options or {})), True
        self._lock = threading.RLock()
        self._checked: dict[str, CollectionInfo] = {}
        self._texts: dict[str, np.ndarray] = {}
        #: pass text embeddings through the CLAIR head too (the head is trained on images only)
        self.text_through_head = text_through_head

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
        batch_size: int | None = None,
        progress: bool = True,
        precision: str | None = None,
    ) -> IndexSummary:
        """Embed ``images`` of ``domain`` (default: the model's gallery domain) into ``collection``.

        ``labels``: a vocabulary (or a file of one label a line) to tag each image with zero-shot
        (``pseudo_label``); without it no tag is stored. ``prune_missing``: afterwards remove
        records of files under the given folders that no longer exist. ``batch_size``: images
        per encode and write (default: 256 on a GPU, 64 on a CPU). ``precision``: of the CLIP
        forward, ``fp32``, ``bf16`` or ``fp16``, recorded with the collection (default: the
        collection's, fp32 for a new one); its queries are encoded the same way.
        """
        m = self.model
        check_collection_name(collection)  # the cheap checks first: nothing is read before they pass
        domain = domain or m.pivot
        m.check_domain(domain)
        labels = vocabulary(labels)
        batch_size = check_batch_size(default_batch_size(m.device) if batch_size is None else batch_size)
        if precision is not None:
            m.foundation.check_precision(precision)
        images = [images] if isinstance(images, (str, Path, Image.Image, np.ndarray)) else list(images)
        roots = [str(i) for i in images if isinstance(i, (str, Path))]
        if prune_missing:  # first: its message says why a missing folder matters there
            check_prune_roots(roots)
        local = [r for r in roots if not remote.is_remote(r)]
        local = [p for r in local for p in (remote.expand_braces(r) if remote.is_shard(r) else [r])]  # each shard of a pattern
        missing = [r for r in local if not os.path.lexists(r)]
        if missing:  # a typo, a missing shard: refused before anything is opened or written
            raise DatasetError(f"no such file or folder: {', '.join(missing)}")
        ignored: list[tuple[str, str]] = []
        items = sources.expand(images, label_from_folder=label_from_folder, ignored=ignored)  # array errors raise here
        if not items and not prune_missing:  # an empty --prune run is how a user clears deleted files
            raise DatasetError(f"no images to index in {', '.join(roots) or 'the input'}" + _why_none(ignored))
        with self._lock:
            info = prepare_collection(self.backend, collection, m, self.model_dir, precision)
            summary = index_sources(m, self.backend, collection, items, domain=domain, batch_size=batch_size,
                                    vocabulary=labels, progress=progress, precision=collection_precision(info))  # fmt: skip
            summary.ignored = ignored
            if prune_missing:
                summary.pruned = prune(self.backend, collection, roots, domain=domain)
        return summary

    def count(self, collection: str, *, filter: Mapping[str, Any] | None = None) -> int:
        with self._lock:
            return self.backend.count(collection, filter=filter)

    def list_collections(self) -> list[str]:
        with self._lock:
            return self.backend.list_collections()

    # ------------------------------------------------------------------ reading
    def search(
        self,
        collection: str,
        queries: ImageInput | Sequence[ImageInput],
        *,
        domain: str,
        top_k: int = 10,
        filter: Mapping[str, Any] | None = None,
    ) -> list[list[Hit]]:
        """Ranked hits for each query image of ``domain`` (files, folders, PIL images, arrays), mapped
        into the gallery's domain first. An unreadable query raises :class:`CorruptImageError`
        naming it: a dropped query would misalign results with inputs."""
        self.model.check_domain(domain)
        images = sources.expand(queries)
        return self.run(collection, [Query.of(Part.image(s, domain), top_k=top_k, filter=filter) for s in images])

    def query(self, collection: str, query: Query) -> list[Hit]:
        """The hits of one :class:`~clair_vec.retrieval.queries.Query` (image, text, stored ids)."""
        return self.run(collection, [query])[0]

    def run(self, collection: str, queries: Sequence[Query], *, return_errors: bool = False) -> list[Any]:
        """The hits of each query, computed together: one CLIP pass per image domain, one text pass,
        one stored-vector lookup, one engine call per distinct filter. With ``return_errors`` a
        query that fails takes its exception as its result and the others are answered (the
        service batches many users' requests); otherwise the first failure is raised."""
        results: list[Any] = [None] * len(queries)
        with self._lock:
            self.collection(collection)
            plan = _Plan(self, collection, queries, results)
            plan.encode()
            plan.search()
        if not return_errors:
            for r in results:
                if isinstance(r, Exception):
                    raise r
        return results

    def text_problem(self, text: str) -> str | None:
        """Why ``text`` cannot be a query (it does not fit the text encoder with its prompt), or None."""
        m = self.model
        extra = m.config.n_ctx if m.prompt_state is not None else 0
        return text_token_problem(m.foundation.tokenizer, text, domain_templates(m.pivot, m.config.templates), extra)

    def text_vectors(self, texts: Sequence[str]) -> np.ndarray:
        """``(N, dim)`` unit vectors of texts in the gallery domain's space (see :mod:`.queries`)."""
        m = self.model
        missing = [t for t in dict.fromkeys(texts) if t not in self._texts]
        if missing:
            for t in missing:
                problem = self.text_problem(t)
                if problem:
                    raise QueryError(f"text {t[:60]!r}: {problem}")
            vecs = m.class_text_embeddings(missing, m.pivot)
            if self.text_through_head:
                vecs = m.embed_features(vecs, m.pivot)
            for t, v in zip(missing, vecs.numpy().astype(np.float32), strict=True):
                self._texts[t] = v
                if len(self._texts) > _TEXT_CACHE:
                    self._texts.pop(next(iter(self._texts)))
        return np.stack([self._texts[t] for t in texts]) if texts else np.zeros((0, m.dim), np.float32)

    def get(self, collection: str, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        with self._lock:
            return self.backend.get(collection, ids)

    def records(self, collection: str, *, page_size: int = 1000) -> Iterator[tuple[str, dict[str, Any]]]:
        """Every ``(id, payload)`` of the collection, a page at a time (the lock is held per page)."""
        pages = self.backend.records(collection, page_size=page_size)
        while True:
            with self._lock:
                page = list(itertools.islice(pages, page_size))
            yield from page
            if len(page) < page_size:
                return


#: texts whose embeddings a retriever keeps (a service sees the same few words again and again)
_TEXT_CACHE = 4096


def _one_image(part: Part) -> sources.ImageSource:
    """The one image a query part names; a folder, shard or listing is refused, not cut to its first image."""
    if isinstance(part.value, sources.ImageSource):
        return sources.as_query(part.value)
    if isinstance(part.value, (str, Path)) and not remote.is_source(str(part.value)) and Path(part.value).is_dir():
        raise QueryError(f"{part.describe()} is a folder: a query image is one image file; name one of its files")
    found = sources.expand([part.value])
    if len(found) != 1:
        raise QueryError(f"{part.describe()} holds {len(found)} images: a query image is one image; name one of them")
    return sources.as_query(found[0])


class _Plan:
    """One batch of queries on their way through the encoders and the engine (:meth:`Retriever.run`)."""

    def __init__(self, r: Retriever, collection: str, queries: Sequence[Query], results: list[Any]) -> None:
        self.r, self.collection, self.queries, self.results = r, collection, queries, results
        self.live: list[int] = []
        for i, q in enumerate(queries):
            try:
                q.validate(r.model.domains)
                normalize_filter(q.filter)
                self.live.append(i)
            except (QueryError, ValueError) as exc:
                results[i] = exc
        self.vectors: dict[tuple[int, int], np.ndarray] = {}

    def _fail(self, i: int, exc: Exception) -> None:
        if self.results[i] is None:
            self.results[i] = exc

    def _alive(self) -> list[int]:
        return [i for i in self.live if self.results[i] is None]

    def encode(self) -> None:
        r = self.r
        by_domain: dict[str, list[tuple[tuple[int, int], Image.Image]]] = {}
        texts: dict[str, list[tuple[int, int]]] = {}
        ids: dict[str, list[tuple[int, int]]] = {}
        for i in self._alive():
            for j, part in enumerate(self.queries[i].parts):
                key = (i, j)
                try:
                    if part.kind == "image":
                        by_domain.setdefault(part.domain, []).append((key, sources.decode(_one_image(part))))
                    elif part.kind == "text":
                        texts.setdefault(part.value, []).append(key)
                    else:
                        ids.setdefault(part.value, []).append(key)
                except (CorruptImageError, TypeError, ValueError) as exc:
                    self._fail(i, exc)
        precision = collection_precision(r.collection(self.collection))  # the gallery's, so the two match
        for domain, items in by_domain.items():
            self._embed(domain, items, precision)
        for text, keys in texts.items():
            try:
                (v,) = r.text_vectors([text])
                self.vectors.update({key: v for key in keys})
            except QueryError as exc:
                for i, _ in keys:
                    self._fail(i, exc)
        if ids:
            for rid, v in self._stored(list(ids)).items():
                if isinstance(v, Exception):
                    for i, _ in ids[rid]:
                        self._fail(i, v)
                else:
                    self.vectors.update({key: v for key in ids[rid]})

    def _embed(self, domain: str, items: list[tuple[tuple[int, int], Image.Image]], precision: str) -> None:
        """The images of one domain encoded together; when that fails, each alone, so that the query
        an image failed for fails, and not every query batched with it (the service's clients)."""
        try:
            vecs = self.r.model.embed_images([im for _, im in items], domain, precision=precision)
        except (MemoryError, RuntimeError, ValueError) as exc:
            if len(items) == 1:
                self._fail(items[0][0][0], exc)
            else:
                for item in items:
                    self._embed(domain, [item], precision)
            return
        self.vectors.update({key: v for (key, _), v in zip(items, vecs, strict=True)})

    def _stored(self, ids: list[str]) -> dict[str, Any]:
        """Stored vectors by id; an id that is not stored maps to the error that says so."""
        try:
            return dict(self.r.backend.vectors(self.collection, ids))
        except RecordNotFoundError as exc:
            missing = set(exc.ids)
            found = self._stored([i for i in ids if i not in missing]) if len(missing) < len(ids) else {}
            return {**found, **{m: _missing(self.collection, m) for m in missing}}

    def search(self) -> None:
        live = self._alive()
        combined = {}
        for i in live:
            q = self.queries[i]
            try:
                combined[i] = combine(q.parts, [self.vectors[(i, j)] for j in range(len(q.parts))])
            except QueryError as exc:
                self._fail(i, exc)
        first = self._engine(combined)
        expand = {i: rows for i, rows in first.items() if self.queries[i].rerank == "aqe" and rows}
        if expand:
            top = {i: rows[:AQE_TOP] for i, rows in expand.items()}
            stored = self._stored(sorted({h.id for rows in top.values() for h in rows}))
            again = {i: expand_query(combined[i], np.stack([stored[h.id] for h in rows]), [h.score for h in rows])
                     for i, rows in top.items() if not any(isinstance(stored.get(h.id), Exception) for h in rows)}  # fmt: skip
            first.update(self._engine(again))
        for i, rows in first.items():
            q = self.queries[i]
            rows = [h for h in rows if h.id not in q.exclude][q.offset : q.offset + q.top_k]
            self.results[i] = [h for h in rows if q.min_score is None or h.score >= q.min_score]

    def _engine(self, vectors: dict[int, np.ndarray]) -> dict[int, list[Hit]]:
        """One engine call per distinct filter, each asking for the largest window of its queries."""
        groups: dict[str, list[int]] = {}
        for i in vectors:
            groups.setdefault(json.dumps(normalize_filter(self.queries[i].filter), sort_keys=True), []).append(i)
        out: dict[int, list[Hit]] = {}
        for members in groups.values():
            window = max(self.queries[i].window for i in members)
            flt = self.queries[members[0]].filter
            try:
                rows = self.r.backend.search(self.collection, np.stack([vectors[i] for i in members]), top_k=window, filter=flt)
            except (ValueError, BackendError) as exc:
                for i in members:
                    self._fail(i, exc)
                continue
            out.update(zip(members, rows, strict=True))
        return out


def _missing(collection: str, rid: str) -> RecordNotFoundError:
    return RecordNotFoundError(f"no record {rid} in collection {collection!r}: use an id a search returned", ids=[rid])


def _why_none(ignored: list[tuple[str, str]], shown: int = 3) -> str:
    if not ignored:
        return ": the folders are empty"
    listed = "; ".join(f"{path}: {reason}" for path, reason in ignored[:shown])
    return f": {len(ignored)} entries are not image files ({listed}{'; ...' if len(ignored) > shown else ''})"
