"""What every route of one app shares: the open retriever, the served collection, the limits, the
metrics, and the thread the database calls run on."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from clair_vec.retrieval.retriever import Retriever
from clair_vec.service.observe import Metrics
from clair_vec.service.thumbnails import Thumbnails

MAX_TOP_K = 200


@dataclass(frozen=True)
class ServiceSettings:
    gallery_roots: Sequence[str | Path] | None = None
    max_upload_bytes: int = 10 * 1024 * 1024
    max_top_k: int = MAX_TOP_K


@dataclass
class ServiceContext:
    retriever: Retriever
    collection: str
    settings: ServiceSettings
    metrics: Metrics = field(default_factory=Metrics)
    worker: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(max_workers=1, thread_name_prefix="clair-search"))

    def __post_init__(self) -> None:
        self.thumbnails = Thumbnails(self.retriever, self.collection, self.settings.gallery_roots)

    @property
    def model(self):
        return self.retriever.model
