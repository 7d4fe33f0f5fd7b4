"""``clair-vec serve``: run the app in one uvicorn process, or on Ray Serve replicas.

uvicorn runs with the service's connection limits (:class:`ServiceSettings`): a deadline for the
request head (:mod:`~clair_vec.service.protocol`), an idle timeout, a connection cap past which
new requests get 503, no ``server`` header, TLS when given a certificate and key.
"""

from __future__ import annotations

import errno
import socket
from pathlib import Path

from clair_vec.errors import ClairVecError
from clair_vec.service.app import create_app, open_retriever
from clair_vec.service.settings import ServiceSettings


def serve(
    model: str | Path | None,
    collection: str,
    settings: ServiceSettings | None = None,
    *,
    backend: str | None = None,
    uri: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    ray: bool = False,
    replicas: int = 1,
    ssl_certfile: str | None = None,
    ssl_keyfile: str | None = None,
) -> None:
    settings = settings or ServiceSettings()
    if (ssl_certfile is None) != (ssl_keyfile is None):
        raise ClairVecError("TLS needs both --ssl-certfile and --ssl-keyfile")
    for f in (ssl_certfile, ssl_keyfile):
        if f is not None and not Path(f).is_file():
            raise ClairVecError(f"TLS file {f!r} does not exist")
    if ray:
        if ssl_certfile:
            raise ClairVecError("--ray serves through Ray Serve's proxy, which terminates no TLS here; put TLS in front of it")
        from clair_vec.service.ray_serve import run

        run(model, collection, backend=backend, uri=uri, host=host, port=port, replicas=replicas, settings=settings)
        return
    if replicas != 1:
        raise ClairVecError("--replicas needs --ray: one uvicorn process serves one replica")
    import uvicorn

    from clair_vec.service.protocol import with_header_timeout
    from clair_vec.store.redaction import install_log_filter

    install_log_filter("clair_vec", "uvicorn")
    check_address(host, port)  # before the model loads: a port in use is a one-line error, not uvicorn's exit 3
    retriever = open_retriever(model, collection, backend=backend, uri=uri, device=settings.device, threads=settings.threads)
    scheme = "https" if ssl_certfile else "http"
    try:
        print(f"clair-vec serve: {collection!r} on {retriever.backend.name} at {scheme}://{host}:{port}/", flush=True)
        uvicorn.run(create_app(retriever, collection, settings), host=host, port=port, log_level="warning",
                    http=with_header_timeout(settings.header_timeout_s), limit_concurrency=settings.max_connections,
                    timeout_keep_alive=max(1, round(settings.idle_timeout_s)), server_header=False,
                    timeout_graceful_shutdown=settings.shutdown_timeout_s,
                    ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile)  # fmt: skip
    finally:
        retriever.close()


def check_address(host: str, port: int) -> None:
    """Refuse, in one line, an address this process cannot listen on (uvicorn logs its own error
    and exits 3). A check, then uvicorn binds: another program may still take the port between."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (OSError, UnicodeError) as exc:
        raise ClairVecError(f"--host {host!r} is not an address this machine can listen on ({exc})") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: a port in TIME_WAIT is free
        try:
            sock.bind(address)
        except OSError as exc:
            why = {errno.EADDRINUSE: "another program is listening on it: stop it or pass another --port",
                   errno.EACCES: "ports below 1024 need administrator rights: pass --port 8000 or another above 1023",
                   errno.EADDRNOTAVAIL: "that address is not one of this machine's: pass --host 127.0.0.1 or 0.0.0.0"}  # fmt: skip
            raise ClairVecError(f"cannot listen on {host}:{port}: {why.get(exc.errno or 0, exc.strerror or exc)}") from None
