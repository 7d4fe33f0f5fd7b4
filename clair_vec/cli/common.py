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
