"""Exceptions a user can act on. Each message names the problem and the fix."""

from __future__ import annotations


class ClairVecError(Exception):
    """Base class of every error clair_vec raises on purpose."""


class WeightsNotFoundError(ClairVecError, FileNotFoundError):
    """CLIP weights are neither on disk nor downloadable (offline machine, wrong path)."""


class CorruptImageError(ClairVecError, ValueError):
    """An image file cannot be decoded."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"cannot read image {path!r}: {reason}")
        self.path = path
        self.reason = reason


class UnknownDomainError(ClairVecError, KeyError):
    def __init__(self, domain: str, known: list[str]) -> None:
        super().__init__(
            f"unknown domain {domain!r}: this model knows {sorted(known)}. "
            "Pass one of those, or retrain with data that contains the domain."
        )

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


class DatasetError(ClairVecError, ValueError):
    """A dataset folder or split file is missing or malformed."""


class PluginHookError(ClairVecError):
    """A plugin's hook raised or returned what its hook does not allow; the message names the plugin."""


class BackendError(ClairVecError):
    """Base of the errors raised by vector-database backends."""


class UnknownBackendError(BackendError, LookupError):
    pass


class CollectionNotFoundError(BackendError, LookupError):
    pass


class CollectionMismatchError(BackendError, ValueError):
    """Vectors or a collection spec disagree with what a collection was created with."""


class BackendUnavailableError(BackendError, ConnectionError):
    """The server behind a backend does not answer."""


class TransientBackendError(BackendError):
    """A failure worth retrying (timeouts, busy server); backends raise or map to it."""


class StoreLockedError(BackendUnavailableError):
    """An embedded store (Milvus Lite file, Qdrant Edge directory) is open in another process."""


class InvalidCollectionNameError(BackendError, ValueError):
    """A collection name that some engine would refuse; checked before any engine sees it."""


class AuthenticationError(BackendError, PermissionError):
    """A server refused the credentials (or their rights). Never retried: the same token is
    refused again. The message says where the credentials came from, never what they are."""


class RecordNotFoundError(BackendError, LookupError):
    """Ids asked for by id (``Backend.vectors``) that are not stored; ``.ids`` lists them all."""

    def __init__(self, message: str, ids: list[str]) -> None:
        super().__init__(message)
        self.ids = list(ids)


class CapabilityError(BackendError):
    """The backend does not implement an optional primitive (vectors by id, aliases)."""


class AliasError(BackendError, ValueError):
    """An alias that would hide a collection, point at a missing one, or a collection that
    aliases still point to."""


class DiskFullError(BackendError, OSError):
    """The file system of an embedded store has no room for a write (checked before writing,
    or reported by the engine as ENOSPC)."""


class StoreDamagedError(BackendError):
    """An embedded store that its engine can no longer open (it crashed loading it); the
    message says what happened and how to recover the data."""


class CheckpointError(ClairVecError, ValueError):
    """A model directory (``clair.json``, ``clair.pt``, ``foundation.pt``) or a CLIP weights file
    does not hold what it must; the message names the file, the field and what was expected."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint or cache file holds something other than plain tensors and containers
    (e.g. a pickled object that would run code on load); it is refused, never executed."""


class ZeroShotLeakError(ClairVecError, ValueError):
    """An evaluation would score a model on classes it was trained on."""


class VocabularyTooLargeError(ClairVecError, ValueError):
    """A label vocabulary longer than the model embeds at once (the limit is in the message)."""


class TrainingDivergedError(ClairVecError, FloatingPointError):
    """Training's loss or weights stopped being finite numbers: nothing of that run may ship."""
