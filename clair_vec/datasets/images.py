"""One image file: deciding what is an image file, reading and decoding it. The single decode path
of indexing, search, the service's uploads and thumbnails, and training: whatever fix an image
needs (modes, orientation) is made here, once."""

from __future__ import annotations

import io
import logging
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from clair_vec.errors import CorruptImageError

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})


@dataclass
class Listing:
    """What a folder walk found: the image files, and every other entry with why it is not one."""

    files: list[Path] = field(default_factory=list)
    ignored: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)


_SPECIAL = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
            (stat.S_ISSOCK, "a socket"))  # fmt: skip


def walk_images(folder: str | Path) -> Listing:
    """Every image file under ``folder``, recursively, in sorted order, and every entry that is not
    indexed with the reason: another kind of file, a FIFO or device (reading one could block or
    never end), a link whose target is gone, a link to a folder (not followed: a loop would never
    end), a folder that cannot be read. Nothing is passed over without a word."""
    out = Listing()

    def unreadable(exc: OSError) -> None:
        out.ignored.append((str(exc.filename), f"cannot read this folder ({exc.strerror or type(exc).__name__})"))

    for root, dirs, names in os.walk(folder, onerror=unreadable):
        dirs.sort()
        for d in list(dirs):
            if os.path.islink(os.path.join(root, d)):
                dirs.remove(d)
                out.ignored.append((os.path.join(root, d), "a symbolic link to a folder, not followed (index its target directly)"))
        for name in sorted(names):
            path = os.path.join(root, name)
            reason = not_an_image(path)
            if reason is None:
                out.files.append(Path(path))
            else:
                out.ignored.append((path, reason))
    out.files.sort()
    return out


def not_an_image(path: str, *, any_suffix: bool = False) -> str | None:
    """Why ``path`` is not indexed, or None for an image file (``any_suffix``: a file named
    explicitly is tried whatever its name)."""
    try:
        st = os.stat(path)  # follows a link to its target
    except FileNotFoundError:
        return "a symbolic link whose target does not exist"
    except OSError as exc:
        return f"cannot read it ({exc.strerror or type(exc).__name__})"
    for test, kind in _SPECIAL:
        if test(st.st_mode):
            return f"not a regular file: {kind}"
    if stat.S_ISDIR(st.st_mode):
        return "a folder"
    suffix = Path(path).suffix.lower()
    if suffix not in IMAGE_SUFFIXES and not any_suffix:
        return f"not an image file name (suffix {suffix or '(none)'!r}; indexed: {' '.join(sorted(IMAGE_SUFFIXES))})"
    return None


def image_files(folder: str | Path) -> list[Path]:
    """Every image file under ``folder``, recursively, in sorted order (see :func:`walk_images`)."""
    return walk_images(folder).files


#: 16-bit grayscale PNG/TIFF modes; ``convert("RGB")`` clips them (every pixel above 255 turns white)
_WIDE = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def to_rgb(im: Image.Image) -> Image.Image:
    """An 8-bit RGB image that looks like ``im``: wide integer and float pixels scaled to 0-255
    rather than clipped, transparency laid over white (a transparent sketch on black would be black
    on black), everything else by PIL's own conversion."""
    if im.mode in _WIDE or im.mode == "F":
        a = np.asarray(im, dtype=np.float64)
        peak = float(a.max(initial=0))
        # I;16 is 16-bit by definition; 32-bit "I" and float "F" say nothing, so their values decide
        top = 65535.0 if im.mode.startswith("I;16") else 1.0 if im.mode == "F" and peak <= 1.0 else 255.0 if peak <= 255 else 65535.0
        gray = np.clip(np.round(a * (255.0 / top)), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")


def decode_image(data: bytes, name: str) -> Image.Image:
    """Decode image bytes fully as upright 8-bit RGB (EXIF orientation applied, see :func:`to_rgb`);
    any failure (corrupt, truncated, a decompression bomb) raises :class:`CorruptImageError` naming
    ``name``. The one decode path for files, uploads, thumbnails and training."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            upright = ImageOps.exif_transpose(im)  # a phone's rotated JPEG is stored sideways
            return to_rgb(upright)
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
