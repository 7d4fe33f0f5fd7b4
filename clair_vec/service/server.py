"""``clair-vec serve``: run the app in one uvicorn process, or on Ray Serve replicas."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from clair_vec.errors import ClairVecError
from clair_vec.service.app import create_app, open_retriever


def serve(
    model: str | Path | None,
    collection: str,
    *,
    backend: str | None = None,
    uri: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    ray: bool = False,
    replicas: int = 1,
    gallery_roots: Sequence[str] | None = None,
    max_upload_mb: float = 10.0,
) -> None:
    options = {"gallery_roots": gallery_roots, "max_upload_bytes": int(max_upload_mb * 2**20)}
    if ray:
        from clair_vec.service.ray_serve import run

        run(model, collection, backend=backend, uri=uri, host=host, port=port, replicas=replicas, **options)
        return
    if replicas != 1:
        raise ClairVecError("--replicas needs --ray: one uvicorn process serves one replica")
    import uvicorn

    retriever = open_retriever(model, collection, backend=backend, uri=uri)
    try:
        print(f"clair-vec serve: {collection!r} on {retriever.backend.name} at http://{host}:{port}/", flush=True)
        uvicorn.run(create_app(retriever, collection, **options), host=host, port=port, log_level="warning")
    finally:
        retriever.close()
