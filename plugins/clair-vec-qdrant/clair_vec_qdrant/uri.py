"""Which URI means which Qdrant engine, and the defaults when a URI or key is not given.

- no URI, or a directory path: Qdrant Edge, in-process (:mod:`clair_vec_qdrant.edge`);
- ``http://`` / ``https://``: a Qdrant server, and ``local:/dir``: qdrant-client's local mode
  (both :mod:`clair_vec_qdrant.client`).

Nothing here imports an engine: the backends read their defaults from this module, and the
factory in the package's ``__init__`` uses :func:`uses_client` to pick one of them.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_PATH = "./clair_vec_qdrant"
#: where a Qdrant Edge store lives when no URI is given (before :data:`DEFAULT_PATH`)
PATH_ENV = "CLAIR_VEC_QDRANT_PATH"
#: where a server's API key comes from when no ``api_key`` option is given, in order (each also as ``*_FILE``)
API_KEY_ENV = ("CLAIR_VEC_QDRANT_API_KEY", "QDRANT_API_KEY")
LOCAL_PREFIX = "local:"


def uses_client(uri: str | None) -> bool:
    """Whether ``uri`` is for qdrant-client (a server URL or ``local:``) rather than Qdrant Edge."""
    return bool(uri and uri.startswith(("http://", "https://", LOCAL_PREFIX)))


def edge_path(uri: str | None) -> str:
    """The Qdrant Edge store directory ``uri`` names, or the default one when it names none."""
    return uri or os.environ.get(PATH_ENV) or DEFAULT_PATH


def local_path(uri: str | None) -> Path | None:
    """The directory of a ``local:`` URI; None for a server URL."""
    return Path(uri[len(LOCAL_PREFIX) :]) if uri and uri.startswith(LOCAL_PREFIX) else None
