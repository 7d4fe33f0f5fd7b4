"""Builds the pluggy plugin manager and resolves backend names to backend instances.

Plugins come from the ``clair_vec`` entry-point group. Where entry points are not installed
(a Ray worker running from a working directory, a source checkout), ``CLAIR_VEC_PLUGINS`` names
modules to load instead: ``CLAIR_VEC_PLUGINS=clair_vec_milvus,clair_vec_qdrant``.

A plugin that cannot be imported, or that implements a hook that does not exist, is reported
once (a warning naming it, its distribution and the error) and left out, all its hooks with it;
every other plugin keeps working. ``clair-vec backends`` lists both kinds.

Two plugins may share an entry-point name (each loads) but not a backend name: a built-in
backend's own distribution (``clair-vec-milvus`` for ``milvus``, or its module loaded through
``CLAIR_VEC_PLUGINS``) keeps its name against any other claimant, which is reported and skipped;
between two others the name is refused when used, with an error naming both, since picking one
by install order would hand a user's data to whichever plugin happened to be found first.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

import pluggy

from clair_vec.errors import PluginHookError, UnknownBackendError
from clair_vec.extras import BACKEND_EXTRAS, MissingExtraError, install_hint
from clair_vec.store import hookspecs
from clair_vec.store.backend import Backend

log = logging.getLogger(__name__)
ENTRY_POINT_GROUP = "clair_vec"
PLUGINS_ENV = "CLAIR_VEC_PLUGINS"
DEFAULT_BACKEND = "milvus"
HOOK_NAMES = frozenset(n for n in dir(hookspecs) if n.startswith("clair_vec_"))

_lock = threading.Lock()
_loading = threading.local()  # set while this thread imports plugins (a plugin that looks backends up then would wait on itself)
_pm: pluggy.PluginManager | None = None
_plugins: list[PluginInfo] = []
_backends: dict[str, tuple[Callable[..., Backend], str]] | None = None
_clashes: dict[str, list[str]] = {}  # backend name -> the plugins that each registered it


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
    key: str | None = field(default=None, repr=False)  # its name in the plugin manager, once registered

    @property
    def loaded(self) -> bool:
        return self.error is None


def _unknown_hooks(module: Any) -> list[str]:
    marker = f"{hookspecs.hookimpl.project_name}_impl"
    return sorted(n for n in dir(module) if hasattr(getattr(module, n, None), marker) and n not in HOOK_NAMES)


def _describe(info: PluginInfo) -> str:
    return f"{info.name!r} ({info.distribution} {info.version})" if info.distribution else f"{info.name!r} (from {info.source})"


def _failed(info: PluginInfo, error: str, pm: pluggy.PluginManager | None = None, stage: str = "failed to load") -> None:
    """Record why ``info`` is skipped, and unregister it: a plugin reported as skipped runs no hook."""
    info.error, info.backends = error, []
    if pm is not None and info.key is not None and pm.get_plugin(info.key) is not None:
        pm.unregister(name=info.key)
    log.warning("clair_vec plugin %s %s and is skipped: %s", _describe(info), stage, error)


def _register(pm: pluggy.PluginManager, info: PluginInfo, load: Callable[[], Any]) -> None:
    """Import and register one plugin; on any failure record why and leave the others alone."""
    try:
        module = load()
        unknown = _unknown_hooks(module)
        if unknown:
            raise pluggy.PluginValidationError(
                module, f"implements {unknown}, which are not clair_vec hooks (known hooks: {sorted(HOOK_NAMES)})"
            )
        if pm.is_registered(module):  # the same module named twice (an entry point and CLAIR_VEC_PLUGINS)
            return
        # pluggy's names are unique: a second distribution with the same entry-point name loads under its own key
        key = info.name if pm.get_plugin(info.name) is None else f"{info.distribution or info.source}:{info.name}"
        pm.register(module, name=key)
        info.key = key
        callers = pm.get_hookcallers(module) or []
        info.hooks = sorted(c.name for c in callers)
        wrappers = sorted(c.name for c in callers for i in c.get_hookimpls()
                          if i.plugin is module and (i.hookwrapper or getattr(i, "wrapper", False)))  # fmt: skip
        if wrappers:  # each plugin's hook is called on its own, to name the plugin when it fails
            pm.unregister(module)
            raise pluggy.PluginValidationError(module, f"implements {wrappers} as a wrapper; clair_vec hooks take plain "
                                                       "implementations (drop hookwrapper=/wrapper=)")  # fmt: skip
    except (Exception, SystemExit) as exc:  # a plugin that exits at import must not end the command that loads it
        error = f"{type(exc).__name__}: {exc}" if not isinstance(exc, SystemExit) else f"it exited at import ({exc})"
        _failed(info, error)
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
    if getattr(_loading, "active", False):
        raise UnknownBackendError("a plugin looked up clair_vec's backends while plugins were loading (at its import); "
                                  "look them up when one of its hooks or backends is called instead")  # fmt: skip
    with _lock:
        if _pm is None:
            _loading.active = True
            try:
                _pm = _build()
            finally:
                _loading.active = False
        return _pm


def reset() -> None:
    """Forget loaded plugins (tests; after installing a plugin in a running process)."""
    global _pm, _backends
    with _lock:
        _pm, _backends = None, None
        _plugins.clear()
        _clashes.clear()


def plugins() -> list[PluginInfo]:
    """Every plugin found, loaded or not, with the backends each registered."""
    backends()
    return list(_plugins)


def _owns(info: PluginInfo | None, name: str) -> bool:
    """Whether ``info`` is built-in backend ``name``'s own plugin (clair-vec-milvus for ``milvus``)."""
    if info is None or name not in BACKEND_EXTRAS:
        return False
    own = f"clair_vec_{name}".replace("-", "_").lower()
    return (info.distribution or "").replace("-", "_").lower() == own or info.name.replace("-", "_").lower() == own


def backends() -> dict[str, tuple[Callable[..., Backend], str]]:
    """Registered backends: name -> (factory, name of the plugin that registered it). A name two
    plugins registered is left out here and refused by :func:`get_backend` (see the module's text)."""
    global _backends
    pm = get_plugin_manager()
    if _backends is not None:
        return _backends
    claims: dict[str, list[tuple[Callable[..., Backend], PluginInfo]]] = {}
    by_key = {p.key: p for p in _plugins if p.key is not None}
    for impl in pm.hook.clair_vec_register_backends.get_hookimpls():
        info = by_key.get(impl.plugin_name) or PluginInfo(impl.plugin_name, "registered in process", key=impl.plugin_name)
        mine: dict[str, Callable[..., Backend]] = {}

        def register(name: str, factory: Callable[..., Backend], _mine: dict = mine) -> None:
            if not isinstance(name, str) or not name.strip() or name != name.strip():
                raise TypeError(f"register(name, factory): the name must be a non-empty string without surrounding "
                                f"spaces, got {name!r}")  # fmt: skip
            if not callable(factory):
                raise TypeError(f"register({name!r}, factory): the factory must be callable (a Backend subclass or a "
                                f"function returning one), got {type(factory).__name__}")  # fmt: skip
            if name in _mine:
                raise ValueError(f"it registers backend {name!r} twice")
            _mine[name] = factory

        try:
            impl.function(register=register)
        except (Exception, SystemExit) as exc:  # this plugin's backends are left out; every other plugin's stay
            if info not in _plugins:
                _plugins.append(info)
            _failed(info, f"{type(exc).__name__} while registering backends: {exc}", pm, "failed to register its backends")
            continue
        for name, factory in mine.items():
            claims.setdefault(name, []).append((factory, info))
    for name, claimants in list(claims.items()):  # a name's own plugin keeps it; a plugin that takes it is skipped
        owners = [info for _, info in claimants if _owns(info, name)]
        owner = owners[0] if len(owners) == 1 else None  # two that each look like its own: a clash, below
        for _, intruder in claimants if owner is not None else []:
            if intruder is not owner and intruder.loaded:
                _failed(intruder, f"it registers backend {name!r}, which belongs to {_describe(owner)}", pm,
                        "takes another plugin's backend name")  # fmt: skip
    found: dict[str, tuple[Callable[..., Backend], str]] = {}
    for name, every in claims.items():
        claimants = [c for c in every if c[1].loaded]
        if not claimants:
            continue
        if len(claimants) > 1:
            _clashes[name] = [_describe(c[1]) for c in claimants]
            log.warning("backend %r is registered by %s: it is unavailable until one is uninstalled",
                        name, " and ".join(_clashes[name]))  # fmt: skip
            continue
        factory, info = claimants[0]
        found[name] = (factory, info.name)
        info.backends.append(name)
    _backends = found
    return found


def clashes() -> dict[str, list[str]]:
    """Backend names more than one plugin registered (unavailable until one is uninstalled) -> those plugins."""
    backends()
    return dict(_clashes)


def get_backend(name: str | None = None, uri: str | None = None, /, **options: Any) -> Backend:
    """Instantiate a backend by name (default ``milvus``, or ``CLAIR_VEC_BACKEND``). An option
    named ``uri`` or ``name`` is the backend's to refuse, not a second value of these."""
    name = name or os.environ.get("CLAIR_VEC_BACKEND", DEFAULT_BACKEND)
    registered = backends()
    if name in _clashes:
        raise UnknownBackendError(f"backend {name!r} is registered by more than one plugin: {' and '.join(_clashes[name])}; "
                                  "uninstall the one you do not mean (clair-vec backends lists them)")  # fmt: skip
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
    factory, plugin = registered[name]
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):  # a builtin or C callable: nothing to read, let the call say it
        params = None
    if params is not None and not any(p.name == "uri" or p.kind is p.VAR_KEYWORD for p in params):
        raise UnknownBackendError(f"backend {name!r} (plugin {plugin!r}) cannot be opened: its factory does not take "
                                  "uri= as the plugin guide requires")  # fmt: skip
    backend = factory(uri=uri, **options)
    if not isinstance(backend, Backend):
        raise UnknownBackendError(f"backend {name!r} (plugin {plugin!r}) cannot be opened: its factory returned "
                                  f"{type(backend).__name__}, not a clair_vec Backend")  # fmt: skip
    return backend


def _closest(name: str, names: list[str]) -> str | None:
    """The installed name a typo most likely meant: same letters in another case first, then a near spelling."""
    import difflib

    folded = {n.casefold(): n for n in names}
    if name.casefold() in folded:
        return folded[name.casefold()]
    near = difflib.get_close_matches(name.casefold(), list(folded), n=1, cutoff=0.75)
    return folded[near[0]] if near else None


def _plugin_named(key: str) -> str:
    info = next((p for p in _plugins if p.key == key), None)
    return _describe(info) if info is not None else repr(key)


def call_each(hook: str, **kwargs: Any) -> list[tuple[str, Any]]:
    """Each plugin's ``hook`` in registration order, as ``(plugin, result)``; a plugin whose
    hook raises (even ``SystemExit``) fails the call with a :class:`PluginHookError` that names it."""
    out = []
    for impl in getattr(get_plugin_manager().hook, hook).get_hookimpls():
        try:
            result = impl.function(**{k: kwargs[k] for k in impl.argnames})
        except (Exception, SystemExit) as exc:
            raise PluginHookError(f"plugin {_plugin_named(impl.plugin_name)} failed in its {hook} hook: "
                                  f"{type(exc).__name__}: {exc}") from None  # fmt: skip
        out.append((impl.plugin_name, result))
    return out


_SCALARS = (str, int, float, bool, type(None))


def extra_payload(payload: dict[str, Any], domain: str, model_id: str) -> dict[str, Any]:
    """Merged results of every ``clair_vec_prepare_payload`` implementation, in registration order
    (built-in keys win). A result that is not a dict of JSON scalars fails the write, naming its
    plugin: a field the engine would reject or store mangled is better refused before any write."""
    merged: dict[str, Any] = {}
    for plugin, result in call_each("clair_vec_prepare_payload", payload=dict(payload), domain=domain, model_id=model_id):
        if result is None:
            continue
        bad = ("it returned a " + type(result).__name__ if not isinstance(result, dict) else
               next((f"field {k!r} is a {type(v).__name__}" for k, v in result.items()
                     if not isinstance(k, str) or not isinstance(v, _SCALARS)), None))  # fmt: skip
        if bad:
            raise PluginHookError(f"plugin {_plugin_named(plugin)}'s clair_vec_prepare_payload must return None or a dict "
                                  f"of JSON scalars (str, int, float, bool, None): {bad}")  # fmt: skip
        merged.update(result)
    return {k: v for k, v in merged.items() if k not in payload}
