"""``clair-vec serve``: the HTTP search service, in one process or on Ray Serve."""

from __future__ import annotations

import argparse

from clair_vec.cli.common import backend_args, int_range, model_arg, number_range


def cmd_serve(a: argparse.Namespace) -> None:
    from clair_vec.service.server import serve

    serve(a.model, a.collection, backend=a.backend, uri=a.uri, host=a.host, port=a.port, ray=a.ray, replicas=a.replicas,
          gallery_roots=a.gallery_root, max_upload_mb=a.max_upload_mb)  # fmt: skip


def add_commands(add) -> None:
    sv = add("serve", cmd_serve, "HTTP search service and drawing page for one collection")
    model_arg(sv)
    sv.add_argument("--collection", required=True, help="collection to serve (must exist)")
    backend_args(sv)
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on")
    sv.add_argument("--port", type=int_range(1, 65535), default=8000, help="port to listen on")
    sv.add_argument("--gallery-root", action="append", default=None, metavar="DIR",
                    help="serve thumbnails only of files under DIR (repeatable; None: any indexed file whose bytes still match)")
    sv.add_argument("--max-upload-mb", type=number_range(0, 1024), default=10.0, help="largest query image accepted")
    sv.add_argument("--ray", action="store_true", help="deploy on Ray Serve instead of one uvicorn process")
    sv.add_argument("--replicas", type=int_range(1, 256), default=1, help="Ray Serve replicas (needs a server backend when > 1)")
