"""The same search app on Ray Serve: N replicas, each with its own model and backend connection.

    clair-vec serve --ray --replicas 2 --model runs/clair --collection gallery --uri http://milvus:19530
    # or, with Ray's own CLI (an application builder taking key=value arguments):
    serve run clair_vec.serve_ray:build model=runs/clair collection=gallery uri=http://milvus:19530 replicas=2

Replicas are separate processes, so they need a backend that serves several processes: a Milvus
or Qdrant server. The embedded stores (Milvus Lite file, Qdrant Edge directory) take one process
at a time; with them Ray Serve runs one replica, and more are refused with the reason.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from clair_vec.errors import ClairVecError
from clair_vec.ray_runtime import ray_session, sigterm_as_interrupt


def _check_replicas(backend: str | None, uri: str | None, replicas: int) -> None:
    if replicas < 1:
        raise ClairVecError(f"--replicas must be >= 1, got {replicas}")
    if replicas > 1:
        from clair_vec.store.plugins import get_backend

        with get_backend(backend, uri) as be:
            shared = be.shared
        if not shared:
            raise ClairVecError(
                f"{replicas} replicas need a database server (--uri http://host:19530 or http://host:6333): the "
                f"embedded store {be.uri!r} opens in one process at a time. Use one replica, or a server."
            )


def deployment(replicas: int = 1) -> Any:
    from ray import serve

    @serve.deployment(num_replicas=replicas, ray_actor_options={"num_cpus": 0.5})
    @serve.ingress()
    class ClairSearch:
        def __init__(self, model: str, collection: str, backend: str | None, uri: str | None, options: dict) -> None:
            from clair_vec.service.app import open_retriever

            self.collection, self.options = collection, options
            self.retriever = open_retriever(model, collection, backend=backend, uri=uri)

        def __serve_build_asgi_app__(self) -> Any:
            from clair_vec.service.app import create_app

            return create_app(self.retriever, self.collection, **self.options)

        def __del__(self) -> None:
            self.retriever.close()

    return ClairSearch


def build(args: dict[str, str]) -> Any:
    """Application builder for ``serve run clair_vec.serve_ray:build key=value ...``."""
    unknown = set(args) - {"model", "collection", "backend", "uri", "replicas", "gallery_roots", "max_upload_mb"}
    if unknown or "collection" not in args:
        raise ClairVecError(f"serve run ... build collection=NAME [model=DIR uri=URL backend=NAME replicas=N]; unknown: {sorted(unknown)}")
    replicas = int(args.get("replicas", 1))
    _check_replicas(args.get("backend"), args.get("uri"), replicas)
    roots = args["gallery_roots"].split(",") if args.get("gallery_roots") else None
    options = {"gallery_roots": roots, "max_upload_bytes": int(float(args.get("max_upload_mb", 10)) * 2**20)}
    model = str(Path(args["model"]).resolve()) if args.get("model") else None
    return deployment(replicas).bind(model, args["collection"], args.get("backend"), args.get("uri"), options)


def run(
    model: str | Path | None,
    collection: str,
    *,
    backend: str | None,
    uri: str | None,
    host: str,
    port: int,
    replicas: int,
    **options: Any,
) -> None:
    """Deploy the app on the Ray of ``RAY_ADDRESS``, or on a local Ray started for it, and serve
    until interrupted (Ctrl-C or SIGTERM); then the app, and a Ray started here, are shut down."""
    from ray import serve

    _check_replicas(backend, uri, replicas)
    model = str(Path(model).resolve()) if model else None
    with ray_session(), sigterm_as_interrupt():  # after ray.init, which installs its own SIGTERM handler
        try:
            serve.start(http_options={"host": host, "port": port})
            serve.run(deployment(replicas).bind(model, collection, backend, uri, options), name="clair_vec", route_prefix="/")
            print(f"clair-vec serve: {collection!r} on Ray Serve, {replicas} replica(s), at http://{host}:{port}/", flush=True)
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
        finally:
            serve.shutdown()
