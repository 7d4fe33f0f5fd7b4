"""The clair_vec plugin hooks.

A plugin is a module (or object) with functions decorated by :data:`clair_vec.hookimpl`, found
through the ``clair_vec`` entry-point group::

    # pyproject.toml of your plugin
    [project.entry-points.clair_vec]
    mybackend = "clair_vec_mybackend"

The built-in Milvus and Qdrant backends are registered exactly this way. Hook names start with
``clair_vec_``; an implementation may accept any subset of a hook's arguments, by name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("clair_vec")
hookimpl = pluggy.HookimplMarker("clair_vec")


@hookspec
def clair_vec_register_backends(register: Callable[..., None]) -> None:
    """Register vector-database backends.

    Called once, when the plugin manager is first built (the first ``clair_vec.index``,
    ``clair_vec.search``, ``get_backend`` or ``clair-vec backends`` of a process, and again in
    each Ray worker). Call ``register(name, factory)`` for every backend the plugin provides:
    ``factory(uri=None, **options)`` must return a :class:`clair_vec.store.backend.Backend`. ``uri=None``
    asks for the backend's embedded default (an engine that is only a server reads its address
    from the environment, or refuses with a message naming the variable). Options carry
    connection settings; declare them as keyword parameters and pass the rest on to
    ``Backend.__init__``, which refuses any option no ``__init__`` took, by name; credentials come from options or the environment (see
    ``plugins/WRITING_A_BACKEND.md``, *Server engines*). Names must be unique across plugins: a
    built-in name stays with its own distribution, and a name two other plugins register is
    refused when used, with an error naming both.

    Returns nothing.
    """


@hookspec
def clair_vec_prepare_payload(payload: dict[str, Any], domain: str, model_id: str) -> dict[str, Any] | None:
    """Add payload fields to every vector before it is written.

    Called once per record by ``clair_vec.index``, after the built-in fields (``path``,
    ``domain``, ``label``, ``pseudo_label``, ``confidence``, ``model``) are set and before the
    backend is called. ``payload`` must not be modified in place.

    Return a dict of extra JSON-scalar fields (merged in plugin registration order; built-in
    keys cannot be overwritten), or None to add nothing. Anything else, or an exception, fails
    the write with an error naming the plugin.
    """


@hookspec
def clair_vec_collection_created(backend_name: str, collection: str, info: dict[str, Any]) -> None:
    """Notification that ``clair_vec.index`` created a new collection.

    Called once, right after creation and before the first write, with the collection's spec
    (``dim``, ``model``, ``metric``, ``target_domain``). Use it to create extra indexes, grant
    access, or log. Not called when indexing into an existing collection. If it raises, the new,
    still empty collection is dropped again and the command fails naming the plugin, so the next
    run creates the collection and calls the hook again.

    Returns nothing.
    """
