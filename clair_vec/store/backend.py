"""The backend contract: what every vector-database plugin implements. No torch in here.

A backend subclasses :class:`Backend` and implements the ``_``-prefixed primitives. The public
methods around them own the behaviour users rely on whatever the engine: dimension and model
checks, byte-bounded batching, bounded retries of transient errors, payload filters.
"""

from __future__ import annotations

import atexit
import functools
import json
import logging
import re
import threading
import time
import traceback
import uuid
import weakref
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from clair_vec.errors import (
    BackendUnavailableError,
    CollectionMismatchError,
    CollectionNotFoundError,
    InvalidCollectionNameError,
    TransientBackendError,
)

log = logging.getLogger(__name__)
#: Fixed namespace so the same content hash maps to the same UUID on every machine.
ID_NAMESPACE = uuid.UUID("5b0c2a54-8f1e-4c7a-9a57-3f0d6b1c9e21")
#: Payload keys a filter may use. ``domain`` and ``path`` are on every record; ``label`` and
#: ``pseudo_label`` are empty strings where unknown.
FILTER_KEYS = ("domain", "label", "path", "pseudo_label")
#: The one collection-name rule for every backend: the intersection of what Milvus (letters,
#: digits, underscores, a non-digit first) and Qdrant accept, and safe as a directory name.
_NAME_RULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,254}")
METRICS = ("cosine",)


#: every handle opened and not yet closed, in opening order: what :func:`close_open_handles` closes
#: at interpreter exit, and what the test suite checks each module leaves behind (none)
_open_handles: dict[int, tuple[weakref.ref, str]] = {}
_handles_lock = threading.Lock()


def open_handles() -> list[tuple[Backend, str]]:
    """Backends opened and not closed yet, oldest first, each with where it was opened."""
    with _handles_lock:
        refs = list(_open_handles.values())
    return [(h, where) for ref, where in refs if (h := ref()) is not None]


def close_open_handles() -> None:
    """Close every handle still open, newest first. Runs at interpreter exit: a native client
    (a gRPC channel, a Milvus Lite server thread, a Qdrant Edge shard) left to the interpreter's
    own teardown can run after the memory it uses is freed, which crashed pytest at exit once."""
    for handle, _ in reversed(open_handles()):
        try:
            handle.close()
        except Exception as exc:  # at exit nothing can be done about it but say so
            log.warning("closing %s at exit failed: %s", handle, exc)


_PACKAGE_DIR = str(Path(__file__).resolve().parent)


def _track(handle: Backend) -> None:
    # the first caller outside clair_vec and its plugins: where a leaked handle was opened
    stack = traceback.extract_stack(limit=16)[:-2]
    frame = next((f for f in reversed(stack) if not f.filename.startswith(_PACKAGE_DIR) and "clair_vec_" not in f.filename), None)
    where = f"{frame.filename}:{frame.lineno}" if frame else "?"
    key = id(handle)
    with _handles_lock:
        _open_handles[key] = (weakref.ref(handle, lambda _ref: _forget(key)), where)
    # registered again at each open so that it runs before the exit hooks of engines imported
    # since (atexit runs the last registered first): handles close while their engines still run
    atexit.unregister(close_open_handles)
    atexit.register(close_open_handles)


def _forget(key: int) -> None:
    with _handles_lock:
        _open_handles.pop(key, None)


def _untracking_init(init):
    """Wraps a subclass's ``__init__``: a handle whose opening failed is not an open handle."""

    @functools.wraps(init)
    def wrapper(self, *args, **kwargs):
        try:
            init(self, *args, **kwargs)
        except BaseException:
            _forget(id(self))
            raise

    wrapper._untracks = True
    return wrapper


def _untracking_close(close):
    """Wraps a subclass's ``close`` so that a closed handle leaves the registry."""

    @functools.wraps(close)
    def wrapper(self, *args, **kwargs):
        try:
            return close(self, *args, **kwargs)
        finally:
            _forget(id(self))

    wrapper._untracks = True
    return wrapper


def check_collection_name(name: object) -> str:
    """``name`` if every backend accepts it, else :class:`InvalidCollectionNameError` saying why."""
    if not isinstance(name, str) or not _NAME_RULE.fullmatch(name):
        raise InvalidCollectionNameError(
            f"invalid collection name {name!r}: use 1-255 letters, digits and underscores, starting with a letter "
            "or an underscore (e.g. 'photos_2024')"
        )
    return name


@dataclass(frozen=True)
class CollectionInfo:
    """What a collection was created for. Writes that disagree with it are refused."""

    name: str
    dim: int
    model: str
    metric: str = "cosine"
    target_domain: str = "photo"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_collection_name(self.name)
        if self.metric not in METRICS:
            raise ValueError(f"metric {self.metric!r} is not supported; clair_vec collections use {list(METRICS)}")
        if not isinstance(self.dim, int) or self.dim < 1:
            raise ValueError(f"dim must be a positive integer, got {self.dim!r}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> CollectionInfo:
        return cls(**json.loads(text))


@dataclass
class Record:
    """One vector to store. ``id`` is a content hash (hex); payload values are JSON scalars."""

    id: str
    vector: np.ndarray
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Hit:
    id: str
    score: float
    payload: dict[str, Any]


def point_uuid(record_id: str) -> str:
    """The UUID a content-hash id maps to, for engines whose ids must be UUIDs or integers."""
    return str(uuid.uuid5(ID_NAMESPACE, record_id))


def normalize_filter(filter: Mapping[str, Any] | None) -> dict[str, list[str]]:
    """``{"domain": "photo", "label": ["cat", "dog"]}`` -> every value a list (an OR within a key,
    an AND across keys). Every value must be a string: the filterable fields are strings, and a
    number or None would match nothing on one engine and fail on another."""
    if not filter:
        return {}
    if not isinstance(filter, Mapping):
        raise ValueError(f"filter must be a mapping like {{'label': ['cat', 'dog']}}, got {type(filter).__name__}")
    out = {}
    for key, value in filter.items():
        if key not in FILTER_KEYS:
            raise ValueError(f"cannot filter on {key!r}; filterable payload keys are {list(FILTER_KEYS)}")
        values = list(value) if isinstance(value, (list, tuple, set, frozenset)) else [value]
        if not values:
            raise ValueError(f"filter on {key!r} has an empty list of values")
        for v in values:
            if not isinstance(v, str):
                raise ValueError(
                    f"filter value {v!r} for {key!r} is a {type(v).__name__}; filter values must be strings "
                    f"(e.g. {{{key!r}: ['cat', 'dog']}})"
                )
        out[key] = values
    return out


def matches(payload: Mapping[str, Any], flt: Mapping[str, list[Any]]) -> bool:
    return all(payload.get(k) in vs for k, vs in flt.items())


class Backend(ABC):
    """Base class of vector-database backends.

    Subclasses set ``name`` and implement the primitives. ``uri`` selects the engine instance
    (a local file or directory for embedded engines, a URL for servers); ``None`` means the
    backend's embedded default. Opening a backend never creates a store: an embedded engine
    creates its file or directory with its first collection, so a search against a path that
    does not exist fails with :class:`CollectionNotFoundError` and leaves nothing behind.
    """

    name: ClassVar[str] = ""
    #: Upper bound on one write request, below Milvus' 64 MB gRPC message limit with headroom.
    max_batch_bytes: ClassVar[int] = 16 * 1024 * 1024
    max_batch_records: ClassVar[int] = 4096
    max_retries: ClassVar[int] = 3
    retry_base_delay: ClassVar[float] = 0.2

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name, wrap in (("__init__", _untracking_init), ("close", _untracking_close)):
            method = cls.__dict__.get(name)
            if method is not None and not getattr(method, "_untracks", False):
                setattr(cls, name, wrap(method))

    def __init__(self, uri: str | None = None, **options: Any) -> None:
        self.uri = uri
        self.options = options
        self._infos: dict[str, CollectionInfo] = {}
        self._loaded: set[str] = set()
        _track(self)

    # ------------------------------------------------------------------ primitives to implement
    @abstractmethod
    def _create(self, info: CollectionInfo) -> None: ...

    @abstractmethod
    def _read_info(self, name: str) -> CollectionInfo | None:
        """The stored :class:`CollectionInfo`, or None when no such collection exists."""

    @abstractmethod
    def _upsert(self, name: str, records: Sequence[Record]) -> None:
        """Write one batch (already validated, within the size bounds); visible to reads on return."""

    @abstractmethod
    def _search(self, name: str, vectors: np.ndarray, top_k: int, flt: dict[str, list[str]]) -> list[list[Hit]]: ...

    @abstractmethod
    def _count(self, name: str, flt: dict[str, list[str]]) -> int: ...

    @abstractmethod
    def _existing_ids(self, name: str, ids: Sequence[str]) -> set[str]: ...

    @abstractmethod
    def _delete(self, name: str, ids: Sequence[str]) -> None: ...

    @abstractmethod
    def _drop(self, name: str) -> None: ...

    def _get(self, name: str, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Payloads of the stored ``ids`` (absent ids left out)."""
        raise NotImplementedError(f"backend {self.name!r} cannot look records up by id (implement _get)")

    def _scroll(
        self, name: str, flt: dict[str, list[str]], cursor: Any, limit: int
    ) -> tuple[list[tuple[str, dict[str, Any]]], Any]:
        """One page of ``(id, payload)`` matching ``flt`` and the cursor of the next page (None at
        the end). ``cursor`` is None for the first page, else what the previous page returned."""
        raise NotImplementedError(f"backend {self.name!r} cannot list its records (implement _scroll)")

    def _load(self, name: str) -> None:  # noqa: B027 - optional; engines that serve every collection need nothing
        """Make an existing collection readable by this handle. Called once per handle and
        collection, before its first read or write: a new process must be able to search what
        another process wrote (Milvus loads the collection into memory here)."""

    def _list(self) -> list[str]:
        return []

    def _flush(self, name: str) -> None:  # noqa: B027 - optional; engines that persist on write need nothing
        """Seal pending writes (durable, and searchable at full speed)."""

    @_untracking_close  # noqa: B027 - optional hook; engines without resources need nothing
    def close(self) -> None:
        """Release files, locks and connections. Safe to call twice. A handle still open when the
        interpreter exits is closed then (newest first), before the engines' own exit hooks run."""

    def is_transient(self, exc: BaseException) -> bool:
        """Whether ``exc`` is worth retrying. Subclasses add their client's timeout/busy errors."""
        return isinstance(exc, (TransientBackendError, TimeoutError))

    @property
    def shared(self) -> bool:
        """Whether several processes may use this store at once (a server). Embedded stores open in
        one process at a time: a service runs one replica on them, bulk indexing one writer."""
        return False

    # ------------------------------------------------------------------ public API
    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def create_collection(self, info: CollectionInfo, *, exist_ok: bool = True) -> CollectionInfo:
        """Create ``info.name``, or return the existing one if it was created with the same spec."""
        existing = self._call(self._read_info, check_collection_name(info.name))
        if existing is not None:
            if not exist_ok:
                raise CollectionMismatchError(f"collection {info.name!r} already exists ({self.name} at {self.uri})")
            self._check_same(existing, info)
            self._infos[info.name] = existing
            return existing
        self._call(self._create, info)
        self._infos[info.name] = info
        return info

    def open_collection(self, name: str) -> CollectionInfo:
        """The spec of an existing collection, readable by this handle from now on;
        :class:`CollectionNotFoundError` if there is none."""
        if name in self._infos and name in self._loaded:
            return self._infos[name]
        info = self._infos.get(name) or self._call(self._read_info, check_collection_name(name))
        if info is None:
            known = self._call(self._list)
            raise CollectionNotFoundError(
                f"no collection {name!r} in {self.name} at {self.uri or '(embedded default)'}"
                f"{'; collections there: ' + str(sorted(known)) if known else ''}. "
                "Create it by indexing a gallery first (clair_vec.index / `clair-vec index`)."
            )
        self._infos[name] = info
        self._call(self._load, name)
        self._loaded.add(name)
        return info

    def has_collection(self, name: str) -> bool:
        return name in self._infos or self._call(self._read_info, check_collection_name(name)) is not None

    def list_collections(self) -> list[str]:
        return sorted(self._call(self._list))

    def upsert(self, name: str, records: Iterable[Record], *, model: str | None = None) -> int:
        """Insert or overwrite records by id; returns how many were written.

        Refuses vectors whose dimension differs from the collection's, and (when ``model`` is
        given) vectors of another model, before anything is written.
        """
        info = self.open_collection(name)
        if model is not None and model != info.model:
            raise CollectionMismatchError(
                f"collection {name!r} holds vectors of model {info.model!r}, not {model!r}. "
                "Index into a new collection, or drop this one and re-index with the new model."
            )
        records = list(records)
        for r in records:
            r.vector = self._as_vector(r.vector, info)
        seen: dict[str, Record] = {r.id: r for r in records}  # the last write of an id wins, as in the engines
        written = 0
        for batch in self._batches(list(seen.values())):
            self._call(self._upsert, name, batch)
            written += len(batch)
        return written

    def flush(self, name: str) -> None:
        """Call after a bulk write. Writes are visible without it; Milvus searches its unsealed
        segments about 10x slower (0.7 s vs 0.06 s a query at 20k x 512-d in Milvus Lite)."""
        self.open_collection(name)
        self._call(self._flush, name)

    def search(
        self, name: str, vectors: np.ndarray, *, top_k: int = 10, filter: Mapping[str, Any] | None = None
    ) -> list[list[Hit]]:
        """Nearest neighbours by cosine similarity, best first, for each row of ``vectors``."""
        info = self.open_collection(name)
        if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
            raise ValueError(f"top_k must be an integer >= 1, got {top_k!r}")
        flt = normalize_filter(filter)
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.size == 0:
            return []
        vectors = np.atleast_2d(vectors)
        if vectors.ndim != 2 or vectors.shape[1] != info.dim:
            raise CollectionMismatchError(
                f"query vectors have dimension {vectors.shape[-1]} but collection {name!r} holds {info.dim}-d vectors "
                f"of model {info.model!r}: encode the queries with that model"
            )
        if not np.all(np.isfinite(vectors)):
            raise ValueError("query vectors contain NaN or infinity")
        return self._call(self._search, name, vectors, int(top_k), flt)

    def count(self, name: str, *, filter: Mapping[str, Any] | None = None) -> int:
        self.open_collection(name)
        return self._call(self._count, name, normalize_filter(filter))

    def existing_ids(self, name: str, ids: Sequence[str]) -> set[str]:
        """Which of ``ids`` are stored already (what a resumed indexing run can skip)."""
        self.open_collection(name)
        found: set[str] = set()
        for start in range(0, len(ids), 1024):
            found |= self._call(self._existing_ids, name, list(ids[start : start + 1024]))
        return found

    def get(self, name: str, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """``{id: payload}`` of the stored ``ids``; ids that are not stored are left out."""
        self.open_collection(name)
        found: dict[str, dict[str, Any]] = {}
        for start in range(0, len(ids), 1024):
            found.update(self._call(self._get, name, list(ids[start : start + 1024])))
        return found

    def records(
        self, name: str, *, filter: Mapping[str, Any] | None = None, page_size: int = 1000
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """Every ``(id, payload)`` matching ``filter``, page by page (memory bounded by a page)."""
        self.open_collection(name)
        flt, cursor = normalize_filter(filter), None
        while True:
            page, cursor = self._call(self._scroll, name, flt, cursor, page_size)
            yield from page
            if cursor is None or not page:
                return

    def delete(self, name: str, ids: Sequence[str]) -> int:
        self.open_collection(name)
        present = self.existing_ids(name, ids)
        if present:
            self._call(self._delete, name, sorted(present))
        return len(present)

    def drop_collection(self, name: str) -> bool:
        """Remove a collection; False if there was none."""
        self._infos.pop(name, None)
        self._loaded.discard(name)
        if self._call(self._read_info, check_collection_name(name)) is None:
            return False
        self._call(self._drop, name)
        return True

    # ------------------------------------------------------------------ shared machinery
    @staticmethod
    def _check_same(existing: CollectionInfo, wanted: CollectionInfo) -> None:
        for key in ("dim", "model", "metric", "target_domain"):
            a, b = getattr(existing, key), getattr(wanted, key)
            if a != b:
                raise CollectionMismatchError(
                    f"collection {existing.name!r} exists with {key}={a!r}, not {b!r}. Use another collection "
                    "name, or drop this one to re-index with the new model."
                )

    @staticmethod
    def _as_vector(vector: Any, info: CollectionInfo) -> np.ndarray:
        v = np.asarray(vector, dtype=np.float32).reshape(-1)
        if v.shape[0] != info.dim:
            raise CollectionMismatchError(
                f"vector has dimension {v.shape[0]} but collection {info.name!r} was created for {info.dim}-d "
                f"vectors of model {info.model!r}"
            )
        if not np.all(np.isfinite(v)):
            raise ValueError("vector contains NaN or infinity; refusing to store it")
        return v

    def _batches(self, records: Sequence[Record]) -> Iterator[list[Record]]:
        batch: list[Record] = []
        size = 0
        for r in records:
            rsize = r.vector.nbytes + len(json.dumps(r.payload, default=str)) + len(r.id) + 64
            if batch and (size + rsize > self.max_batch_bytes or len(batch) >= self.max_batch_records):
                yield batch
                batch, size = [], 0
            batch.append(r)
            size += rsize
        if batch:
            yield batch

    def _call(self, fn: Any, *args: Any) -> Any:
        """Run a primitive, retrying transient errors with exponential backoff, a bounded number of times."""
        for attempt in range(self.max_retries + 1):
            try:
                return fn(*args)
            except (CollectionNotFoundError, CollectionMismatchError, BackendUnavailableError, NotImplementedError):
                raise
            except Exception as exc:
                if not self.is_transient(exc):
                    raise
                if attempt == self.max_retries:
                    raise BackendUnavailableError(
                        f"{self.name} at {self.uri or '(embedded default)'} still failed after {attempt + 1} attempts: {exc}"
                    ) from exc
                delay = self.retry_base_delay * 2**attempt
                log.warning("%s: transient error (%s); retry %d/%d in %.1fs", self.name, exc, attempt + 1, self.max_retries, delay)
                time.sleep(delay)
        raise AssertionError("unreachable")
