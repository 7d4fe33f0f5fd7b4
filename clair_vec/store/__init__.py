"""The vector store side: the backend contract every plugin implements, the plugin hooks and
their discovery, record ids, and the conformance suite a plugin runs against itself.

This is what a plugin author imports: :mod:`~clair_vec.store.backend` (``Backend``,
``CollectionInfo``, ``Record``, ``Hit``), :mod:`~clair_vec.store.hookspecs`,
:mod:`~clair_vec.store.testing` (``BackendConformance``) and :mod:`~clair_vec.store.ids`; the old
paths ``clair_vec.backend``, ``clair_vec.hookspecs`` and ``clair_vec.testing`` are the same modules.

May import: :mod:`clair_vec.errors` and NumPy. Never imports torch, open_clip or the method
(checked by ``tests/test_layout.py``): a backend stores NumPy vectors and knows nothing of models.
"""
