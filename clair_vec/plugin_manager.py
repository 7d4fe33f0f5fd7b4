"""Builds the pluggy plugin manager and resolves backend names to backend instances.

Plugins come from the ``clair_vec`` entry-point group. Where entry points are not installed
(a Ray worker running from a working directory, a source checkout), ``CLAIR_VEC_PLUGINS`` names
modules to load instead: ``CLAIR_VEC_PLUGINS=clair_vec_milvus,clair_vec_qdrant``.
"""

from __future__ import annotations

import importlib
import os
import threading
from collections.abc import Callable
from typing import Any

import pluggy

from . import hookspecs
from .backend import Backend
from .errors import UnknownBackendError

ENTRY_POINT_GROUP = "clair_vec"
PLUGINS_ENV = "CLAIR_VEC_PLUGINS"
DEFAULT_BACKEND = "milvus"

_lock = threading.Lock()
_pm: pluggy.PluginManager | None = None
_backends: dict[str, tuple[Callable[..., Backend], str]] | None = None


def _build() -> pluggy.PluginManager:
    pm = pluggy.PluginManager("clair_vec")
    pm.add_hookspecs(hookspecs)
    pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    for module_name in filter(None, (m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(","))):
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise UnknownBackendError(f"{PLUGINS_ENV} names module {module_name!r}, which cannot be imported: {exc}") from exc
        if not pm.is_registered(module) and pm.get_plugin(module_name) is None:
            pm.register(module, name=module_name)
    pm.check_pending()  # a misspelled hook name fails here, not silently
    return pm


def get_plugin_manager() -> pluggy.PluginManager:
    global _pm
    with _lock:
        if _pm is None:
            _pm = _build()
        return _pm


def reset() -> None:
    """Forget loaded plugins (tests; after installing a plugin in a running process)."""
    global _pm, _backends
    with _lock:
        _pm, _backends = None, None


def backends() -> dict[str, tuple[Callable[..., Backend], str]]:
    """Registered backends: name -> (factory, name of the plugin that registered it)."""
    global _backends
    pm = get_plugin_manager()
    if _backends is not None:
        return _backends
    found: dict[str, tuple[Callable[..., Backend], str]] = {}
    for impl in pm.hook.clair_vec_register_backends.get_hookimpls():
        plugin_name = impl.plugin_name

        def register(name: str, factory: Callable[..., Backend], _plugin: str = plugin_name) -> None:
            if name in found and found[name][1] != _plugin:
                raise UnknownBackendError(
                    f"backend name {name!r} is registered by both {found[name][1]!r} and {_plugin!r}; uninstall one"
                )
            found[name] = (factory, _plugin)

        impl.function(register=register)
    _backends = found
    return found


def get_backend(name: str | None = None, uri: str | None = None, **options: Any) -> Backend:
    """Instantiate a backend by name (default ``milvus``, or ``CLAIR_VEC_BACKEND``)."""
    name = name or os.environ.get("CLAIR_VEC_BACKEND", DEFAULT_BACKEND)
    registered = backends()
    if name not in registered:
        installed = sorted(registered) or ["(none)"]
        raise UnknownBackendError(
            f"unknown backend {name!r}; installed backends: {installed}. Install a plugin that provides it "
            f"(pip install clair-vec-{name}), or, where entry points are unavailable, set {PLUGINS_ENV} to its module."
        )
    return registered[name][0](uri=uri, **options)


def extra_payload(payload: dict[str, Any], domain: str, model_id: str) -> dict[str, Any]:
    """Merged results of every ``clair_vec_prepare_payload`` implementation (built-in keys win)."""
    merged: dict[str, Any] = {}
    results = get_plugin_manager().hook.clair_vec_prepare_payload(payload=dict(payload), domain=domain, model_id=model_id)
    for result in reversed(results):  # pluggy calls last-registered first; merge in registration order
        if result:
            merged.update(result)
    return {k: v for k, v in merged.items() if k not in payload}
