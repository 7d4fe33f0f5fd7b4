"""One image file: deciding what is an image file, reading and decoding it. The single decode path
of indexing, search, the service's uploads and thumbnails, and training: whatever fix an image
needs (modes, orientation) is made here, once."""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from clair_vec.errors import CorruptImageError

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})


def image_files(folder: str | Path) -> list[Path]:
    """Every image file under ``folder``, recursively, in sorted order."""
    return sorted(f for f in Path(folder).rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())


def decode_image(data: bytes, name: str) -> Image.Image:
    """Decode image bytes fully as RGB; any failure (corrupt, truncated, a decompression bomb)
    raises :class:`CorruptImageError` naming ``name``. The one decode path for files and uploads."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return im.convert("RGB")
    except Exception as exc:  # PIL raises many kinds, DecompressionBombError not among OSError's
        raise CorruptImageError(name, f"{type(exc).__name__}: {exc}") from exc


def load_image(path: str | Path) -> Image.Image:
    """Read and decode an image file as RGB, raising :class:`CorruptImageError` with the path on failure."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise CorruptImageError(str(path), f"{type(exc).__name__}: {exc.strerror or exc}") from exc
    return decode_image(data, str(path))


def load_images(paths: Sequence[str]) -> tuple[list[Image.Image], list[int], list[tuple[str, str]]]:
    """Load what can be loaded: returns (images, indices of those images in ``paths``, skipped)."""
    images, ok, skipped = [], [], []
    for i, p in enumerate(paths):
        try:
            images.append(load_image(p))
            ok.append(i)
        except CorruptImageError as exc:
            log.warning("skipping %s", exc)
            skipped.append((exc.path, exc.reason))
    return images, ok, skipped
