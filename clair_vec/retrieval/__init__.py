"""Indexing and search: what a user hands ``index`` and ``search`` (files, folders, images,
arrays), the one ingestion pipeline every way of indexing passes images down (``ingest``: read ->
look up -> decode -> encode -> write), writing a gallery into a collection, the :class:`~clair_vec.retrieval.retriever.Retriever`
that opens one model and one backend and keeps them open (the API, the CLI, the service and Ray
all use it), the public ``index``/``search`` functions, and bulk indexing on Ray Data.

May import: :mod:`clair_vec.method`, :mod:`clair_vec.store`, :mod:`clair_vec.datasets`,
:mod:`clair_vec.errors`, :mod:`clair_vec.progress`, Ray (lazily, in ``bulk_index`` only).
Never imports training, evaluation or the service.
"""
