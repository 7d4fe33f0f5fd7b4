"""Optional parts of clair_vec and the extra that installs each: a command that needs one that is
missing says so in one line, with the ``pip install`` that fixes it, before it starts any work.

The core (train, evaluate, the model) needs only torch, open_clip, NumPy, pluggy and Pillow. The
rest is opt-in, so that a Qdrant user is not made to install Milvus, Ray and a web server.
"""

from __future__ import annotations

import importlib

from clair_vec.errors import ClairVecError

# extra -> what it brings, in the words of a message
EXTRAS = {
    "milvus": "the Milvus backend",
    "qdrant": "the Qdrant backend",
    "ray": "Ray Train and Ray Data",
    "serve": "the HTTP service and its page",
    "report": "plots",
    "remote": "s3:// and parquet sources",
    "test": "the backend conformance suite (pytest)",
}
# backends that ship as extras of clair_vec (their own distributions, clair-vec-<name>)
BACKEND_EXTRAS = ("milvus", "qdrant")


class MissingExtraError(ClairVecError, ImportError):
    """An optional part of clair_vec is not installed; ``extra`` names what installs it."""

    def __init__(self, message: str, extra: str) -> None:
        super().__init__(message)
        self.extra = extra


def install_hint(extra: str) -> str:
    return f'pip install "clair-vec[{extra}]"'


def require(extra: str, *modules: str, needed_for: str) -> None:
    """Import ``modules`` (so a package installed without its own dependencies counts as missing
    too), or raise :class:`MissingExtraError` naming the extra that installs them."""
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            missing = getattr(exc, "name", None) or module
            raise MissingExtraError(
                f"{needed_for} needs the [{extra}] extra ({EXTRAS[extra]}), not installed here (no module {missing!r}): "
                f"{install_hint(extra)}",
                extra,
            ) from None
