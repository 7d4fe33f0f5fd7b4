"""``clair-vec serve``: the HTTP search service over one collection, its drawing page, and the
same app on Ray Serve replicas.

May import: :mod:`clair_vec.retrieval` and everything it may import, FastAPI, uvicorn, Ray (lazily,
in ``ray_serve`` only). Never imports training or evaluation.
"""
