"""Reading and writing tensor files (checkpoints, feature caches, trainer state) safely.

Files are loaded with ``torch.load(weights_only=True)``: tensors, numbers, strings and plain
containers only. A file that holds anything else (a pickled object whose loading would run code)
is refused with :class:`UnsafeCheckpointError`, never executed. Writes are atomic.
"""

from __future__ import annotations

import errno
import os
import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from clair_vec.errors import UnsafeCheckpointError, WeightsNotFoundError
from clair_vec.file_systems import mount_point


def load_tensor_file(path: str | Path, *, what: str = "checkpoint", map_location: str = "cpu") -> Any:
    path = Path(path)
    if not path.is_file():
        state = ("is a folder, not a file" if path.is_dir() else
                 "is not a regular file (a pipe, a device or a socket)" if path.exists() else "does not exist")  # fmt: skip
        raise WeightsNotFoundError(f"{what} file {str(path)!r} {state}")
    with open(path, "rb") as f:
        head = f.read(2)
    if head not in (b"PK", b"\x80\x02") and head[:1] != b"\x80":  # torch files: a zip archive, or a legacy pickle
        raise UnsafeCheckpointError(f"{what} {str(path)!r} is truncated or not a torch file (it starts with {head!r}); "
                                    "expected a file written by clair-vec")
    try:
        with warnings.catch_warnings():  # torch's aside on pickle protocols is about a file we refuse anyway
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UnsafeCheckpointError(
            f"refusing to load {what} {str(path)!r}: it holds pickled objects beyond tensors and plain containers, and "
            f"loading them could run code ({_unpickler_reason(exc)}). clair_vec never writes such files: if it came "
            "from elsewhere, do not trust it; re-create it with clair-vec (train / bootstrap-clip)."
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, IndexError, KeyError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise UnsafeCheckpointError(
            f"{what} {str(path)!r} is truncated or not a torch file ({first}); expected a file written by clair-vec"
        ) from None


def _unpickler_reason(exc: Exception) -> str:
    """What torch's safe unpickler found, without its advice to load the file unsafely instead."""
    advice = ("Weights only load failed", "Check the documentation", "Please file an issue")
    found = [" ".join(p.split()) for p in re.split(r"\n\s*\n", str(exc)) if p.strip() and not p.strip().startswith(advice)]
    return (found[0][:200] if found else "") or "objects other than tensors"


def write_tensor_file(obj: Any, path: str | Path) -> None:
    """``torch.save``, with a write the disk refused raised as the :class:`OSError` it is: torch
    itself reports it as a ``RuntimeError`` ("unexpected pos ..."), which says nothing of a disk."""
    path = Path(path)
    try:
        torch.save(obj, path)
    except RuntimeError as exc:
        refused = _write_refused(path)
        if refused is None:
            raise
        # a full disk is named by its file system; a size limit by the folder of the file it cut
        where = mount_point(path) if refused == errno.ENOSPC else path.resolve().parent
        raise OSError(refused, os.strerror(refused), str(where)) from exc


def _write_refused(path: Path) -> int | None:
    """ENOSPC or EFBIG when that is why a write of ``path`` (still there, partly written) failed."""
    import shutil

    try:
        if shutil.disk_usage(path.parent).free < 2**20:
            return errno.ENOSPC
        import resource  # POSIX only: elsewhere there is no process file-size limit to have hit

        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        if limit != resource.RLIM_INFINITY and path.exists() and path.stat().st_size + 2**20 >= limit:
            return errno.EFBIG
    except (OSError, ValueError, ImportError):
        pass
    return None


def save_tensor_file(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temporary file, then an atomic rename: never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write_tensor_file(obj, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
