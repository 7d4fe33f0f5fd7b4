"""Which backend call a promise was making when it broke, so that a failure reads "promise /
call / what came back" rather than a driver's bare exception (a pgvector backend's
``last_loaded_collection`` failing showed nothing but psycopg's ``DuplicateTable``).

The suite's handles have their contract methods wrapped on the instance (not proxied: a
promise may check ``isinstance`` or monkeypatch an attribute), each wrapper noting its call
before it runs. ``clair_vec.store.pytest_plugin`` reads the note when a promise raises anything
but an assertion or a skip, and fails it with the three in words.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from clair_vec.store.backend import Backend

#: the contract's methods a promise calls, read from the contract so a new one is traced too; a
#: plugin's own helpers and the classification hooks the base class calls are not
TRACED = tuple(n for n in dir(Backend) if not n.startswith("_") and callable(getattr(Backend, n))
               and n not in ("is_transient", "translate_error", "supports"))  # fmt: skip

_last: list[str] = []  # the latest call, of whichever thread: a promise runs its calls in order
_raised: list[BaseException] = []  # what the latest call raised, if it raised
_depth = threading.local()  # the promise's own call, not the calls a method makes of its siblings


def traced(backend: Any) -> Any:
    """``backend`` with every contract method noting its call; returns the same object."""
    for name in TRACED:
        method = getattr(backend, name, None)
        if callable(method):
            setattr(backend, name, _noting(name, method))
    return backend


def _noting(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def call(*args: Any, **kwargs: Any) -> Any:
        depth = getattr(_depth, "n", 0)
        if depth == 0:
            shown = [_short(a) for a in args] + [f"{k}={_short(v)}" for k, v in kwargs.items()]
            _last[:] = [f"backend.{name}({', '.join(shown)})"]
            _raised.clear()
        _depth.n = depth + 1
        try:
            return method(*args, **kwargs)
        except BaseException as exc:
            if depth == 0:
                _raised[:] = [exc]
            raise
        finally:
            _depth.n = depth

    return call


def last_call() -> str | None:
    return _last[0] if _last else None


def from_backend(exc: BaseException) -> bool:
    """Whether ``exc`` is what the latest backend call raised, or was raised from it (a promise's
    own bug, or a value that came back and broke the promise's code, is not the backend's)."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        if _raised and e is _raised[0]:
            return True
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return False


def forget() -> None:
    _last.clear()
    _raised.clear()


def _short(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"<array {'x'.join(map(str, value.shape))} {value.dtype}>"
    if isinstance(value, (list, tuple)) and len(value) > 3:
        return f"<{len(value)} {type(value[0]).__name__}s>"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def broken_promise(promise: str, doc: str | None, exc: BaseException) -> str:
    """The words of a promise that raised ``exc`` instead of keeping or failing an assertion."""
    from clair_vec.errors import ClairVecError
    from clair_vec.store.redaction import scrub

    words = (doc or "").strip().splitlines()[0] if doc and doc.strip() else promise.removeprefix("test_").replace("_", " ")
    call = last_call() or "(no backend call yet: the suite's own set-up)"
    raised = f"{type(exc).__module__}.{type(exc).__name__}: {exc}"
    hint = ("" if isinstance(exc, ClairVecError) else
            "\nhint: a backend raises clair_vec's errors (BackendError and its kinds), never its driver's own: map the "
            "driver's exception in translate_error(), or classify it in is_transient()")  # fmt: skip
    return scrub(f"the backend broke a promise\npromise: {words}\ncall: {call}\nwhat came back: {raised}{hint}\n")
