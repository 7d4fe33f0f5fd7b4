"""One progress-bar policy for the whole package: tqdm on a terminal, quiet in CI and workers."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from tqdm.auto import tqdm


def _wanted(enabled: bool) -> bool:
    if not enabled or os.environ.get("CLAIR_VEC_PROGRESS", "1") == "0":
        return False
    return True


@contextmanager
def progress_bar(*, total: int, desc: str, unit: str = "it", enabled: bool = True) -> Iterator[tqdm]:
    """A tqdm bar that writes to stderr; disabled bars still accept ``update``."""
    # mininterval keeps log files (CI, Ray) from filling with one line per update
    bar = tqdm(
        total=total,
        desc=desc,
        unit=unit,
        disable=not _wanted(enabled),
        file=sys.stderr,
        mininterval=1.0 if not sys.stderr.isatty() else 0.1,
        dynamic_ncols=True,
    )
    try:
        yield bar
    finally:
        bar.close()
