"""What a checkpoint is, read from its ``clair.json`` alone: no torch, no CLIP weights.

A Ray driver, a service deciding where to route, or a listing tool needs the model id, the
embedding dimension and the domains, not the model; loading CLIP for that would cost seconds
and hundreds of MB.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clair_vec.errors import UnknownDomainError, WeightsNotFoundError
from clair_vec.method.checkpoint_schema import check_meta, parse_meta
from clair_vec.method.routing import check_routing


def read_meta(path: str | Path) -> dict[str, Any]:
    """The parsed and validated ``clair.json`` of a checkpoint directory: refused with
    :class:`WeightsNotFoundError` when the directory is not a checkpoint, and with
    :class:`CheckpointError` naming the field when a field is missing or wrong."""
    meta_file = Path(path) / "clair.json"
    if meta_file.is_symlink() and not meta_file.is_file():
        # a link is a deliberate layout (models shared between folders): say where it points
        raise WeightsNotFoundError(
            f"{str(path)!r}: clair.json is a link to {os.readlink(meta_file)!r}, which is not a file (moved or deleted?); "
            "point the link at the checkpoint's clair.json, or pass the directory that holds it."
        )
    if not meta_file.is_file():
        raise WeightsNotFoundError(
            f"{str(path)!r} is not a clair_vec checkpoint (no clair.json). Train one with "
            "`clair-vec train` or `python ray_jobs/train.py`, or pass the directory they wrote."
        )
    return check_meta(parse_meta(path), path)


@dataclass(frozen=True)
class ModelCard:
    model_id: str
    dim: int
    pivot: str
    domains: list[str]
    clip_arch: str
    classes: list[str]
    record: dict[str, Any] = field(default_factory=dict)
    routing: dict[str, float] = field(default_factory=dict)

    @classmethod
    def read(cls, path: str | Path) -> ModelCard:
        meta = read_meta(path)
        routing = check_routing(meta.get("routing") or {}, meta["domains"])
        return cls(meta["model_id"], int(meta["dim"]), meta["pivot"], list(meta["domains"]), meta["clip_model"],
                   list(meta["classes"]), meta.get("training") or {}, routing)  # fmt: skip

    def check_domain(self, domain: str) -> None:
        if domain not in self.domains:
            raise UnknownDomainError(domain, self.domains)
