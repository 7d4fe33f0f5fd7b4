"""``GET /images/{id}``: thumbnails of gallery images, served only as the exact bytes that were indexed.

No path is taken from the request: the id is looked up in the collection, and the stored path is
served only if its bytes still hash to that id (and, with ``gallery_roots``, only if it resolves,
symlinks followed, under one of them).
"""

from __future__ import annotations

import io
import os
import re
import stat
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path

from clair_vec.datasets.images import decode_image
from clair_vec.errors import CorruptImageError, DatasetError
from clair_vec.retrieval import remote
from clair_vec.retrieval.retriever import Retriever
from clair_vec.retrieval.sources import is_under, names_a_file
from clair_vec.service.problems import HTTPProblem
from clair_vec.store.ids import ID_PATTERN, content_digest, record_id

THUMB_SIZES = (64, 128, 160, 256, 512)
MAX_IMAGE_FILE = 64 * 1024 * 1024  # a gallery file larger than this is not thumbnailed
REMOTE_KEY = "remote:"  # the cache's "path" of an image fetched from a URL, S3, a shard or a parquet file
_ID = re.compile(ID_PATTERN)


class Thumbnails:
    """Verified, resized gallery images, cached by (id, size) in a bounded LRU. ``serving`` gives
    the retriever and collection to look ids up in now (an alias may move).

    A cached thumbnail is served only while its file is the one it was made from (same inode,
    size and modification time): a file replaced or deleted since is looked at again, so the
    answer is what is on disk now, or 404."""

    def __init__(self, serving: Callable[[], tuple[Retriever, str]], roots: Sequence[str | Path] | None, capacity: int = 512):
        self.serving = serving
        self.roots = [os.path.realpath(r) for r in roots or []]
        self.capacity = capacity
        self._cache: OrderedDict[tuple[str, int], tuple[str, tuple[int, ...], bytes]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, rid: str, size: int) -> bytes:
        key = (rid, size)
        with self._lock:
            cached = self._cache.get(key)
        if cached is not None:
            path, made_from, data = cached
            if file_signature(path) == made_from:
                with self._lock:
                    if key in self._cache:
                        self._cache.move_to_end(key)
                return data
            with self._lock:
                self._cache.pop(key, None)
        path, made_from, data = self._render(rid, size)
        with self._lock:
            self._cache[key] = (path, made_from, data)
            while len(self._cache) > self.capacity:
                self._cache.popitem(last=False)
        return data

    def _remote(self, rid: str, path: str) -> tuple[str, tuple[int, ...] | None, bytes | None]:
        """The bytes of a record indexed from a URL, S3, a shard or a parquet file."""
        container = remote.stored_file(path)
        if not remote.is_remote(container) and self.roots and not is_under(os.path.realpath(container), self.roots):
            raise HTTPProblem(404, f"the file of record {rid} is outside the served gallery folders")
        if remote.is_remote(container) and self.roots:
            raise HTTPProblem(404, f"record {rid} was indexed from {remote.scheme(path)}; this service serves only its gallery folders")
        try:
            data = remote.stored_bytes(path)
        except (CorruptImageError, DatasetError) as exc:
            reason = str(getattr(exc, "reason", exc))
            if not remote.is_remote(container):  # a local shard or parquet file: its name, not the server's folders
                reason = reason.replace(container, os.path.basename(container))
            raise HTTPProblem(404, f"the image of record {rid} cannot be fetched: {reason}") from None
        return REMOTE_KEY + rid, (), data if len(data) <= MAX_IMAGE_FILE else None

    def _render(self, rid: str, size: int) -> tuple[str, tuple[int, ...], bytes]:
        if not _ID.fullmatch(rid):
            raise HTTPProblem(404, f"no image {rid!r}: ids are 32 hex digits, as returned in search hits")
        retriever, collection = self.serving()
        payload = retriever.get(collection, [rid]).get(rid)
        if payload is None:
            raise HTTPProblem(404, f"no record {rid} in collection {collection!r}")
        path, domain = payload.get("path"), payload.get("domain", "")
        if not names_a_file(path):
            raise HTTPProblem(404, f"record {rid} was indexed from an in-memory image; there is no file to show")
        if remote.is_remote(path) or remote.stored_file(path) != path:
            real, made_from, data = self._remote(rid, path)
        else:
            real = os.path.realpath(path)
            if self.roots and not is_under(real, self.roots):
                raise HTTPProblem(404, f"the file of record {rid} is outside the served gallery folders")
            made_from = file_signature(real)
            data = read_regular_file(real, MAX_IMAGE_FILE)
        if data is None or made_from is None:
            raise HTTPProblem(404, f"the file of record {rid} is gone, not a regular file, or too large to thumbnail")
        if record_id(domain, content_digest(data)) != rid:  # only ever the exact bytes that were indexed
            raise HTTPProblem(404, f"the file of record {rid} changed since it was indexed; re-index the gallery")
        try:
            im = decode_image(data, path)
        except CorruptImageError as exc:
            raise HTTPProblem(404, f"the file of record {rid} cannot be decoded: {exc.reason}") from None
        im.thumbnail((size, size))
        out = io.BytesIO()
        im.save(out, "JPEG", quality=85)
        return real, made_from, out.getvalue()


def file_signature(path: str) -> tuple[int, ...] | None:
    """What changes when a file is replaced or rewritten (None: it is gone)."""
    if path.startswith(REMOTE_KEY):  # fetched by content id: the cached thumbnail is of exactly those bytes
        return ()
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def read_regular_file(path: str, limit: int) -> bytes | None:
    """The bytes of a regular file of at most ``limit`` bytes, opened once (no check-then-read race;
    a FIFO or a device never blocks or floods a worker)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > limit:
            return None
        data = fh.read(limit + 1)
    return data if len(data) <= limit else None
