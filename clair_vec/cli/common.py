"""What several commands share: the help format, backend and model options, ``--filter`` parsing."""

from __future__ import annotations

import argparse

from clair_vec.errors import ClairVecError

EPILOG = "Options show their default where they have one. Errors are printed as 'clair-vec: error: ...' with exit status 2."


class Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a default only where it means something: not for required arguments, switches that
    are off, or a None whose meaning the help text already spells out."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.required or action.default in (None, False, argparse.SUPPRESS) or "%(default)" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def backend_args(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--backend", default=None, help="milvus, qdrant, or an installed plugin's name "
                    "(default: $CLAIR_VEC_BACKEND or milvus)")  # fmt: skip
    sp.add_argument("--uri", default=None, help="Milvus Lite store (*.db) / Qdrant Edge directory, or a server URL "
                    "(default: the backend's embedded default in the current directory)")  # fmt: skip


def backend_option_arg(sp: argparse.ArgumentParser, what: str) -> None:
    sp.add_argument("--backend-option", action="append", default=[], metavar="KEY=VALUE",
                    help=f"an option of the backend (repeatable; JSON for a dict), {what}")  # fmt: skip


def backend_options(a: argparse.Namespace) -> dict:
    """``--backend-option`` pairs as the backend's keyword options; a bad pair is one line."""
    from clair_vec.store.deployment_check import parse_options

    try:
        return parse_options(getattr(a, "backend_option", None) or [], flag="--backend-option")
    except ValueError as exc:
        raise ClairVecError(str(exc)) from None


def device_arg(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--device", default="auto", help="where the model runs: auto (CUDA when there is a GPU), cpu, cuda or cuda:N")


def model_arg(sp: argparse.ArgumentParser, required: bool = False) -> None:
    sp.add_argument("--model", default=None, required=required, help="checkpoint directory written by train "
                    "(default: $CLAIR_VEC_MODEL)")  # fmt: skip


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


def require_model(a: argparse.Namespace) -> None:
    """The model, checked before anything heavy is imported: a missing ``--model`` is a one-line
    error at once, in the flag's own words."""
    import os

    if not getattr(a, "model", None) and not os.environ.get("CLAIR_VEC_MODEL"):
        raise ClairVecError("--model is required (or set $CLAIR_VEC_MODEL): the checkpoint directory `clair-vec train` "
                            "wrote (`make demo` writes clair_demo/model)")  # fmt: skip


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
