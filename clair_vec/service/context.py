"""What every route of one app shares: what is being served (a collection and the retriever whose
model built it, swapped together when an alias moves), the settings, the metrics, the search
batcher and the one worker thread that talks to the model and database."""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from clair_vec.retrieval.retriever import Retriever
from clair_vec.retrieval.sources import names_a_file
from clair_vec.service.batcher import Batcher
from clair_vec.service.observe import Metrics, Outage
from clair_vec.service.settings import ServiceSettings
from clair_vec.service.thumbnails import Thumbnails

LABELS_SCAN, LABELS_TTL_S = 20_000, 60.0


@dataclass(frozen=True)
class Serving:
    """One collection and the retriever whose model built its vectors. A request takes the current
    one when it arrives and keeps it to the end: a query is never encoded with one model and
    searched in vectors of another, whatever happens to the alias meanwhile."""

    collection: str
    retriever: Retriever

    @property
    def model(self):
        return self.retriever.model


@dataclass
class ServiceContext:
    retriever: Retriever
    #: what the service was asked to serve: a collection, or an alias it follows (see follow.py)
    name: str
    settings: ServiceSettings
    metrics: Metrics = field(default_factory=Metrics)
    outage: Outage = field(default_factory=Outage)
    #: the model and the database are used from this one thread (embedded engines take one call at a
    #: time, and a batch is one call); the event loop only moves bytes
    worker: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(max_workers=1, thread_name_prefix="clair-search"))

    def __post_init__(self) -> None:
        s = self.settings
        self.serving = Serving(self.retriever.backend.resolve(self.name), self.retriever)
        self.thumbnails = Thumbnails(lambda: (self.serving.retriever, self.serving.collection), s.gallery_roots)
        self.roots = [os.path.abspath(r) for r in s.gallery_roots or []]
        self._labels: tuple[float, str, dict[str, Any]] | None = None
        self.batcher = Batcher(self._run, self.worker, max_batch=s.batch_size, max_wait=s.batch_wait_ms / 1000,
                               max_pending=s.max_inflight, wait_share=s.batch_wait_share)  # fmt: skip
        self.follower: Any = None  # set by the app (follow.py)

    @property
    def model(self):
        return self.serving.model

    @property
    def backend(self):
        return self.retriever.backend

    def _run(self, items: list[tuple[Serving, Any]]) -> list[Any]:
        """A batch of ``(serving, query)``: each group of one serving runs as one retriever call."""
        started = time.perf_counter()
        results: list[Any] = [None] * len(items)
        groups: dict[int, list[int]] = {}
        for n, (serving, _) in enumerate(items):
            groups.setdefault(id(serving), []).append(n)
        for members in groups.values():
            serving = items[members[0]][0]
            rows = serving.retriever.run(serving.collection, [items[n][1] for n in members], return_errors=True)
            for n, row in zip(members, rows, strict=True):
                results[n] = row
        self.metrics.batch_size.observe(len(items))
        self.metrics.batch_seconds.observe(time.perf_counter() - started)
        return results

    def labels(self) -> dict[str, Any]:
        """The distinct ``label`` values and zero-shot tags (``pseudo_label``) of the collection, from a
        bounded scan (cached for a minute): what the page offers as filters."""
        now, serving = time.monotonic(), self.serving
        if self._labels is None or now - self._labels[0] > LABELS_TTL_S or self._labels[1] != serving.collection:
            found: dict[str, set[str]] = {"label": set(), "pseudo_label": set()}
            scanned = 0
            for scanned, (_, payload) in enumerate(serving.retriever.records(serving.collection), 1):  # noqa: B007
                for key, values in found.items():
                    value = payload.get(key)
                    if isinstance(value, str) and value:
                        values.add(value)
                if scanned >= LABELS_SCAN:
                    break
            self._labels = (now, serving.collection, {"labels": sorted(found["label"]), "tags": sorted(found["pseudo_label"]),
                                                      "complete": scanned < LABELS_SCAN})  # fmt: skip
        return self._labels[2]

    def display_path(self, path: Any) -> Any:
        """What a hit shows of its file: the path under the gallery root it lies in, else the file
        name alone (the server's folder layout is none of a client's business)."""
        if not names_a_file(path):
            return path
        for root in self.roots:
            if path == root or path.startswith(root.rstrip(os.sep) + os.sep):
                return os.path.relpath(path, root)
        return os.path.basename(path)
