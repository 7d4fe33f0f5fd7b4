"""Across handles and processes: a spec and data survive reopening, in this process and in a
freshly spawned one; a new process can search what another wrote; and ``shared`` says whether a
second process can write while a handle has the store open."""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np

from clair_vec.store.backend import Backend, CollectionInfo
from clair_vec.store.testing.support import PREFIX, Promises, in_new_process, make_records


class ProcessPromises(Promises):
    """What one handle or process wrote, another handle or process reads."""

    def _child(self, backend_uri: str | None, backend_options: dict[str, Any], action: str, **args: Any) -> dict[str, Any]:
        out = in_new_process(self.backend_name, backend_uri, backend_options, action, **args)
        assert "error" not in out, f"in a new process: {out['error']}: {out['message']}\n{out.get('trace', '')}"
        return out

    def test_spec_survives_reopening_in_a_new_process(self, backend_factory, backend_uri, backend_options):
        info = CollectionInfo(f"{PREFIX}spec_{uuid.uuid4().hex[:10]}", self.dim, "model-Ω", metric="cosine", target_domain="sketch",
                              extra={"clip": "ViT-B-32", "nested": {"k": [1, 2.5, None]}, "note": 'café "q" \\ 🎨'})  # fmt: skip
        be = backend_factory()
        try:
            be.create_collection(info)
            be.upsert(info.name, make_records(3, dim=self.dim))
            be.flush(info.name)
        finally:
            be.close()
        try:
            out = self._child(backend_uri, backend_options, "read", collection=info.name,
                              query=np.zeros((1, self.dim)).tolist(), top_k=1, ids=[])  # fmt: skip
            assert CollectionInfo(**out["info"]) == info
            again = backend_factory()
            try:
                assert again.open_collection(info.name) == info
            finally:
                again.close()
        finally:
            cleanup = backend_factory()
            cleanup.drop_collection(info.name)
            cleanup.close()

    def test_a_new_process_can_search_what_another_process_wrote(self, backend, backend_uri, backend_options, info, filled):
        backend.flush(info.name)
        backend.close()
        ids = [r.id for r in filled[:5]]
        q = np.stack([filled[7].vector, filled[8].vector])
        out = self._child(backend_uri, backend_options, "read", collection=info.name, query=q.tolist(), top_k=3,
                          ids=ids + ["absent"])  # fmt: skip
        assert out["count"] == len(filled)
        assert [row[0][0] for row in out["hits"]] == [filled[7].id, filled[8].id], (
            "a new process searched for two stored records and did not find each first: it cannot search what "
            "another process wrote"
        )
        assert out["existing"] == sorted(ids), f"a new process found {len(out['existing'])} of {len(ids)} stored ids"
        assert out["payloads"][ids[0]]["path"] == filled[0].payload["path"]

    def test_spec_and_data_survive_reopening(self, backend_factory, backend, info, filled):
        assert backend.delete(info.name, [r.id for r in filled[-3:]]) == 3  # deletes are data too
        backend.flush(info.name)
        assert backend.count(info.name) == len(filled) - 3
        backend.close()
        again = backend_factory()
        try:
            assert again.open_collection(info.name) == info
            assert again.count(info.name) == len(filled) - 3, "deleted records came back after reopening"
            assert again.existing_ids(info.name, [r.id for r in filled[-3:]]) == set()
            assert again.search(info.name, filled[4].vector, top_k=1)[0][0].id == filled[4].id
        finally:
            again.close()

    def test_shared_says_whether_a_second_process_can_write(self, backend, backend_factory, backend_uri, backend_options,
                                                            info, filled):  # fmt: skip
        """A second process opening the store while this handle writes to it either works (and
        ``shared`` is True) or gets StoreLockedError naming the fix (and ``shared`` is False);
        either way this handle's later writes land."""
        more = make_records(5, seed=71, dim=self.dim, prefix="second")
        out = in_new_process(self.backend_name, backend_uri, backend_options, "write", collection=info.name,
                             records=[(r.id, r.vector.tolist(), r.payload) for r in more])  # fmt: skip
        if "error" in out:
            assert out.get("is_locked"), (
                f"a second process opening the store while this handle has it got {out['error']}: {out['message']}; "
                "expected it to work (a server) or StoreLockedError (an embedded store)"
            )
            assert "process" in out["message"] and "server" in out["message"], (
                f"a StoreLockedError must say the store takes one process at a time and name the fix (a server "
                f"backend): {out['message']}"
            )
            assert backend.shared is False, (
                "a second process was refused (StoreLockedError), so the store is not shared, but the backend says "
                "shared=True: the service would start replicas and Ray bulk indexing would write from every worker"
            )
            self._later_writes_land(backend, info, len(filled))
            return
        assert backend.shared is True, (
            f"a second process opened the store and wrote {out['written']} records while this handle had it open, so "
            "several processes can share it, but the backend says shared=False: the service would refuse replicas, "
            "Ray bulk indexing would funnel every write through one actor, and database calls would block the event loop"
        )
        again = backend_factory()
        try:
            n = again.count(info.name)
        finally:
            again.close()
        assert n == len(filled) + len(more), (
            f"a second process wrote {len(more)} records and said so, but a new handle counts {n}, not "
            f"{len(filled) + len(more)}: writes of one process must reach a shared store"
        )
        self._later_writes_land(backend, info, n)

    def _later_writes_land(self, backend: Backend, info: CollectionInfo, before: int) -> None:
        more = make_records(20, seed=5, dim=self.dim, prefix="more")
        assert backend.upsert(info.name, more) == 20
        backend.flush(info.name)
        n = backend.count(info.name)
        assert n == before + 20, f"after a second process opened the store, this handle wrote 20 records and counts {n - before}"
        assert backend.search(info.name, more[3].vector, top_k=1)[0][0].id == more[3].id
