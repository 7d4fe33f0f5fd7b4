"""Where a path lives: its nearest existing folder and the file system (mount point) holding it.

Shared by the model's tensor files and the stores' free-space checks, so that a full disk is
named the same way whichever of them the disk refused.
"""

from __future__ import annotations

import os
from pathlib import Path


def existing_ancestor(path: str | os.PathLike) -> Path:
    """``path`` or its nearest existing parent: where a store that is not created yet will live."""
    p = Path(os.path.abspath(path))
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def mount_point(path: str | os.PathLike) -> Path:
    p = existing_ancestor(path)
    while not os.path.ismount(p) and p != p.parent:
        p = p.parent
    return p
