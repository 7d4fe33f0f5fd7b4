"""One image file: deciding what is an image file, reading and decoding it. The single decode path
of indexing, search, the service's uploads and thumbnails, and training: whatever fix an image
needs (modes, orientation) is made here, once."""

from __future__ import annotations

import io
import logging
import os
import stat
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from clair_vec.errors import CorruptImageError

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
#: the only formats Pillow may open: whatever a file is named, an upload or a gallery file in any
#: other format (EPS, which Pillow hands to Ghostscript; PSD; ...) is refused before any decoder runs
IMAGE_FORMATS = ("JPEG", "PNG", "BMP", "GIF", "WEBP", "TIFF")  # JPEG includes phones' MPO files
#: images are decoded no larger than needed: the shorter side is reduced by a whole factor while it
#: stays at least this long (twice the 224 pixels CLIP sees, so the model's own resize still
#: averages over several source pixels); smaller images are decoded exactly as stored
DECODE_MIN_SIDE = 448
#: the longest side over the shortest that a decoded image keeps; past it the long side is cut to
#: its middle. A model scales the short side up to its input size and the long side with it, so a
#: valid 117 KB PNG of 1 x 30,000,000 pixels became gigabytes of tensor; at 32:1 the worst is 19 MB
#: at 224 pixels. CLIP's preprocessing then keeps only the middle square, which the crop keeps too
#: (up to a sub-pixel shift of its grid); a panorama is 10:1, a full-page phone screenshot 50:1
MAX_ASPECT = 32
_PNG_END = b"IEND"  # the last chunk's type; its checksum is not checked (Pillow ignores it too)


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
        a = np.asarray(im)  # in its own depth: a float64 copy of a 40 Mpx image would be 320 MB
        peak = float(a.max(initial=0))
        # I;16 is 16-bit by definition; 32-bit "I" and float "F" say nothing, so their values decide
        top = 65535.0 if im.mode.startswith("I;16") else 1.0 if im.mode == "F" and peak <= 1.0 else 255.0 if peak <= 255 else 65535.0
        gray = np.empty(a.shape, np.uint8)
        rows = max(1, (1 << 20) // max(1, a.shape[1]))  # scaled a million pixels at a time, in float64 as before
        for s in range(0, a.shape[0], rows):
            gray[s : s + rows] = np.clip(np.round(a[s : s + rows].astype(np.float64) * (255.0 / top)), 0, 255)
        return Image.fromarray(gray, "L").convert("RGB")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")


class DecodeBudget:
    """Bytes of decoded pixels the process holds at once. Decoding is where a small file becomes
    large (a 92 KB PNG of 6300x6300 16-bit pixels is 79 MB decoded), so concurrent decodes wait for
    room instead of adding up; one image larger than the whole budget decodes alone."""

    def __init__(self, limit_bytes: int) -> None:
        self.limit = limit_bytes
        self.used = 0
        self.peak = 0
        self._cond = threading.Condition()

    @contextmanager
    def hold(self, nbytes: int) -> Iterator[None]:
        nbytes = min(max(nbytes, 0), self.limit)
        with self._cond:
            self._cond.wait_for(lambda: self.used + nbytes <= self.limit)
            self.used += nbytes
            self.peak = max(self.peak, self.used)
        try:
            yield
        finally:
            with self._cond:
                self.used -= nbytes
                self._cond.notify_all()


#: CLAIR_VEC_DECODE_BUDGET_MB sets it (default 256)
DECODE_BUDGET = DecodeBudget(int(float(os.environ.get("CLAIR_VEC_DECODE_BUDGET_MB", "256")) * 2**20))


def reduce_factor(size: tuple[int, int]) -> int:
    """The whole factor an image of ``size`` is reduced by when decoded (1: kept as stored)."""
    return max(1, min(size) // DECODE_MIN_SIDE)


#: a decode that held this much hands freed memory back to the system when it is done
TRIM_ABOVE = 32 * 2**20


def _release_freed_memory() -> None:
    """glibc keeps what a thread freed in that thread's arena: after large decodes in many threads
    the process held hundreds of MB it no longer used. ``malloc_trim`` returns it (every arena)."""
    if _libc is not None:
        _libc.malloc_trim(0)


def _load_libc() -> Any:
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        return libc
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim
        return None


_libc = _load_libc()


#: what to_rgb may hold per pixel at once: transparency laid over white makes three RGBA copies and the RGB
TO_RGB_BYTES = 16


def _bytes_per_pixel(mode: str) -> int:
    """What Pillow stores per pixel (two-band modes take four bytes, as RGBA does)."""
    if mode.startswith("I;16"):
        return 2
    return {"1": 1, "L": 1, "P": 1}.get(mode, 4)


def _reduced(im: Image.Image, factor: int) -> Image.Image:
    """``im`` made ``factor`` times smaller by averaging blocks of pixels, in its own depth."""
    if factor <= 1:
        return im
    if im.mode in _WIDE:  # Pillow cannot reduce 16-bit modes; average in NumPy without a full-size float copy
        a = np.asarray(im)
        h, w = (a.shape[0] // factor) * factor, (a.shape[1] // factor) * factor
        blocks = a[:h, :w].reshape(h // factor, factor, w // factor, factor)
        mean = blocks.mean(axis=(1, 3))
        small = Image.fromarray(np.round(mean).astype(np.int32 if im.mode == "I" else np.uint16))  # I or I;16
        small.info.update(im.info)  # its EXIF orientation among them
        return small
    if im.mode in ("1", "P"):  # Pillow cannot reduce these either: as 8-bit, transparency kept
        im = im.convert("RGBA" if im.mode == "P" and "transparency" in im.info else "L" if im.mode == "1" else "RGB")
    return im.reduce(factor)


def _check_complete(fmt: str | None, data: bytes) -> None:
    # Pillow decodes a PNG whose last chunks are missing without a word; a file cut short is corrupt
    if fmt == "PNG" and _PNG_END not in data:
        raise OSError("the PNG ends before its IEND chunk: the file is truncated")


def _middle(im: Image.Image) -> Image.Image:
    """``im`` with its long side cut to its middle :data:`MAX_ASPECT` times the short side."""
    w, h = im.size
    if w > MAX_ASPECT * h:
        left = (w - MAX_ASPECT * h) // 2
        return im.crop((left, 0, left + MAX_ASPECT * h, h))
    if h > MAX_ASPECT * w:
        top = (h - MAX_ASPECT * w) // 2
        return im.crop((0, top, w, top + MAX_ASPECT * w))
    return im


def decode_image(data: bytes, name: str) -> Image.Image:
    """Decode image bytes as upright 8-bit RGB (EXIF orientation applied, see :func:`to_rgb`),
    no larger than the model needs (:data:`DECODE_MIN_SIDE`) and within the process's decode
    budget (:data:`DECODE_BUDGET`); only :data:`IMAGE_FORMATS` are opened. Any failure (corrupt,
    truncated, another format, a decompression bomb) raises :class:`CorruptImageError` naming
    ``name``. The one decode path for files, uploads, thumbnails and training."""
    try:
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as im:
            _check_complete(im.format, data)
            factor = reduce_factor(im.size)
            if factor > 1 and im.format in ("JPEG", "MPO"):  # JPEG decodes at 1/2, 1/4 or 1/8 size directly
                im.draft("RGB", (im.size[0] // factor, im.size[1] // factor))
            w, h = im.size
            f = reduce_factor(im.size)
            # at full size: the pixels, and the copy a mode is reduced from (8-bit for 1 and P, NumPy's
            # for 16-bit, a premultiplied one for alpha); at the reduced size: to_rgb's copies
            conversion = (4 if im.mode in ("1", "P") else _bytes_per_pixel(im.mode) if im.mode in _WIDE
                          else 4 if f > 1 and im.mode in ("RGBA", "LA", "PA", "La", "RGBa") else 0)  # fmt: skip
            need = w * h * (_bytes_per_pixel(im.mode) + conversion) + (w // f) * (h // f) * TO_RGB_BYTES
            try:
                with DECODE_BUDGET.hold(need):
                    im.load()
                    small = _reduced(im, f)
                    upright = ImageOps.exif_transpose(small)  # a phone's rotated JPEG is stored sideways
                    return to_rgb(_middle(upright))
            finally:
                if need >= TRIM_ABOVE:
                    im.close()  # its pixels go now, not when the caller's garbage is collected
                    _release_freed_memory()
    except CorruptImageError:
        raise
    except UnidentifiedImageError as exc:
        raise CorruptImageError(name, f"not an image in a format clair_vec reads ({', '.join(IMAGE_FORMATS)})") from exc
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
