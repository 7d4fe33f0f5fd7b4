"""The vector store side: the backend contract every plugin implements, the plugin hooks and
their discovery, record ids, and the conformance suite a plugin runs against itself.

A plugin author imports all of it from one module, :mod:`clair_vec.plugin`; here it lives in
:mod:`~clair_vec.store.backend` (``Backend``, ``CollectionInfo``, ``Record``, ``Hit``),
:mod:`~clair_vec.store.hookspecs`, :mod:`~clair_vec.store.testing` (``BackendConformance``,
``FreshNamespace``) and :mod:`~clair_vec.store.ids`. Helpers a backend builds on: :mod:`~clair_vec.store.redaction`
(``redact_uri``, ``register_secret``, ``scrub``: no credential in any message),
:mod:`~clair_vec.store.credentials` (an option, else the environment, else a ``*_FILE``),
:mod:`~clair_vec.store.disk_space` (free space before embedded writes),
:mod:`~clair_vec.store.crash_marker` (a store whose last write never finished is probed in a child
process), :mod:`~clair_vec.store.alias_file` (aliases for engines without their own).
:mod:`~clair_vec.store.deployment_check` runs the suite against a deployment
(``clair-vec backends --check``).

May import: :mod:`clair_vec.errors` and NumPy. Never imports torch, open_clip or the method
(checked by ``tests/test_layout.py``): a backend stores NumPy vectors and knows nothing of models.
"""
