"""The backend contract: what every vector-database plugin implements. No torch in here.

A backend subclasses :class:`Backend` and implements the ``_``-prefixed primitives. The public
methods around them own the behaviour users rely on whatever the engine: dimension and model
checks, byte-bounded batching, bounded retries of transient errors (and nothing else), payload
filters, aliases resolved at every call, free-space checks for embedded stores, and URIs shown
without their credentials.
"""

from __future__ import annotations

import atexit
import functools
import json
import logging
import math
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
    AliasError,
    BackendError,
    BackendUnavailableError,
    CapabilityError,
    CollectionMismatchError,
    CollectionNotFoundError,
    InvalidCollectionNameError,
    RecordNotFoundError,
    TransientBackendError,
)
from clair_vec.store.disk_space import (
    DEFAULT_MARGIN_MB,
    check_room,
    disk_full_error,
    is_disk_full,
    server_disk_full_error,
)
from clair_vec.store.redaction import (
    install_log_filter,
    is_secret_name,
    redact_uri,
    register_secret,
    schemeless_credentials,
    scrub,
    uri_secrets,
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
#: optional capabilities -> the primitives that provide them (see :meth:`Backend.supports`)
FEATURES = {"vectors": ("_vectors",), "aliases": ("_set_alias", "_drop_alias", "_list_aliases")}


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


def declared_options(cls: type) -> list[str]:
    """The keyword options a backend class's ``__init__`` methods declare, base class included."""
    import inspect

    names = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        init = getattr(init, "__wrapped__", init)
        if init is None:
            continue
        try:
            params = inspect.signature(init).parameters.values()
        except (TypeError, ValueError):  # a C-implemented __init__ has no signature to read
            continue
        for p in params:
            if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name not in ("self", "uri"):
                names.add(p.name)
    return sorted(names)


class Backend(ABC):
    """Base class of vector-database backends.

    Subclasses set ``name`` and implement the primitives. ``uri`` selects the engine instance
    (a local file or directory for embedded engines, a URL for servers); ``None`` means the
    backend's embedded default (an engine that is only a server has none: it reads its address
    from the environment or refuses with the fix). Opening a backend never creates a store: an
    embedded engine creates its file or directory with its first collection, so a search against
    a path that does not exist fails with :class:`CollectionNotFoundError` and leaves nothing
    behind; a server backend creates nothing on the server until the first collection.

    Threads: one handle is called from several threads at once (the service calls it from a
    worker thread and from Starlette's thread pool), so primitives must be thread-safe; the base
    class serialises only the first open of each collection.

    Credentials: the URI and the options whose names say credential (``token``, ``api_key``,
    ``password``...) are registered as secrets (:mod:`~clair_vec.store.redaction`); messages show
    :attr:`display_uri`, never ``uri``.
    """

    name: ClassVar[str] = ""
    #: Upper bound on one write request, below Milvus' 64 MB gRPC message limit with headroom.
    max_batch_bytes: ClassVar[int] = 16 * 1024 * 1024
    max_batch_records: ClassVar[int] = 4096
    max_retries: ClassVar[int] = 3
    retry_base_delay: ClassVar[float] = 0.2
    #: the most hits the engine returns for one query (None: no limit); checked before the engine sees it
    max_top_k: ClassVar[int | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name, wrap in (("__init__", _untracking_init), ("close", _untracking_close)):
            method = cls.__dict__.get(name)
            if method is not None and not getattr(method, "_untracks", False):
                setattr(cls, name, wrap(method))

    def __init__(self, uri: str | None = None, *, disk_margin_mb: float = DEFAULT_MARGIN_MB, **options: Any) -> None:
        self.uri = uri
        margin = float(disk_margin_mb)
        if margin < 0:
            raise ValueError(f"disk_margin_mb must be >= 0, got {margin}")
        #: free space kept on an embedded store's disk beyond what a write needs (option ``disk_margin_mb``)
        self.disk_margin_bytes = int(margin * 2**20)
        for secret in uri_secrets(uri):
            register_secret(secret)
        for key, value in options.items():
            if is_secret_name(key):
                register_secret(value)
        if schemeless_credentials(uri):  # else an embedded engine would make a folder named after the password
            raise ValueError(f"{redact_uri(uri)!r} holds credentials but no scheme: put http:// (https:// for TLS) in front "
                             "of it for a server, or give a store path without '@'")  # fmt: skip
        if options:
            # whatever reaches here no __init__ took: a misspelt option (hnsw_eff=128) must not be
            # ignored while the user believes it set
            raise ValueError(
                f"the {type(self).name or type(self).__name__} backend ({type(self).__name__} at {self.display_uri}) has no option "
                f"{', '.join(repr(k) for k in sorted(options))}; its options: {', '.join(declared_options(type(self)))}"
            )
        install_log_filter("clair_vec", type(self).__module__.split(".")[0])
        self._infos: dict[str, CollectionInfo] = {}
        self._loaded: set[str] = set()
        self._open_lock = threading.RLock()
        _track(self)

    @property
    def display_uri(self) -> str:
        """The URI as messages show it: user info and credential query parameters as ``***``."""
        return redact_uri(self.uri)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} at {self.display_uri}>"

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

    def _vectors(self, name: str, ids: Sequence[str]) -> dict[str, np.ndarray]:
        """Optional: the stored vectors of ``ids`` (absent ids left out); see :meth:`vectors`."""
        raise CapabilityError(f"backend {self.name!r} does not implement _vectors")

    def _set_alias(self, alias: str, collection: str) -> None:
        """Optional: create ``alias`` or move it to ``collection``, atomically (a reader resolving
        the alias meanwhile gets the old collection or the new one). Names are checked already."""
        raise CapabilityError(f"backend {self.name!r} does not implement _set_alias")

    def _drop_alias(self, alias: str) -> None:
        """Optional: remove an alias that exists."""
        raise CapabilityError(f"backend {self.name!r} does not implement _drop_alias")

    def _list_aliases(self) -> dict[str, str]:
        """Optional: every ``alias -> collection`` of the store (``{}`` when there is none)."""
        return {}

    def _alias_target(self, name: str) -> str | None:
        """The collection alias ``name`` points to, None if ``name`` is no alias. Called for
        every name a handle has not seen as a collection: override when the engine answers
        for one alias more cheaply than it lists them all."""
        return self._list_aliases().get(name)

    def _flush(self, name: str) -> None:  # noqa: B027 - optional; engines that persist on write need nothing
        """Seal pending writes (durable, and searchable at full speed)."""

    @_untracking_close  # noqa: B027 - optional hook; engines without resources need nothing
    def close(self) -> None:
        """Release files, locks and connections. Safe to call twice. A handle still open when the
        interpreter exits is closed then (newest first), before the engines' own exit hooks run."""

    def is_transient(self, exc: BaseException) -> bool:
        """Whether ``exc`` is worth retrying. Subclasses add their client's timeout/busy errors;
        a request the engine rejects and refused credentials are never transient (the same call
        fails the same way), and clair_vec's own errors other than TransientBackendError are
        never retried whatever this says."""
        return isinstance(exc, (TransientBackendError, TimeoutError))

    def translate_error(self, exc: BaseException) -> Exception | None:
        """The clair_vec error a client exception stands for, or None to leave it as it is.
        Called for every exception a primitive raises, before the retry decision: return an
        :class:`~clair_vec.errors.AuthenticationError` for refused credentials, a
        :class:`~clair_vec.errors.BackendUnavailableError` for a server that cannot be reached
        (after the client's own retries), a ``ValueError`` for a request the engine rejects, a
        :class:`~clair_vec.errors.TransientBackendError` for something worth retrying. What it
        returns is raised from ``exc`` (and retried only if transient)."""
        return None

    @property
    def shared(self) -> bool:
        """Whether several processes may open and write this store at the same time (a server).
        Part of the contract, checked from behaviour by the conformance suite: a store a second
        process can open and write while this handle has it must say True (else the service refuses
        replicas, Ray bulk indexing funnels every write through one actor, and the service runs
        database calls on its event loop); a store that refuses a second process
        (:class:`~clair_vec.errors.StoreLockedError`) must say False."""
        return False

    @property
    def storage_path(self) -> Path | None:
        """The directory or file of an embedded store (its free space is checked before each
        write); None for a server."""
        return None

    # ------------------------------------------------------------------ public API
    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def supports(self, feature: str) -> bool:
        """Whether this backend implements an optional capability: ``"vectors"`` (:meth:`vectors`)
        or ``"aliases"`` (:meth:`set_alias` and friends). Without it, those methods raise
        :class:`~clair_vec.errors.CapabilityError`; reads then take no aliases."""
        if feature not in FEATURES:
            raise ValueError(f"unknown feature {feature!r}; features are {sorted(FEATURES)}")
        return all(getattr(type(self), p) is not getattr(Backend, p) for p in FEATURES[feature])

    def create_collection(self, info: CollectionInfo, *, exist_ok: bool = True) -> CollectionInfo:
        """Create ``info.name``, or return the existing one if it was created with the same spec.
        A name that is an alias is refused (:class:`~clair_vec.errors.AliasError`)."""
        name = check_collection_name(info.name)
        target = self._call(self._alias_target, name) if self.supports("aliases") else None
        if target is not None:
            raise AliasError(
                f"{name!r} is an alias of collection {target!r}; a collection cannot take an alias's name (an alias "
                "never hides a collection). Choose another collection name, or drop the alias first (drop_alias)."
            )
        existing = self._call(self._read_info, name)
        if existing is not None:
            if not exist_ok:
                raise CollectionMismatchError(f"collection {name!r} already exists ({self.name} at {self.display_uri})")
            self._check_same(existing, info)
            self._infos[name] = existing
            return existing
        self._check_room(0)
        self._call(self._create, info)
        self._infos[name] = info
        return info

    def open_collection(self, name: str) -> CollectionInfo:
        """The spec of an existing collection (or of the collection an alias points to now),
        readable by this handle from now on; :class:`CollectionNotFoundError` if there is none."""
        return self._open(self.resolve(name), name)

    def _open(self, target: str, asked: str | None = None) -> CollectionInfo:
        info = self._infos.get(target)
        if info is not None and target in self._loaded:
            return info
        with self._open_lock:  # one first open per collection, however many threads ask at once
            info = self._infos.get(target) or self._call(self._read_info, target)
            if info is None:
                known = self._call(self._list)
                via = f" (alias {asked!r} points to it)" if asked not in (None, target) else ""
                raise CollectionNotFoundError(
                    f"no collection {target!r}{via} in {self.name} at {self.display_uri}"
                    f"{'; collections there: ' + str(sorted(known)) if known else ''}. "
                    "Create it by indexing a gallery first (clair_vec.index / `clair-vec index`)."
                )
            self._infos[target] = info
            if target not in self._loaded:
                self._call(self._load, target)
                self._loaded.add(target)
        return info

    def _reread(self, target: str, asked: str, cached: CollectionInfo) -> CollectionInfo:
        stored = self._call(self._read_info, target)
        if stored is None:
            self._infos.pop(target, None)
            self._loaded.discard(target)
            return self._open(target, asked)  # gone: says so by name
        if stored != cached:  # made anew: this handle's load of the old one is stale too
            self._infos[target] = stored
            self._loaded.discard(target)
            self._open(target, asked)
        return stored

    def has_collection(self, name: str) -> bool:
        """Whether ``name`` is a collection, or an alias of one."""
        target = self.resolve(name)
        return target in self._infos or self._call(self._read_info, target) is not None

    def list_collections(self) -> list[str]:
        return sorted(self._call(self._list))

    def upsert(self, name: str, records: Iterable[Record], *, model: str | None = None) -> int:
        """Insert or overwrite records by id; returns how many were written.

        Refuses vectors whose dimension differs from the collection's, and (when ``model`` is
        given) vectors of another model, before anything is written.
        """
        target = self.resolve(name)
        info = self._open(target, name)
        if model is not None:
            # read the spec again: another handle may have dropped the collection and made it anew for
            # another model since this one cached it, and vectors of two models must never share one
            info = self._reread(target, name, info)
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
            self._check_room(sum(_record_bytes(r) for r in batch))
            self._call(self._upsert, target, batch)
            written += len(batch)
        return written

    def flush(self, name: str) -> None:
        """Call after a bulk write. Writes are visible without it; Milvus searches its unsealed
        segments about 10x slower (0.7 s vs 0.06 s a query at 20k x 512-d in Milvus Lite)."""
        target = self.resolve(name)
        self._open(target, name)
        self._call(self._flush, target)

    def search(
        self, name: str, vectors: np.ndarray, *, top_k: int = 10, filter: Mapping[str, Any] | None = None
    ) -> list[list[Hit]]:
        """Nearest neighbours by cosine similarity, best first, for each row of ``vectors``."""
        target = self.resolve(name)
        info = self._open(target, name)
        if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
            raise ValueError(f"top_k must be an integer >= 1, got {top_k!r}")
        if self.max_top_k is not None and top_k > self.max_top_k:
            raise ValueError(
                f"top_k {top_k} is above the {self.name} backend's limit of {self.max_top_k}; ask for fewer hits or "
                "page with offset"
            )
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
        return self._call(self._search, target, vectors, int(top_k), flt)

    def count(self, name: str, *, filter: Mapping[str, Any] | None = None) -> int:
        target = self.resolve(name)
        self._open(target, name)
        return self._call(self._count, target, normalize_filter(filter))

    def existing_ids(self, name: str, ids: Sequence[str]) -> set[str]:
        """Which of ``ids`` are stored already (what a resumed indexing run can skip)."""
        target = self.resolve(name)
        self._open(target, name)
        found: set[str] = set()
        for start in range(0, len(ids), 1024):
            found |= self._call(self._existing_ids, target, list(ids[start : start + 1024]))
        return found

    def get(self, name: str, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """``{id: payload}`` of the stored ``ids``; ids that are not stored are left out."""
        target = self.resolve(name)
        self._open(target, name)
        found: dict[str, dict[str, Any]] = {}
        for start in range(0, len(ids), 1024):
            found.update(self._call(self._get, target, list(ids[start : start + 1024])))
        return found

    def vectors(self, name: str, ids: Sequence[str]) -> dict[str, np.ndarray]:
        """``{id: float32 vector}`` of the stored ``ids``, in the order asked. Engines may return
        vectors normalised to unit length (cosine collections). Any id that is not stored raises
        :class:`~clair_vec.errors.RecordNotFoundError` (its ``ids`` lists them); a backend without
        the primitive raises :class:`~clair_vec.errors.CapabilityError`."""
        if not self.supports("vectors"):
            raise CapabilityError(
                f"backend {self.name!r} cannot search by stored id (it does not implement _vectors); search with an "
                "image or a vector instead, or use a backend that supports it (milvus, qdrant, numpy)"
            )
        target = self.resolve(name)
        info = self._open(target, name)
        wanted = list(dict.fromkeys(ids))
        found: dict[str, np.ndarray] = {}
        for start in range(0, len(wanted), 1024):
            found.update(self._call(self._vectors, target, wanted[start : start + 1024]))
        missing = [i for i in wanted if i not in found]
        if missing:
            shown = ", ".join(map(repr, missing[:5])) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise RecordNotFoundError(
                f"{len(missing)} of the {len(wanted)} ids asked for are not stored in collection {name!r}: {shown}. "
                "Index those images first, or leave their ids out.",
                missing,
            )
        return {i: np.asarray(found[i], dtype=np.float32).reshape(info.dim) for i in wanted}

    def records(
        self, name: str, *, filter: Mapping[str, Any] | None = None, page_size: int = 1000
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """Every ``(id, payload)`` matching ``filter``, page by page (memory bounded by a page)."""
        target = self.resolve(name)
        self._open(target, name)
        flt, cursor = normalize_filter(filter), None
        while True:
            page, cursor = self._call(self._scroll, target, flt, cursor, page_size)
            yield from page
            if cursor is None or not page:
                return

    def delete(self, name: str, ids: Sequence[str]) -> int:
        target = self.resolve(name)
        self._open(target, name)
        present = self.existing_ids(target, ids)
        if present:
            self._call(self._delete, target, sorted(present))
        return len(present)

    def drop_collection(self, name: str) -> bool:
        """Remove a collection; False if there was none. Refused for an alias (drop_alias removes
        one) and for a collection that aliases still point to (the message names them): move or
        drop those first, so no reader is left resolving to nothing."""
        check_collection_name(name)
        if self.supports("aliases"):
            target = self._call(self._alias_target, name)
            if target is not None:
                raise AliasError(
                    f"{name!r} is an alias (of collection {target!r}), not a collection: drop_alias({name!r}) removes "
                    f"the alias, drop_collection({target!r}) the collection"
                )
            pointing = sorted(a for a, c in self._call(self._list_aliases).items() if c == name)
            if pointing:
                raise AliasError(
                    f"collection {name!r} is the target of alias(es) {pointing}: move them to another collection "
                    "(set_alias) or drop them (drop_alias) first"
                )
        self._infos.pop(name, None)
        self._loaded.discard(name)
        if self._call(self._read_info, name) is None:
            return False
        self._call(self._drop, name)
        return True

    # ------------------------------------------------------------------ aliases
    def resolve(self, name: str) -> str:
        """The collection ``name`` stands for now: itself for a collection (or an unknown name),
        the target for an alias. Never cached across calls for an alias (another process may
        move it); free for a name this handle has opened as a collection."""
        check_collection_name(name)
        if name in self._infos or not self.supports("aliases"):
            return name
        target = self._call(self._alias_target, name)
        return name if target is None else target

    def aliases(self) -> dict[str, str]:
        """Every ``alias -> collection`` of the store, sorted by alias."""
        if not self.supports("aliases"):
            return {}
        return dict(sorted(self._call(self._list_aliases).items()))

    def set_alias(self, alias: str, collection: str) -> None:
        """Point ``alias`` at ``collection``: create it, or move it atomically (a reader sees the
        old collection or the new one). Alias names follow the collection-name rule; an alias
        never hides a collection of the same name, and points at a collection, not an alias."""
        check_collection_name(alias)
        check_collection_name(collection)
        if not self.supports("aliases"):
            raise CapabilityError(
                f"backend {self.name!r} cannot keep aliases (it does not implement _set_alias); serve the collection "
                "by its own name, or use a backend that supports aliases (milvus, qdrant, numpy)"
            )
        if alias == collection:
            raise AliasError(f"alias {alias!r} cannot point at itself")
        further = self._call(self._alias_target, collection)
        if further is not None:
            raise AliasError(
                f"{collection!r} is itself an alias (of {further!r}); point {alias!r} at a collection: "
                f"set_alias({alias!r}, {further!r})"
            )
        if self._call(self._read_info, collection) is None:
            raise CollectionNotFoundError(
                f"cannot point alias {alias!r} at {collection!r}: no such collection in {self.name} at {self.display_uri}"
            )
        if self._call(self._alias_target, alias) is None and self._call(self._read_info, alias) is not None:
            raise AliasError(
                f"{alias!r} is a collection; an alias never hides a collection of the same name. Choose another alias "
                "name, or drop that collection first."
            )
        self._call(self._set_alias, alias, collection)

    def drop_alias(self, alias: str) -> bool:
        """Remove an alias (never the collection it points to); False if there was none."""
        check_collection_name(alias)
        if not self.supports("aliases") or self._call(self._alias_target, alias) is None:
            return False
        self._call(self._drop_alias, alias)
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

    def _check_room(self, batch_bytes: int) -> None:
        """Embedded stores: refuse a write the disk cannot hold, before the engine starts it."""
        path = self.storage_path
        if path is not None:
            check_room(path, batch_bytes, self.disk_margin_bytes, f"the {self.name} store {self.display_uri}")

    def _batches(self, records: Sequence[Record]) -> Iterator[list[Record]]:
        batch: list[Record] = []
        size = 0
        for r in records:
            rsize = _record_bytes(r)
            if batch and (size + rsize > self.max_batch_bytes or len(batch) >= self.max_batch_records):
                yield batch
                batch, size = [], 0
            batch.append(r)
            size += rsize
        if batch:
            yield batch

    def _call(self, fn: Any, *args: Any) -> Any:
        """Run a primitive, retrying transient errors with exponential backoff, a bounded number of
        times. clair_vec's own errors are never retried (but TransientBackendError), nor is anything
        ``is_transient`` does not name; an engine's "no space left on device" becomes DiskFullError."""
        for attempt in range(self.max_retries + 1):
            try:
                return fn(*args)
            except NotImplementedError:
                raise
            except BackendError as exc:
                if not isinstance(exc, TransientBackendError):
                    raise
                error: Exception = exc
            except Exception as exc:
                mapped = self.translate_error(exc)
                if mapped is not None and not isinstance(mapped, TransientBackendError):
                    raise mapped from exc
                if is_disk_full(exc):
                    path = self.storage_path
                    if path is not None:
                        raise disk_full_error(path, f"the {self.name} store {self.display_uri}", exc) from exc
                    raise server_disk_full_error(f"the server behind {self.name} at {self.display_uri}", exc) from exc
                if mapped is None and not self.is_transient(exc):
                    raise
                error = mapped or exc
            if attempt == self.max_retries:
                raise BackendUnavailableError(
                    f"{self.name} at {self.display_uri} still failed after {attempt + 1} attempts: {scrub(str(error))}"
                ) from error
            delay = self.retry_base_delay * 2**attempt
            # while a server is down every call retries: one warning a minute says so, the rest is debug
            level = logging.WARNING if _retry_note_due(self.name) else logging.DEBUG
            log.log(level, "%s: transient error (%s); retry %d/%d in %.1fs", self.name, error, attempt + 1, self.max_retries, delay)
            time.sleep(delay)
        raise AssertionError("unreachable")


RETRY_NOTE_INTERVAL_S = 60.0
_retry_notes: dict[str, float] = {}
_retry_notes_lock = threading.Lock()


def _retry_note_due(backend: str) -> bool:
    now = time.monotonic()
    with _retry_notes_lock:
        if now - _retry_notes.get(backend, -math.inf) < RETRY_NOTE_INTERVAL_S:
            return False
        _retry_notes[backend] = now
        return True


def _record_bytes(r: Record) -> int:
    """About what one record weighs in a write request."""
    return r.vector.nbytes + len(json.dumps(r.payload, default=str)) + len(r.id) + 64
