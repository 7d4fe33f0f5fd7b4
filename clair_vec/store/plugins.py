"""Builds the pluggy plugin manager and resolves backend names to backend instances.

Plugins come from the ``clair_vec`` entry-point group. Where entry points are not installed
(a Ray worker running from a working directory, a source checkout), ``CLAIR_VEC_PLUGINS`` names
modules to load instead: ``CLAIR_VEC_PLUGINS=clair_vec_milvus,clair_vec_qdrant``.

A plugin that cannot be imported, or that implements a hook that does not exist, is reported
once (a warning naming it, its distribution and the error) and left out; every other plugin
keeps working. ``clair-vec backends`` lists both kinds.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

import pluggy

from clair_vec.errors import UnknownBackendError
from clair_vec.extras import BACKEND_EXTRAS, MissingExtraError, install_hint
from clair_vec.store import hookspecs
from clair_vec.store.backend import Backend

log = logging.getLogger(__name__)
ENTRY_POINT_GROUP = "clair_vec"
PLUGINS_ENV = "CLAIR_VEC_PLUGINS"
DEFAULT_BACKEND = "milvus"
HOOK_NAMES = frozenset(n for n in dir(hookspecs) if n.startswith("clair_vec_"))

_lock = threading.Lock()
_pm: pluggy.PluginManager | None = None
_plugins: list[PluginInfo] = []
_backends: dict[str, tuple[Callable[..., Backend], str]] | None = None


@dataclass
class PluginInfo:
    """One plugin as ``clair-vec backends`` shows it."""

    name: str
    source: str  # "entry point" or the env variable's name
    distribution: str | None = None
    version: str | None = None
    hooks: list[str] = field(default_factory=list)
    backends: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def loaded(self) -> bool:
        return self.error is None


def _unknown_hooks(module: Any) -> list[str]:
    marker = f"{hookspecs.hookimpl.project_name}_impl"
    return sorted(n for n in dir(module) if hasattr(getattr(module, n, None), marker) and n not in HOOK_NAMES)


def _register(pm: pluggy.PluginManager, info: PluginInfo, load: Callable[[], Any]) -> None:
    """Import and register one plugin; on any failure record why and leave the others alone."""
    try:
        module = load()
        unknown = _unknown_hooks(module)
        if unknown:
            raise pluggy.PluginValidationError(
                module, f"implements {unknown}, which are not clair_vec hooks (known hooks: {sorted(HOOK_NAMES)})"
            )
        if pm.is_registered(module) or pm.get_plugin(info.name) is not None:
            return
        pm.register(module, name=info.name)
        info.hooks = sorted(c.name for c in pm.get_hookcallers(module) or [])
    except Exception as exc:
        info.error = f"{type(exc).__name__}: {exc}"
        where = f" ({info.distribution} {info.version})" if info.distribution else f" (from {info.source})"
        log.warning("clair_vec plugin %r%s failed to load and is skipped: %s", info.name, where, info.error)
    _plugins.append(info)


def _build() -> pluggy.PluginManager:
    pm = pluggy.PluginManager("clair_vec")
    pm.add_hookspecs(hookspecs)
    _plugins.clear()
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(ep, "dist", None)
        info = PluginInfo(ep.name, "entry point", dist.name if dist else None, dist.version if dist else None)
        _register(pm, info, ep.load)
    for module_name in filter(None, (m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(","))):
        if pm.get_plugin(module_name) is not None or any(p.name == module_name for p in _plugins):
            continue
        _register(pm, PluginInfo(module_name, PLUGINS_ENV), lambda m=module_name: importlib.import_module(m))
    pm.check_pending()
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
        _plugins.clear()


def plugins() -> list[PluginInfo]:
    """Every plugin found, loaded or not, with the backends each registered."""
    backends()
    return list(_plugins)


def backends() -> dict[str, tuple[Callable[..., Backend], str]]:
    """Registered backends: name -> (factory, name of the plugin that registered it)."""
    global _backends
    pm = get_plugin_manager()
    if _backends is not None:
        return _backends
    found: dict[str, tuple[Callable[..., Backend], str]] = {}
    by_name = {p.name: p for p in _plugins}
    for impl in pm.hook.clair_vec_register_backends.get_hookimpls():
        plugin_name = impl.plugin_name
        mine: dict[str, tuple[Callable[..., Backend], str]] = {}

        def register(name: str, factory: Callable[..., Backend], _plugin: str = plugin_name, _mine: dict = mine) -> None:
            if name in found:
                raise UnknownBackendError(f"backend name {name!r} is already registered by {found[name][1]!r}; uninstall one")
            _mine[name] = (factory, _plugin)

        try:
            impl.function(register=register)
        except Exception as exc:  # this plugin's backends are left out; every other plugin's stay
            info = by_name.get(plugin_name) or PluginInfo(plugin_name, "registered in process")
            info.error = f"{type(exc).__name__} while registering backends: {exc}"
            if info not in _plugins:
                _plugins.append(info)
            log.warning("clair_vec plugin %r failed to register its backends and is skipped: %s", plugin_name, info.error)
            continue
        found.update(mine)
        if plugin_name in by_name:
            by_name[plugin_name].backends.extend(mine)
    _backends = found
    return found


def get_backend(name: str | None = None, uri: str | None = None, /, **options: Any) -> Backend:
    """Instantiate a backend by name (default ``milvus``, or ``CLAIR_VEC_BACKEND``). An option
    named ``uri`` or ``name`` is the backend's to refuse, not a second value of these."""
    name = name or os.environ.get("CLAIR_VEC_BACKEND", DEFAULT_BACKEND)
    registered = backends()
    if name not in registered:
        broken = [p for p in _plugins if not p.loaded]
        match = next((p for p in broken if p.name == name), None)
        if match is not None:
            raise UnknownBackendError(
                f"backend {name!r} is unavailable: its plugin{f' ({match.distribution} {match.version})' if match.distribution else ''} "
                f"failed to load: {match.error}. Install what it needs, or reinstall it."
            )
        installed = sorted(registered) or ["(none)"]
        if name in BACKEND_EXTRAS:  # a built-in backend that was not installed with the core
            have = f"installed backends: {', '.join(sorted(registered))}" if registered else "no backend is installed"
            raise MissingExtraError(f"backend {name!r} is not installed here ({have}); it comes with the [{name}] extra: "
                                    f"{install_hint(name)}", name)  # fmt: skip
        suggestion = _closest(name, sorted(registered))
        if suggestion is not None:
            raise UnknownBackendError(f"unknown backend {name!r}; did you mean {suggestion!r}? Installed backends: {installed}")
        failed = f"; plugins that failed to load: {sorted(p.name for p in broken)}" if broken else ""
        raise UnknownBackendError(
            f"unknown backend {name!r}; installed backends: {installed}{failed}. Install a plugin that provides it "
            f"(pip install clair-vec-{name}), or, where entry points are unavailable, set {PLUGINS_ENV} to its module."
        )
    if "uri" in options:  # the factory takes uri by keyword: say so by name rather than as a TypeError
        raise ValueError(f"the {name} backend has no option 'uri': give the address as the URI itself (--uri)")
    return registered[name][0](uri=uri, **options)


def _closest(name: str, names: list[str]) -> str | None:
    """The installed name a typo most likely meant: same letters in another case first, then a near spelling."""
    import difflib

    folded = {n.casefold(): n for n in names}
    if name.casefold() in folded:
        return folded[name.casefold()]
    near = difflib.get_close_matches(name.casefold(), list(folded), n=1, cutoff=0.75)
    return folded[near[0]] if near else None


def extra_payload(payload: dict[str, Any], domain: str, model_id: str) -> dict[str, Any]:
    """Merged results of every ``clair_vec_prepare_payload`` implementation (built-in keys win)."""
    merged: dict[str, Any] = {}
    results = get_plugin_manager().hook.clair_vec_prepare_payload(payload=dict(payload), domain=domain, model_id=model_id)
    for result in reversed(results):  # pluggy calls last-registered first; merge in registration order
        if result:
            merged.update(result)
    return {k: v for k, v in merged.items() if k not in payload}
