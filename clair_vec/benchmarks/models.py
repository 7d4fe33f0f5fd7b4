"""Models for measurements where no trained checkpoint is wanted: the real per-image compute of an
architecture, with random weights (no download)."""

from __future__ import annotations

from pathlib import Path


def random_model(arch: str, out: str | Path, classes: tuple[str, ...] = ("circle", "square", "star")) -> str:
    """A mapping-only model on random ``arch`` weights, saved to ``out``; returns its path."""
    from clair_vec.method.config import ClairConfig
    from clair_vec.method.foundation import FoundationModel
    from clair_vec.training.selection import mapping_only_model

    fm = FoundationModel.load(arch, None)
    cfg = ClairConfig(clip_model=arch, clip_pretrained=None)
    return str(mapping_only_model(fm, list(classes), ["photo", "sketch"], cfg).save(out))
