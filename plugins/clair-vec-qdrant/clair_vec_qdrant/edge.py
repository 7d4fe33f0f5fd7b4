"""Qdrant Edge (``qdrant-edge-py``): Qdrant's Rust engine in-process, one shard per collection.

This module owns the backend's use of the engine: loading shards, writes inside the crash
marker, periodic flushes, and aliases kept in a file (the engine has none). The store on disk,
its lock and the check before opening it are :mod:`clair_vec_qdrant.edge_store`'s.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from clair_vec.plugin import (
    ALIASES_FILE,
    AliasFile,
    Backend,
    CollectionInfo,
    DiskFullError,
    Hit,
    Record,
    WriteMarker,
    point_uuid,
)

from .edge_store import INFO_FILE, StoreLock, check_last_write, collections, read_info, shard_dir
from .points import VECTOR, hit_of, must_match, point_payload, record_of, vector_of
from .uri import edge_path

#: flush() builds the HNSW graph once this many vectors are not in one (exact search below):
#: at 20k x 512-d exact search answered 338 queries a second and the graph 823 (at ef 64) at
#: recall@10 1.000, built in 12 s on 2 cores (python -m clair_vec.benchmarks.ann --vectors 20000,100000)
AUTO_INDEX_VECTORS = 20_000
#: the search's beam: at 1M clustered 512-d vectors (m 16, ef_construct 100) ef 64 gave recall@10
#: 0.847, 128 0.950, 256 0.984 at 873 queries a second against the exact scan's 4.6 (300k: 0.9935
#: already at 64). A query's CLIP encode costs far more than any of these beams, so recall wins
#: (python -m clair_vec.benchmarks.ann --vectors 300000,1000000 --engines qdrant-edge --ef 64,128,192,256)
HNSW_EF = 256

#: the least free space kept beyond a write: the log files Qdrant Edge seals at close must fit
#: (4 MiB held on an 8 MiB disk in tests/test_store_full_disk.py; with 0 a write died of SIGBUS)
MIN_MARGIN_MB = 4


class QdrantEdgeBackend(Backend):
    """Embedded Qdrant Edge shards, one directory per collection.

    One process at a time: a second process that loads a shard another process is writing
    corrupts the writer's next flush (seen with qdrant-edge-py 0.9), so the store directory
    carries an advisory lock, taken before any shard is touched and released on close or
    process death. Writes go to each shard's WAL (each batch whole); segments are flushed at
    ``flush()``, on close, and at most ``flush_interval`` seconds apart while writing.

    Search is exact until a shard is optimised: the engine builds its HNSW graph only when asked.
    ``index_threshold`` (vectors, default :data:`AUTO_INDEX_VECTORS`) makes ``flush()`` build it
    once that many vectors are not yet in a graph (None: never, every search scans).
    ``hnsw_m`` and ``hnsw_ef_construct`` shape the graph of collections this handle creates (with
    ``full_scan_threshold_kb``: smaller segments are scanned); ``hnsw_ef`` is the search's beam
    width (default :data:`HNSW_EF`, never below ``top_k``; None: the engine's). ``python -m clair_vec.benchmarks.ann``
    measures the trade.
    """

    name = "qdrant"
    flush_interval: float = 10.0

    def __init__(
        self,
        uri: str | None = None,
        *,
        index_threshold: int | None = AUTO_INDEX_VECTORS,
        hnsw_m: int = 16,
        hnsw_ef_construct: int = 100,
        hnsw_ef: int | None = HNSW_EF,
        full_scan_threshold_kb: int = 10_000,
        **options: Any,
    ) -> None:
        uri = edge_path(uri)
        super().__init__(uri, **options)
        for key, value in (("index_threshold", index_threshold), ("hnsw_m", hnsw_m), ("hnsw_ef_construct", hnsw_ef_construct),
                           ("hnsw_ef", hnsw_ef), ("full_scan_threshold_kb", full_scan_threshold_kb)):  # fmt: skip
            low = 0 if key in ("index_threshold", "full_scan_threshold_kb") else 1
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < low):
                raise ValueError(f"{key} must be an integer of at least {low}, got {value!r}")
        self.index_threshold = index_threshold
        self.hnsw_m, self.hnsw_ef_construct, self.hnsw_ef = hnsw_m, hnsw_ef_construct, hnsw_ef
        self.full_scan_threshold_kb = full_scan_threshold_kb
        if self.disk_margin_bytes < MIN_MARGIN_MB * 2**20:
            # the write-ahead log is memory-mapped: a write that finds no room for it dies of SIGBUS
            # instead of failing with DiskFullError
            raise ValueError(f"disk_margin_mb must be at least {MIN_MARGIN_MB} for Qdrant Edge (room for its memory-mapped "
                             f"write-ahead log), got {self.disk_margin_bytes / 2**20:g}")  # fmt: skip
        import qdrant_edge

        self.q = qdrant_edge
        self.root = Path(uri)
        self._shards: dict[str, Any] = {}
        self._shard_lock = threading.RLock()
        self._store_lock = StoreLock(self.root)
        self._last_flush: dict[str, float] = {}
        self._writing = WriteMarker(self.root)
        self._aliases = AliasFile(self.root / ALIASES_FILE)
        if self.root.exists():  # an existing store is locked now, so a conflict shows at once
            self._store_lock.acquire()
            try:
                check_last_write(self.root, self._writing, self.disk_margin_bytes)
            except BaseException:
                self._store_lock.release()
                raise

    @property
    def storage_path(self) -> Path:
        return self.root

    def _dir(self, name: str) -> Path:
        return self.root / name

    def _shard(self, name: str) -> Any:
        shard = self._shards.get(name)
        if shard is None:
            with self._shard_lock:  # two threads loading one shard would open it twice
                if name not in self._shards:
                    self._store_lock.acquire()
                    self._shards[name] = self.q.EdgeShard.load(str(shard_dir(self._dir(name))))
                    self._last_flush[name] = time.monotonic()
                shard = self._shards[name]
        return shard

    def _filter(self, flt: dict[str, list[str]]) -> Any:
        return must_match(self.q, flt)

    def _create(self, info: CollectionInfo) -> None:
        q = self.q
        self._store_lock.acquire()
        d = self._dir(info.name)
        tmp = d.with_name(f".creating-{point_uuid(info.name)}")  # short: the name itself may take all 255 bytes
        shutil.rmtree(tmp, ignore_errors=True)
        # Qdrant scans a segment (or a filter's matches) smaller than full_scan_threshold KB rather
        # than walk its graph: 10,000 is Qdrant's default, about 5,000 vectors at 512-d
        hnsw = q.HnswIndexConfig(m=self.hnsw_m, ef_construct=self.hnsw_ef_construct, full_scan_threshold=self.full_scan_threshold_kb)
        # indexing_threshold (KB) 1: optimize() builds a graph for a segment of any size; Qdrant's
        # default leaves segments under 10 MB without one. The engine optimises only when asked.
        config = q.EdgeConfig(vectors={VECTOR: q.EdgeVectorParams(size=info.dim, distance=q.Distance.Cosine)}, hnsw_config=hnsw,
                              optimizers=q.EdgeOptimizersConfig(indexing_threshold=1))  # fmt: skip
        with self._writing:
            shard = q.EdgeShard.create(str(shard_dir(tmp)), config)
            shard.close()
        (tmp / INFO_FILE).write_text(info.to_json())
        os.replace(tmp, d)  # a collection directory exists whole or not at all

    def _read_info(self, name: str) -> CollectionInfo | None:
        return read_info(self._dir(name))

    def _list(self) -> list[str]:
        return collections(self.root)

    def _load(self, name: str) -> None:
        self._shard(name)

    def _written(self, name: str, shard: Any) -> None:
        if time.monotonic() - self._last_flush.get(name, 0.0) >= self.flush_interval:
            shard.flush()
            self._last_flush[name] = time.monotonic()

    def _upsert(self, name: str, records: Sequence[Record]) -> None:
        q = self.q
        points = [q.Point(id=point_uuid(r.id), vector={VECTOR: r.vector.tolist()}, payload=point_payload(r)) for r in records]
        shard = self._shard(name)
        with self._writing:
            shard.update(q.UpdateOperation.upsert_points(points))
            self._written(name, shard)

    def _search(self, name: str, vectors: np.ndarray, top_k: int, flt: dict[str, list[str]]) -> list[list[Hit]]:
        q = self.q
        f = self._filter(flt)
        # a beam narrower than top_k would return fewer hits than asked
        params = q.SearchParams(hnsw_ef=max(self.hnsw_ef, top_k)) if self.hnsw_ef is not None else None
        reqs = [q.QueryRequest(limit=top_k, query=q.Query.Nearest(v.tolist(), using=VECTOR), filter=f, params=params, with_payload=True)
                for v in vectors]  # fmt: skip
        return [[hit_of(p) for p in row] for row in self._shard(name).query_batch(q.QueryBatchRequest(reqs))]

    def _count(self, name: str, flt: dict[str, list[str]]) -> int:
        return int(self._shard(name).count(self.q.CountRequest(exact=True, filter=self._filter(flt))))

    def _existing_ids(self, name: str, ids: Sequence[str]) -> set[str]:
        by_uuid = {point_uuid(i): i for i in ids}
        found = self._shard(name).retrieve(list(by_uuid), with_payload=False, with_vector=False)
        return {by_uuid[str(r.id)] for r in found}

    def _get(self, name: str, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        found = self._shard(name).retrieve([point_uuid(i) for i in ids], with_payload=True, with_vector=False)
        return dict(record_of(r) for r in found)

    def _vectors(self, name: str, ids: Sequence[str]) -> dict[str, np.ndarray]:
        by_uuid = {point_uuid(i): i for i in ids}
        found = self._shard(name).retrieve(list(by_uuid), with_payload=False, with_vector=True)
        return {by_uuid[str(r.id)]: vector_of(r) for r in found}

    def _scroll(
        self, name: str, flt: dict[str, list[str]], cursor: Any, limit: int
    ) -> tuple[list[tuple[str, dict[str, Any]]], Any]:
        req = self.q.ScrollRequest(offset=cursor, limit=limit, filter=self._filter(flt), with_payload=True, with_vector=False)
        points, nxt = self._shard(name).scroll(req)
        return [record_of(p) for p in points], (str(nxt) if nxt is not None else None)

    def _flush(self, name: str) -> None:
        shard = self._shard(name)
        with self._writing:
            shard.flush()
            if self.index_threshold is not None:
                info = shard.info()
                if info.points_count - info.indexed_vectors_count >= max(self.index_threshold, 1) and self._room_for_graph(name, info):
                    shard.optimize()  # minutes at a million vectors on 2 cores; the caller asked for it
                    shard.flush()
        self._last_flush[name] = time.monotonic()

    def _room_for_graph(self, name: str, info: Any) -> bool:
        """The optimiser may rewrite every segment, and a memory-mapped write that finds no room
        dies of SIGBUS: with too little free space the graph waits (searches scan meanwhile) and
        the records already written stay."""
        stored = read_info(self._dir(name))
        dim = stored.dim if stored is not None else 512
        try:
            self._check_room(info.points_count * (4 * dim + 8 * self.hnsw_m + 256))
        except DiskFullError as exc:
            logging.getLogger(__name__).warning("not building the HNSW graph of %r now: %s", name, exc)
            return False
        return True

    def _delete(self, name: str, ids: Sequence[str]) -> None:
        shard = self._shard(name)
        with self._writing:
            shard.update(self.q.UpdateOperation.delete_points([point_uuid(i) for i in ids]))
            self._written(name, shard)

    def _drop(self, name: str) -> None:
        self._store_lock.acquire()
        with self._shard_lock:
            shard = self._shards.pop(name, None)
        if shard is not None:
            shard.close()
        shutil.rmtree(self._dir(name))

    def _list_aliases(self) -> dict[str, str]:
        return self._aliases.read()

    def _alias_target(self, name: str) -> str | None:
        return self._aliases.target(name)  # one stat while the map is unchanged

    def _set_alias(self, alias: str, collection: str) -> None:
        self._store_lock.acquire()
        self._aliases.update({alias: collection})

    def _drop_alias(self, alias: str) -> None:
        self._store_lock.acquire()
        self._aliases.update(drop=(alias,))

    def close(self) -> None:
        try:
            with self._shard_lock:
                shards = list(self._shards.values())
                self._shards.clear()
            if shards:
                try:
                    self._writing.__enter__()
                    marked = True
                except OSError:  # no room even for the marker: close anyway, as a handle always did
                    marked = False
                try:
                    for shard in shards:
                        try:
                            shard.flush()
                        finally:
                            shard.close()
                finally:
                    if marked:
                        self._writing.__exit__(None)
        finally:  # whatever a shard did, the lock goes: a failed flush must not lock the store for good
            self._loaded.clear()
            self._store_lock.release()
