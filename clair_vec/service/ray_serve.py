"""The same search app on Ray Serve: N replicas, each with its own model and backend connection.

    clair-vec serve --ray --replicas 2 --model runs/clair --collection gallery --uri http://milvus:19530
    # or, with Ray's own CLI (an application builder taking key=value arguments):
    serve run clair_vec.service.ray_serve:build model=runs/clair collection=gallery uri=http://milvus:19530 replicas=2

Replicas are separate processes, so they need a backend that serves several processes: a Milvus
or Qdrant server. The embedded stores (Milvus Lite file, Qdrant Edge directory) take one process
at a time; with them Ray Serve runs one replica, and more are refused with the reason.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any

from clair_vec.errors import ClairVecError
from clair_vec.extras import require
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
                f"{replicas} replicas need a database server (a server backend, whose store several processes share): "
                f"the embedded {be.name} store {be.display_uri!r} opens in one process at a time. Use one replica, or a "
                "server backend (--uri of its server)."
            )


def _forwarded_env() -> dict[str, str]:
    """Environment variables a replica needs that a remote Ray node does not have: the paths of
    credential files (``*_FILE``), never a secret itself (a runtime_env is visible to anyone who
    can read the cluster's state). Replicas of a Ray started here inherit the environment anyway."""
    return {k: v for k, v in os.environ.items() if k.endswith("_FILE") and k.startswith(("CLAIR_VEC_", "MILVUS_", "QDRANT_"))}


def deployment(replicas: int = 1) -> Any:
    from ray import serve

    env = _forwarded_env()
    options: dict[str, Any] = {"num_cpus": 0.5, **({"runtime_env": {"env_vars": env}} if env else {})}

    @serve.deployment(num_replicas=replicas, ray_actor_options=options)
    @serve.ingress()
    class ClairSearch:
        def __init__(self, model: str, collection: str, backend: str | None, uri: str | None, settings: Any,
                     api_key_file: str | None) -> None:  # fmt: skip
            from clair_vec.service.app import open_retriever
            from clair_vec.service.settings import read_api_key

            # the key is read here, on the replica's node: it never travels through the cluster's state
            self.collection, self.settings = collection, dataclasses.replace(settings, api_key=read_api_key(api_key_file))
            self.retriever = open_retriever(model, collection, backend=backend, uri=uri, device=settings.device,
                                            threads=settings.threads)  # fmt: skip

        def __serve_build_asgi_app__(self) -> Any:
            from clair_vec.service.app import create_app

            return create_app(self.retriever, self.collection, self.settings)

        def __del__(self) -> None:
            self.retriever.close()

    return ClairSearch


def build(args: dict[str, str]) -> Any:
    """Application builder for ``serve run clair_vec.service.ray_serve:build key=value ...``."""
    from clair_vec.service.settings import ServiceSettings

    known = {"model", "collection", "backend", "uri", "replicas", "gallery_roots", "max_upload_mb", "api_key_file"}
    unknown = set(args) - known
    if unknown or "collection" not in args:
        raise ClairVecError(f"serve run ... build collection=NAME [model=DIR uri=URL backend=NAME replicas=N]; "
                            f"unknown: {sorted(unknown)}; known: {sorted(known)}")  # fmt: skip
    replicas = int(args.get("replicas", 1))
    _check_replicas(args.get("backend"), args.get("uri"), replicas)
    roots = args["gallery_roots"].split(",") if args.get("gallery_roots") else None
    settings = ServiceSettings(gallery_roots=roots, max_upload_bytes=int(float(args.get("max_upload_mb", 10)) * 2**20))
    model = str(Path(args["model"]).resolve()) if args.get("model") else None
    return deployment(replicas).bind(model, args["collection"], args.get("backend"), args.get("uri"), settings,
                                     args.get("api_key_file"))  # fmt: skip


def run(
    model: str | Path | None,
    collection: str,
    *,
    backend: str | None,
    uri: str | None,
    host: str,
    port: int,
    replicas: int,
    settings: Any,
    api_key_file: str | None = None,
) -> None:
    """Deploy the app on the Ray of ``RAY_ADDRESS``, or on a local Ray started for it, and serve
    until interrupted (Ctrl-C or SIGTERM); then the app, and a Ray started here, are shut down."""
    require("serve", "ray.serve", needed_for="clair-vec serve --ray")
    from ray import serve

    _check_replicas(backend, uri, replicas)
    model = str(Path(model).resolve()) if model else None
    settings = dataclasses.replace(settings, api_key=None)  # each replica reads the key itself
    with ray_session(), sigterm_as_interrupt():  # after ray.init, which installs its own SIGTERM handler
        try:
            serve.start(http_options={"host": host, "port": port})
            app = deployment(replicas).bind(model, collection, backend, uri, settings, api_key_file)
            serve.run(app, name="clair_vec", route_prefix="/")
            print(f"clair-vec serve: {collection!r} on Ray Serve, {replicas} replica(s), at http://{host}:{port}/", flush=True)
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
        finally:
            serve.shutdown()
