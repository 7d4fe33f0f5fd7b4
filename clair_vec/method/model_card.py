"""What a checkpoint is, read from its ``clair.json`` alone: no torch, no CLIP weights.

A Ray driver, a service deciding where to route, or a listing tool needs the model id, the
embedding dimension and the domains, not the model; loading CLIP for that would cost seconds
and hundreds of MB.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clair_vec.errors import UnknownDomainError, WeightsNotFoundError

FORMAT_VERSION = 1


def read_meta(path: str | Path) -> dict[str, Any]:
    """The parsed ``clair.json`` of a checkpoint directory, refused with a clear error when the
    directory is not a checkpoint or was written in another format."""
    meta_file = Path(path) / "clair.json"
    if not meta_file.is_file():
        raise WeightsNotFoundError(
            f"{str(path)!r} is not a clair_vec checkpoint (no clair.json). Train one with "
            "`clair-vec train` or `python ray_jobs/train.py`, or pass the directory they wrote."
        )
    meta = json.loads(meta_file.read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise WeightsNotFoundError(f"checkpoint {path} has format {meta.get('format_version')}, expected {FORMAT_VERSION}")
    return meta


@dataclass(frozen=True)
class ModelCard:
    model_id: str
    dim: int
    pivot: str
    domains: list[str]
    clip_arch: str
    classes: list[str]
    record: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def read(cls, path: str | Path) -> ModelCard:
        meta = read_meta(path)
        return cls(meta["model_id"], int(meta["dim"]), meta["pivot"], list(meta["domains"]), meta["clip_model"],
                   list(meta["classes"]), meta.get("training") or {})  # fmt: skip

    def check_domain(self, domain: str) -> None:
        if domain not in self.domains:
            raise UnknownDomainError(domain, self.domains)
