"""What several commands share: the help format, backend and model options, ``--filter`` parsing."""

from __future__ import annotations

import argparse

from clair_vec.errors import ClairVecError

EPILOG = "Every option's default is shown. Errors are printed as 'clair-vec: error: ...' with exit status 2."
Formatter = argparse.ArgumentDefaultsHelpFormatter


def backend_args(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--backend", default=None, help="milvus, qdrant, or an installed plugin's name "
                    "(None: $CLAIR_VEC_BACKEND or milvus)")  # fmt: skip
    sp.add_argument("--uri", default=None, help="Milvus Lite store (*.db) / Qdrant Edge directory, or a server URL "
                    "(None: the backend's embedded default in the current directory)")  # fmt: skip


def model_arg(sp: argparse.ArgumentParser, required: bool = False) -> None:
    sp.add_argument("--model", default=None, required=required, help="checkpoint directory written by train "
                    "(None: $CLAIR_VEC_MODEL)")  # fmt: skip


def int_range(lo: int, hi: int):
    """An argparse type: an integer from ``lo`` to ``hi``, refused with the range in the message."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer from {lo} to {hi}, got {text!r}") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"must be an integer from {lo} to {hi}, got {value}")
        return value

    parse.__name__ = f"integer {lo}-{hi}"
    return parse


def number_range(lo: float, hi: float):
    """An argparse type: a number in (``lo``, ``hi``], refused with the range in the message."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number above {lo:g} and at most {hi:g}, got {text!r}") from None
        if not lo < value <= hi:
            raise argparse.ArgumentTypeError(f"must be a number above {lo:g} and at most {hi:g}, got {value:g}")
        return value

    parse.__name__ = f"number {lo:g}-{hi:g}"
    return parse


#: what one query may ask for: the largest top_k of any built-in engine (Milvus: 16384)
MAX_TOP_K = 16384


def filters(items: list[str] | None) -> dict[str, list[str]] | None:
    """``--filter key=value`` options as a backend filter (a key repeated: OR; different keys: AND)."""
    if not items:
        return None
    out: dict[str, list[str]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ClairVecError(f"--filter {item!r} must look like key=value (e.g. domain=photo)")
        out.setdefault(key, []).append(value)
    return out
