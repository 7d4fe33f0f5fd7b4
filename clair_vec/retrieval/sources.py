"""What a user hands ``index`` and ``search``: files, folders, PIL images, arrays. No torch here.

Each input becomes an :class:`ImageSource`. Problems that only concern one file (missing, a name
that is not valid UTF-8, undecodable bytes) are reasons to skip that file, reported by name; a
malformed array (NaN, floats outside [0, 1]) is a caller's bug and raises before anything runs.
"""

from __future__ import annotations

import functools
import io
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
from PIL import Image, ImageOps

from clair_vec.datasets.images import IMAGE_SUFFIXES, decode_image, load_image, not_an_image, to_rgb, walk_images
from clair_vec.errors import CorruptImageError, DatasetError
from clair_vec.retrieval import remote
from clair_vec.store.ids import content_digest, file_record_id, record_id

ImageInput = str | Path | Image.Image | np.ndarray


#: why a record made from an in-memory image (named ``<image #i>``) cannot be re-embedded
NO_FILE = "indexed from an in-memory image: there is no file to read again"
#: why a re-embedded record is listed under ``changed``
CHANGED = "its bytes changed since the old collection indexed it; indexed as it is now"


def names_a_file(path: object) -> bool:
    """Whether a record's stored ``path`` names something to read again: not an in-memory image's
    ``<image #i>`` / ``<array #i>``, not empty."""
    return isinstance(path, str) and bool(path) and not path.startswith("<")


@dataclass
class ImageSource:
    name: str  # the path or URI, or "<image #i>" / "<array #i>" for in-memory images
    path: str | None = None  # what a record stores: a local path, or a URI without its credentials
    image: Image.Image | None = None
    label: str = ""
    problem: str | None = None  # why it cannot be indexed, when known before reading it
    fetch: Callable[[], bytes] | None = None  # the bytes of a remote image (clair_vec.retrieval.remote)


def printable(name: str) -> str:
    """A file name as text even when it is not valid UTF-8 (undecodable bytes as ``\\xNN``)."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def utf8_problem(path: str) -> str | None:
    """Why a file name cannot be stored as text, or None (names that are not valid UTF-8 reach
    Python as surrogate escapes; no database takes them)."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return "file name is not valid UTF-8, so no database can store it as text; rename the file to index it"
    return None


def is_under(path: str, roots: Sequence[str]) -> bool:
    """Whether ``path`` is one of ``roots`` or inside one (all already made absolute the same way:
    a prefix test alone would put ``/data/gallery2`` inside ``/data/gallery``)."""
    return any(path == r or path.startswith(r.rstrip(os.sep) + os.sep) for r in roots)


def _file(path: Path, label_from_folder: bool, *, stored: bool = True) -> ImageSource:
    # stored absolute, so thumbnails, stale-path cleanup and prune do not depend on the directory
    # a later process runs from
    name = os.path.abspath(path)
    problem = utf8_problem(name) if stored else None
    if problem is None and not path.is_file():
        problem = "file does not exist" if not os.path.lexists(name) else not_an_image(name, any_suffix=True) or "not a file"
    label = path.parent.name if label_from_folder and problem is None else ""
    return ImageSource(printable(name) if problem else name, path=name, label=label, problem=problem)


def as_query(src: ImageSource) -> ImageSource:
    """``src`` to search with: a query is read, never stored, so a local file whose name is not
    valid UTF-8 is searched as any other (indexing it is what no database could take)."""
    if src.problem is not None and src.path is not None and src.fetch is None and src.problem == utf8_problem(src.path):
        return _file(Path(src.path), False, stored=False)
    return src


def array_to_image(arr: np.ndarray, i: int) -> Image.Image:
    """An RGB image from ``(H, W)``/``(H, W, C)`` uint8 or float-in-[0, 1] data; anything else raises."""
    where = f"image array #{i}"
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)) or 0 in arr.shape[:2]:
        raise ValueError(f"{where} has shape {arr.shape}; expected (H, W), (H, W, 1), (H, W, 3) or (H, W, 4)")
    if arr.dtype == np.uint8:
        data = arr
    elif np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{where} contains NaN or infinity; pass finite values in [0, 1] or uint8 in [0, 255]")
        lo, hi = float(arr.min()), float(arr.max())
        if lo < 0.0 or hi > 1.0:
            raise ValueError(
                f"{where} is float with values in [{lo:g}, {hi:g}]; float images must lie in [0, 1] "
                "(divide 0-255 data by 255, or pass it as uint8)"
            )
        data = np.round(arr * 255).astype(np.uint8)
    elif np.issubdtype(arr.dtype, np.integer) and arr.size and 0 <= int(arr.min()) and int(arr.max()) <= 255:
        data = arr.astype(np.uint8)
    else:
        raise ValueError(f"{where} has dtype {arr.dtype}; pass uint8 in [0, 255] or floats in [0, 1]")
    return to_rgb(Image.fromarray(data))


def expand(
    images: ImageInput | Iterable[ImageInput],
    *,
    label_from_folder: bool = False,
    ignored: list[tuple[str, str]] | None = None,
) -> list[ImageSource]:
    """Sources for files, folders (recursively, sorted), PIL images and arrays, in input order.
    Entries of a folder that are not image files are appended to ``ignored`` with the reason."""
    if isinstance(images, (str, Path, Image.Image, np.ndarray)):
        images = [images]
    out: list[ImageSource] = []
    for i, item in enumerate(images):
        if isinstance(item, Path) and item.suffix.lower() in (".tar", ".parquet"):
            item = str(item)  # a shard or a parquet file given as a Path is read as one, not as an image file
        if isinstance(item, str) and remote.is_source(item):
            out += remote_sources(item, label_from_folder=label_from_folder, ignored=ignored)
        elif isinstance(item, (str, Path)):
            p = Path(item)
            if p.is_dir():
                listing = walk_images(p)
                out += [_file(f, label_from_folder) for f in listing.files]
                if ignored is not None:
                    ignored += [(printable(os.path.abspath(path)), reason) for path, reason in listing.ignored]
            else:
                out.append(_file(p, label_from_folder))
        elif isinstance(item, Image.Image):
            out.append(ImageSource(f"<image #{i}>", image=to_rgb(ImageOps.exif_transpose(item))))
        elif isinstance(item, np.ndarray):
            out.append(ImageSource(f"<array #{i}>", image=array_to_image(item, i)))
        else:
            raise TypeError(f"cannot read {type(item).__name__} as an image; pass paths, folders, PIL images or numpy arrays")
    return out


def remote_sources(item: str, *, label_from_folder: bool = False, ignored: list[tuple[str, str]] | None = None) -> list[ImageSource]:
    """Sources of a URL, an ``s3://`` object or prefix, webdataset shards (a brace pattern names
    several) or a parquet file of images."""
    if not remote.is_remote(item):  # stored absolute, as local files are: a later process may run elsewhere
        item = os.path.abspath(item)
    if remote.is_shard(item):
        out = []
        for shard in remote.expand_braces(item):
            out += [ImageSource(m.name, path=m.name, label=m.label if label_from_folder else "", fetch=m.read)
                    for m in remote.shard_members(shard)]  # fmt: skip
        return out
    if item.lower().endswith(".parquet") and not remote.is_remote(item):
        return [ImageSource(name, path=name, fetch=_given(data)) for name, data in remote.parquet_images(item)]
    if item.startswith("s3://") and Path(item).suffix.lower() not in IMAGE_SUFFIXES:
        uris = remote.list_s3(item, ignored)
    else:
        uris = [item]
    out = []
    for uri in uris:
        name = remote.shown(uri)
        folders = urlsplit(name).path.rstrip("/").split("/")[1:-1]  # the path's folders, never the host or the query
        label = folders[-1] if label_from_folder and folders else ""
        out.append(ImageSource(name, path=name, label=label, fetch=functools.partial(remote.fetch, uri)))
    return out


def is_elsewhere(name: str) -> bool:
    """A URL, an ``s3://`` name, a webdataset shard (or a member of one), or a parquet file (or a row of one)."""
    return remote.is_source(name) or remote.split_member(name) is not None


def stored_source(
    name: str, label: str = "", *, data: bytes | None = None, problem: str | None = None, skip_unreadable: bool = False
) -> ImageSource:
    """The source of an image by the name a record stores (``reindex``), or a Ray row carries: a
    URL, an ``s3://`` object, a shard's member or a parquet file's row, read by
    :func:`remote.stored_bytes` unless its bytes are given as ``data``; or a local file.

    A local shard or parquet file that is gone is a reason to skip its images, as a file that is
    gone is. A remote shard that cannot be fetched (credentials, an unreachable host) stops the
    run with its one line, unless ``skip_unreadable`` (the Ray job's read tasks, where a raised
    error would fail the whole job): then it too skips its images."""
    problem = problem or utf8_problem(name)
    if data is not None:
        fetch: Callable[[], bytes] | None = _given(data)
    elif is_elsewhere(name):
        fetch = functools.partial(_stored_bytes, name, skip_unreadable or not remote.is_remote(name))
    else:
        fetch = None
    return ImageSource(printable(name) if problem else name, path=name, label=label, problem=problem, fetch=fetch)


def _stored_bytes(name: str, skip_unreadable: bool) -> bytes:
    try:
        return remote.stored_bytes(name)
    except DatasetError as exc:
        if not skip_unreadable:
            raise
        raise CorruptImageError(name, str(exc)) from None
    except OSError as exc:
        raise CorruptImageError(name, f"{type(exc).__name__}: {exc.strerror or exc}") from None


def _given(data: bytes) -> Callable[[], bytes]:
    return lambda: data


def read(src: ImageSource, domain: str) -> tuple[str, bytes | None]:
    """``(record id, file bytes)`` without decoding; in-memory images hash their PNG encoding."""
    if src.problem:
        raise CorruptImageError(src.name, src.problem)
    if src.fetch is not None:
        data = src.fetch()
        return record_id(domain, content_digest(data)), data
    if src.image is not None:
        buf = io.BytesIO()
        src.image.save(buf, format="PNG")
        return record_id(domain, content_digest(buf.getvalue())), None
    try:
        return file_record_id(src.path, domain)  # type: ignore[arg-type]
    except OSError as exc:
        raise CorruptImageError(src.name, f"{type(exc).__name__}: {exc.strerror or exc}") from exc


def decode(src: ImageSource, data: bytes | None = None) -> Image.Image:
    """The RGB image of a source (``data``: its file bytes, if already read)."""
    if src.image is not None:
        return src.image
    if src.problem:
        raise CorruptImageError(src.name, src.problem)
    if data is None and src.fetch is not None:
        data = src.fetch()
    return load_image(src.path) if data is None else decode_image(data, src.name)  # type: ignore[arg-type]
