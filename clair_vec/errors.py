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


class UnsafeCheckpointError(ClairVecError, ValueError):
    """A checkpoint or cache file holds something other than plain tensors and containers
    (e.g. a pickled object that would run code on load); it is refused, never executed."""


class ZeroShotLeakError(ClairVecError, ValueError):
    """An evaluation would score a model on classes it was trained on."""
