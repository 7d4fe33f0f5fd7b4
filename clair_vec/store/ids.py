"""Record ids: a hash of (domain, image bytes). No torch here: Ray hashing tasks import this alone.

The same image indexed twice gets the same id, so writes are idempotent and a re-run skips what
is stored; the same image in another domain is another record (it maps differently).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

ID_PATTERN = r"[0-9a-f]{32}"


def content_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def record_id(domain: str, digest: str) -> str:
    """The id of an image of ``domain`` whose bytes hash to ``digest``."""
    return hashlib.sha256(f"{domain}\0{digest}".encode()).hexdigest()[:32]


def file_record_id(path: str | Path, domain: str) -> tuple[str, bytes]:
    """``(id, bytes)`` of an image file: the bytes are read once and returned for decoding."""
    data = Path(path).read_bytes()
    return record_id(domain, content_digest(data)), data
