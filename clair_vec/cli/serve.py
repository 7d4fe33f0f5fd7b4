"""``clair-vec serve``: the HTTP search service, in one process or on Ray Serve."""

from __future__ import annotations

import argparse

from clair_vec.cli.common import backend_args, device_arg, int_range, model_arg, number_range, require_model
from clair_vec.errors import ClairVecError
from clair_vec.extras import require


def cmd_serve(a: argparse.Namespace) -> None:
    require_model(a)
    require("serve", "fastapi", "uvicorn", "multipart", "prometheus_client", needed_for="clair-vec serve")
    from clair_vec.service.security import default_allowed_hosts
    from clair_vec.service.server import serve
    from clair_vec.service.settings import ServiceSettings, read_api_key

    if a.ray and (a.ssl_certfile or a.ssl_keyfile):
        # Ray Serve's HTTP proxy, not uvicorn, listens with --ray: the flags would be silently ignored
        raise ClairVecError("--ssl-certfile/--ssl-keyfile do not apply with --ray: terminate TLS at a load balancer or "
                            "proxy in front of Ray Serve, or serve without --ray")  # fmt: skip
    key = None if a.ray else read_api_key(a.api_key_file)  # Ray replicas read it on their own nodes
    settings = ServiceSettings(gallery_roots=a.gallery_root, max_upload_bytes=int(a.max_upload_mb * 2**20),
                               max_inflight=a.max_inflight, batch_size=a.batch_size, batch_wait_ms=a.batch_wait_ms,
                               batch_wait_share=a.batch_wait_share,
                               max_connections=a.max_connections, header_timeout_s=a.header_timeout,
                               idle_timeout_s=a.idle_timeout, shutdown_timeout_s=a.shutdown_timeout, api_key=key, cors_origins=tuple(a.cors_origin or ()),
                               docs=a.docs, replica_header=a.replica_header, follow_interval_s=a.follow_interval,
                               allowed_hosts=default_allowed_hosts(a.host, tuple(a.allowed_host or ())),
                               device=a.device, threads=a.threads)  # fmt: skip
    if a.ray:
        from clair_vec.ray_runtime import leave_through_exit_process
        from clair_vec.service.ray_serve import run

        leave_through_exit_process()  # cli.main leaves through exit_process, which ends the Ray session

        run(a.model, a.collection, backend=a.backend, uri=a.uri, host=a.host, port=a.port, replicas=a.replicas,
            settings=settings, api_key_file=a.api_key_file)  # fmt: skip
        return
    serve(a.model, a.collection, settings, backend=a.backend, uri=a.uri, host=a.host, port=a.port, replicas=a.replicas,
          ssl_certfile=a.ssl_certfile, ssl_keyfile=a.ssl_keyfile)  # fmt: skip


def add_commands(add) -> None:
    sv = add("serve", cmd_serve, "HTTP search service and drawing page for one collection")
    model_arg(sv)
    device_arg(sv)
    sv.add_argument("--collection", required=True, help="collection to serve, or an alias to follow (must exist)")
    sv.add_argument("--follow-interval", type=number_range(-1e-9, 3600), default=2.0,
                    help="seconds between checks of where an alias points (0: never re-check)")  # fmt: skip
    backend_args(sv)
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on")
    sv.add_argument("--port", type=int_range(1, 65535), default=8000, help="port to listen on")
    sv.add_argument("--gallery-root", action="append", default=None, metavar="DIR",
                    help="serve thumbnails only of files under DIR, and show hits' paths relative to it (repeatable; "
                    "default: any indexed file whose bytes still match, shown by file name)")  # fmt: skip
    sv.add_argument("--max-upload-mb", type=number_range(0, 1024), default=10.0, help="largest query image accepted")
    sec = sv.add_argument_group("security")
    sec.add_argument("--api-key-file", default=None, metavar="FILE",
                     help="require this file's API key on every route but /healthz, /readyz and the page "
                     "(default: $CLAIR_VEC_API_KEY if set, else no key)")  # fmt: skip
    sec.add_argument("--ssl-certfile", default=None, metavar="PEM", help="serve HTTPS with this certificate")
    sec.add_argument("--ssl-keyfile", default=None, metavar="PEM", help="the certificate's private key")
    sec.add_argument("--cors-origin", action="append", default=None, metavar="ORIGIN",
                     help="let web pages of ORIGIN (e.g. https://app.example.com) call the service (repeatable; "
                     "default: cross-origin requests are refused)")  # fmt: skip
    sec.add_argument("--allowed-host", action="append", default=None, metavar="NAME",
                     help="a host name clients may reach the service by (repeatable; default: the loopback names when "
                     "--host is loopback, else any); other Host headers get 400 (DNS rebinding)")  # fmt: skip
    sec.add_argument("--docs", action="store_true", help="serve the OpenAPI page at /docs and /openapi.json")
    sec.add_argument("--replica-header", action="store_true", help="send x-served-by: host:pid (load-balancer debugging)")
    lim = sv.add_argument_group("limits")
    lim.add_argument("--max-inflight", type=int_range(1, 100_000), default=64,
                     help="searches queued or running at once; past it, 503 with Retry-After")  # fmt: skip
    lim.add_argument("--batch-size", type=int_range(1, 1024), default=16,
                     help="concurrent searches served by one CLIP pass and one engine call")  # fmt: skip
    lim.add_argument("--batch-wait-ms", type=number_range(-1e-9, 1000), default=2.0,
                     help="longest wait for more searches to batch with, only while others are arriving; 0: never wait")  # fmt: skip
    lim.add_argument("--batch-wait-share", type=number_range(-1e-9, 1), default=0.05,
                     help="longest wait for the clients of the last batch to send their next search, as a share of "
                     "that batch's run time (only while fewer wait than were recently in flight together)")  # fmt: skip
    lim.add_argument("--threads", type=int_range(1, 1024), default=None,
                     help="torch threads for the CLIP forward on a CPU (default: one per core; one per replica with "
                     "--ray). With a small model the HTTP and engine threads are the bottleneck and 1 serves more "
                     "queries a second; a ViT-B-32 wants every core (docs/service.md, 'Batching and limits')")  # fmt: skip
    lim.add_argument("--max-connections", type=int_range(1, 1_000_000), default=512,
                     help="open connections; past it, new requests get 503")  # fmt: skip
    lim.add_argument("--header-timeout", type=number_range(0, 3600), default=10.0,
                     help="seconds a connection has to send a whole request head")  # fmt: skip
    lim.add_argument("--idle-timeout", type=number_range(0, 3600), default=5.0, help="seconds an idle keep-alive connection stays")
    lim.add_argument("--shutdown-timeout", type=number_range(0, 3600), default=20.0,
                     help="seconds requests in flight get to finish after SIGTERM before they are cut (under "
                          "Kubernetes' default 30 s grace period)")  # fmt: skip
    sv.add_argument("--ray", action="store_true", help="deploy on Ray Serve instead of one uvicorn process")
    sv.add_argument("--replicas", type=int_range(1, 256), default=1, help="Ray Serve replicas (needs a server backend when > 1)")
