"""Reading and writing tensor files (checkpoints, feature caches, trainer state) safely.

Files are loaded with ``torch.load(weights_only=True)``: tensors, numbers, strings and plain
containers only. A file that holds anything else (a pickled object whose loading would run code)
is refused with :class:`UnsafeCheckpointError`, never executed. Writes are atomic.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch

from clair_vec.errors import UnsafeCheckpointError, WeightsNotFoundError


def load_tensor_file(path: str | Path, *, what: str = "checkpoint", map_location: str = "cpu") -> Any:
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"{what} file {str(path)!r} does not exist")
    with open(path, "rb") as f:
        head = f.read(2)
    if head not in (b"PK", b"\x80\x02") and head[:1] != b"\x80":  # torch files: a zip archive, or a legacy pickle
        raise UnsafeCheckpointError(f"{what} {str(path)!r} is truncated or not a torch file (it starts with {head!r}); "
                                    "expected a file written by clair-vec")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UnsafeCheckpointError(
            f"refusing to load {what} {str(path)!r}: it holds pickled objects beyond tensors and plain containers, and "
            f"loading them could run code ({str(exc).splitlines()[0]}). clair_vec never writes such files: if it came "
            "from elsewhere, do not trust it; re-create it with clair-vec (train / bootstrap-clip)."
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, IndexError, KeyError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise UnsafeCheckpointError(
            f"{what} {str(path)!r} is truncated or not a torch file ({first}); expected a file written by clair-vec"
        ) from None


def save_tensor_file(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temporary file, then an atomic rename: never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
