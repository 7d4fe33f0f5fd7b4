"""Everything a backend plugin imports, in one module: ``from clair_vec.plugin import ...``.

- The contract: :class:`Backend` (subclass it), the data types :class:`CollectionInfo`,
  :class:`Record`, :class:`Hit`, the filter keys and :func:`matches` (a filter evaluated in
  Python), :func:`point_uuid` (for engines whose ids must be UUIDs), and :data:`hookimpl` with
  which a plugin registers its backend.
- The errors a backend raises, so the CLI, the service and the suite classify them alike.
- Helpers the built-in backends build on: credentials from an option, the environment or a
  ``*_FILE`` (:func:`find_secret`), keeping secrets out of every message (:func:`register_secret`,
  :func:`scrub`, :func:`redact_uri`), free space before an embedded write (:func:`free_bytes`,
  :func:`mount_point`), a store whose last write never finished (:class:`WriteMarker`,
  :func:`probe`), aliases for engines without their own (:class:`AliasFile`).
- The conformance suite a plugin runs against itself: :class:`BackendConformance` and
  :class:`FreshNamespace` (loaded on first use: they need pytest, the rest of this module does not).

Nothing here imports torch: a backend stores NumPy vectors and knows nothing of models. The guide
is ``plugins/WRITING_A_BACKEND.md``; the built-in backends, ``plugins/clair-vec-milvus`` and
``plugins/clair-vec-qdrant``, are complete examples that use only this module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from clair_vec.errors import (
    AliasError,
    AuthenticationError,
    BackendError,
    BackendUnavailableError,
    CapabilityError,
    CollectionMismatchError,
    CollectionNotFoundError,
    DiskFullError,
    InvalidCollectionNameError,
    RecordNotFoundError,
    StoreDamagedError,
    StoreLockedError,
    TransientBackendError,
)
from clair_vec.store.alias_file import ALIASES_FILE, AliasFile
from clair_vec.store.backend import FILTER_KEYS, Backend, CollectionInfo, Hit, Record, matches, point_uuid
from clair_vec.store.crash_marker import WriteMarker, probe
from clair_vec.store.credentials import NO_SECRET, Secret, find_secret
from clair_vec.store.disk_space import free_bytes, mount_point
from clair_vec.store.hookspecs import hookimpl
from clair_vec.store.ids import record_id
from clair_vec.store.redaction import redact_uri, register_secret, scrub

if TYPE_CHECKING:  # pragma: no cover
    from clair_vec.store.testing import BackendConformance, FreshNamespace

__all__ = [
    "ALIASES_FILE", "FILTER_KEYS", "NO_SECRET", "AliasError", "AliasFile", "AuthenticationError", "Backend",
    "BackendConformance", "BackendError", "BackendUnavailableError", "CapabilityError", "CollectionInfo",
    "CollectionMismatchError", "CollectionNotFoundError", "DiskFullError", "FreshNamespace", "Hit",
    "InvalidCollectionNameError", "Record", "RecordNotFoundError", "Secret", "StoreDamagedError", "StoreLockedError",
    "TransientBackendError", "WriteMarker", "find_secret", "free_bytes", "hookimpl", "matches", "mount_point",
    "point_uuid", "probe", "record_id", "redact_uri", "register_secret", "scrub",
]  # fmt: skip


def __getattr__(name: str) -> Any:
    if name in ("BackendConformance", "FreshNamespace"):
        from clair_vec.store import testing

        return getattr(testing, name)
    raise AttributeError(f"module 'clair_vec.plugin' has no attribute {name!r}")
