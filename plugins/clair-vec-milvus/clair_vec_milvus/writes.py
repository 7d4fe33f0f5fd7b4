"""Writes: upserts (content-hash ids make them idempotent), deletes, flushes, and the Strong read
that makes writes from any process visible to this handle."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from clair_vec.plugin import Backend, BackendUnavailableError, Record

from .schema import _FIELDS

#: from this many rows a Milvus Lite flush warns that searches will be slow: Lite 3.2 answered
#: 15.6 queries a second at 100k x 512-d with HNSW and 0.9 at 1M (python -m
#: clair_vec.benchmarks.ann --vectors 1000000 --engines milvus-lite --only default,FLAT)
LITE_LARGE_ROWS = 200_000

#: how long a flush waits for a server whose data node is re-registering (see MilvusWrites._seal)
NODE_CHANGE_TIMEOUT_S = 60.0
#: what a 2.3 server says while its coordinator still points at a data node that has gone
_NODE_CHANGE = ("node not found", "session not found", "channel not found")


class MilvusWrites(Backend):
    """The write primitives of :class:`~clair_vec.plugin.Backend`."""

    def _sync(self, name: str) -> None:
        """One Strong read: every write acknowledged before it, in any process, is visible to this
        handle's later Session reads."""
        self.client.query(name, filter="", output_fields=["count(*)"], consistency_level="Strong")

    def _upsert(self, name: str, records: Sequence[Record]) -> None:
        rows = []
        for r in records:
            row = {k: v for k, v in r.payload.items() if v is not None}
            row.update({f: "" if r.payload.get(f) is None else str(r.payload[f]) for f in _FIELDS})
            row.update(id=r.id, vector=r.vector.tolist())
            rows.append(row)
        # a 4096-row batch can take longer than a one-row call under load: the deadline grows with the batch
        timeout = self._timeout + 0.005 * len(rows) * max(1.0, len(rows[0]["vector"]) / 512)
        self.client.upsert(name, data=rows, timeout=timeout)

    def _flush(self, name: str) -> None:
        self._seal(name)
        self._grow_index(name)
        if not self.lite:
            self._wait_for_index(name)
        elif name not in self._warned_large:
            rows = int(self.client.get_collection_stats(name).get("row_count", 0))
            if rows >= LITE_LARGE_ROWS:
                self._warned_large.add(name)
                logging.getLogger(__name__).warning(
                    "Milvus Lite collection %r holds %d vectors: Lite's searches take time in proportion to the gallery "
                    "whatever the index (a pass over every id in Python: about 1 s a query at 1,000,000 on 2 cores). For "
                    "a gallery this large use Qdrant Edge (--backend qdrant) or a Milvus server", name, rows)  # fmt: skip

    def _seal(self, name: str) -> None:
        """A server's data node whose session lapsed (its embedded etcd starved on a loaded box, or
        the node restarted) registers again under a new id, and until the coordinator has handed
        it the channels a flush answers "session not found ... node not found" (milvus#33151).
        That takes seconds and the flush is idempotent, so it is asked again once a second for up
        to NODE_CHANGE_TIMEOUT_S; then the error names the server's state and the fix."""
        from pymilvus.exceptions import MilvusException

        deadline = time.monotonic() + NODE_CHANGE_TIMEOUT_S
        said = False
        while True:
            try:
                self.client.flush(name)
                return
            except MilvusException as exc:
                text = str(exc).lower()
                said_by_server = next((w for w in _NODE_CHANGE if w in text), None)
                if said_by_server is None:
                    raise
                if time.monotonic() > deadline:  # the server's own text is a Go stack trace: the gist is enough
                    raise BackendUnavailableError(
                        f"the Milvus server at {self.display_uri} could not seal {name!r}: its data node has not come "
                        f"back for {NODE_CHANGE_TIMEOUT_S:.0f} s (the server answers {said_by_server!r}). The records "
                        "written are kept; check the server's log (a data node that keeps losing its session needs "
                        "more CPU or memory), then repeat the flush or the command"
                    ) from exc
                if not said:
                    logging.getLogger(__name__).warning(
                        "the Milvus server at %s is re-registering its data node; waiting up to %.0f s to flush %r",
                        self.display_uri, NODE_CHANGE_TIMEOUT_S, name)  # fmt: skip
                    said = True
            time.sleep(1.0)

    def _wait_for_index(self, name: str) -> None:
        """A server indexes sealed segments in the background, and until it has, its query nodes
        answer from a temporary IVF index of their own: recall@10 0.93 at 100k clustered vectors
        the first 10 s after a flush, where the HNSW gives 0.999 (0.28 on random vectors). So a
        flush, which ends an indexing run, returns once the server has indexed what it holds, and
        a search in the next process gets the index's recall. It returns anyway, saying so, after
        ``index_timeout`` seconds or when the server reports the build failed: the records are
        there either way. A transient error while asking counts as "not yet"."""
        from pymilvus.exceptions import MilvusException

        log = logging.getLogger(__name__)
        deadline = time.monotonic() + self.index_timeout
        said = False
        while True:
            try:
                described = self.client.describe_index(name, "vector") or {}
            except MilvusException as exc:
                if not self.is_transient(exc):
                    raise
                described = None
            if described is not None:
                if str(described.get("state", "")).lower() == "failed":
                    log.warning("the Milvus server failed to index %r at %s (%s); searches use its temporary index",
                                name, self.display_uri, described.get("index_state_fail_reason") or "no reason given")  # fmt: skip
                    return
                pending = int(described.get("pending_index_rows") or 0)
                if pending <= 0:
                    return
                if not said:
                    log.info("waiting for the Milvus server to index %d rows of %r", pending, name)
                    said = True
            if time.monotonic() > deadline:
                log.warning("Milvus collection %r at %s: rows still not indexed after %.0f s; searches use the server's "
                            "temporary index until they are (raise index_timeout to wait longer)", name, self.display_uri,
                            self.index_timeout)  # fmt: skip
                return
            time.sleep(0.5)

    def _delete(self, name: str, ids: Sequence[str]) -> None:
        self.client.delete(name, ids=list(ids))
        # a 2.3 server's delete response carries no timestamp, so Session reads would not see it
        self._sync(name)
