"""Every limit and switch of the search service in one place, with the defaults ``clair-vec serve``
shows in its help. A limit is a promise to the operator: past it the service answers at once, with a
status that says why (413, 422, 429-like 503 with ``Retry-After``), instead of slowing everyone down.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from clair_vec.errors import ClairVecError

MAX_TOP_K = 200
API_KEY_ENV = "CLAIR_VEC_API_KEY"


@dataclass(frozen=True)
class ServiceSettings:
    #: thumbnails only of files under these folders; hits show paths relative to them
    gallery_roots: Sequence[str | Path] | None = None
    max_upload_bytes: int = 10 * 1024 * 1024
    max_top_k: int = MAX_TOP_K
    max_labels: int = 100  # label filter values in one query
    max_parts: int = 32  # values of each of text, like, unlike and parts in one query
    max_text_chars: int = 1000
    max_json_depth: int = 16
    #: searches waiting or running at once; the next one gets 503 with Retry-After
    max_inflight: int = 64
    #: searches gathered into one CLIP pass and one engine call, and how long to wait for company
    batch_size: int = 16
    batch_wait_ms: float = 2.0
    #: the longest wait for the clients of the last batch to come back, as a share of its run time
    #: (service/batcher.py; docs/service.md has what it gained for 16 clients of a ViT-B-32)
    batch_wait_share: float = 0.05
    #: open connections; uvicorn answers 503 past it (uvicorn's limit_concurrency)
    max_connections: int = 512
    #: a connection that has not sent a whole request head within this time is closed
    header_timeout_s: float = 10.0
    #: an idle keep-alive connection is closed after this time
    idle_timeout_s: float = 5.0
    #: a request body that stops arriving for this long is answered 408
    body_timeout_s: float = 30.0
    #: after SIGTERM, requests in flight get this long to finish (a stalled upload would otherwise
    #: keep the process until its body deadline, past an orchestrator's grace period)
    shutdown_timeout_s: float = 20.0
    api_key: str | None = field(default=None, repr=False)
    cors_origins: tuple[str, ...] = ()
    #: host names the service answers to (the Host header, port ignored); None: any. A page on
    #: another name that rebinds its DNS to this address is refused (``serve`` fills in the
    #: loopback names when it listens on loopback)
    allowed_hosts: tuple[str, ...] | None = None
    docs: bool = False  # /docs and /openapi.json
    #: how often an alias being served is resolved again (0: never; see follow.py)
    follow_interval_s: float = 2.0
    replica_header: bool = False  # x-served-by: host:pid, for debugging a load balancer
    #: where the model runs (clair_vec.method.devices): auto (CUDA when there is a GPU), cpu, cuda, cuda:N
    device: str | None = None
    #: torch threads for the CLIP forward on a CPU (None: torch's default, one per core; Ray gives a
    #: replica one). The HTTP and engine threads need CPU too: see ``clair-vec serve --threads``
    threads: int | None = None


def read_api_key(api_key_file: str | Path | None = None) -> str | None:
    """The service's API key: from ``--api-key-file`` (a file holding only the key), else from
    ``$CLAIR_VEC_API_KEY``, else none (the service is open). Never from the command line: it would
    show in ``ps`` and shell history. A key that is set but empty, or that no HTTP header can carry,
    is refused: served as it is, the first would leave the service open and the second closed."""
    if api_key_file is not None:
        path = Path(api_key_file)
        where = f"the API key file {str(path)!r}"
        try:
            key = path.read_bytes().decode("utf-8").strip()
        except OSError as exc:
            raise ClairVecError(f"cannot read {where}: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise ClairVecError(f"{where} is not UTF-8 text; write the key in it as one line of letters, digits and "
                                "punctuation") from None  # fmt: skip
        return _usable(key, where)
    if API_KEY_ENV not in os.environ:
        return None
    return _usable(os.environ[API_KEY_ENV].strip(), f"${API_KEY_ENV}")


def _usable(key: str, where: str) -> str:
    if not key:
        raise ClairVecError(f"{where} is set but empty: give it the key, or unset it to serve without one")
    if not all("!" <= c <= "~" for c in key):  # what a header value carries as it is: visible ASCII, no space
        raise ClairVecError(f"{where} holds a space, a line break or a character outside ASCII, which a client "
                            "cannot send in a header; make the key one line of letters, digits and punctuation")  # fmt: skip
    return key
