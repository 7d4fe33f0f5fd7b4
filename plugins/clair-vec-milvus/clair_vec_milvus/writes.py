"""Writes: upserts (content-hash ids make them idempotent), deletes, flushes, and the Strong read
that makes writes from any process visible to this handle."""

from __future__ import annotations

from collections.abc import Sequence

from clair_vec.plugin import Backend, Record

from .schema import _FIELDS


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
        self.client.flush(name)
        self._grow_index(name)

    def _delete(self, name: str, ids: Sequence[str]) -> None:
        self.client.delete(name, ids=list(ids))
        # a 2.3 server's delete response carries no timestamp, so Session reads would not see it
        self._sync(name)
