"""Aliases: set, moved, listed and dropped; every read and write goes through one; a move is
atomic for a reader; an alias never hides a collection; and an open handle sees an alias another
process moved. A backend without aliases must refuse them with CapabilityError (then these skip)."""

from __future__ import annotations

import threading
import time

import pytest

from clair_vec.errors import AliasError, CapabilityError, CollectionNotFoundError, InvalidCollectionNameError
from clair_vec.store.backend import Backend, CollectionInfo
from clair_vec.store.testing.support import PREFIX, Promises, _short, in_new_process, make_records


class AliasPromises(Promises):
    """An alias is a second name for a collection, resolved at every call (an optional capability)."""

    def _needs_aliases(self, backend: Backend, info: CollectionInfo) -> None:
        if not backend.supports("aliases"):
            with pytest.raises(CapabilityError, match="_set_alias"):
                backend.set_alias(f"{info.name}_alias", info.name)
            assert backend.aliases() == {} and backend.resolve(info.name) == info.name
            pytest.skip("the backend does not implement aliases (set_alias raises CapabilityError, as it must)")

    def test_aliases_are_set_moved_listed_and_dropped(self, backend, info, filled, made):
        self._needs_aliases(backend, info)
        other = self._fill(backend, f"{info.name}_b", 20, 81, made)
        alias = f"{info.name}_live"
        assert alias not in backend.aliases()
        backend.set_alias(alias, info.name)
        assert backend.aliases().get(alias) == info.name, f"after set_alias, aliases() lists {backend.aliases()}"
        assert backend.resolve(alias) == info.name and backend.resolve(info.name) == info.name
        hit = backend.search(alias, filled[3].vector, top_k=1)[0]
        assert hit[0].id == filled[3].id, f"a search through alias {alias!r} did not reach {info.name!r}"
        backend.set_alias(alias, f"{info.name}_b")
        assert backend.aliases().get(alias) == f"{info.name}_b", f"after moving the alias, aliases() lists {backend.aliases()}"
        assert backend.resolve(alias) == f"{info.name}_b"
        hit = backend.search(alias, other[2].vector, top_k=1)[0]
        assert hit[0].id == other[2].id and backend.count(alias) == len(other), (
            f"after moving alias {alias!r} to {info.name + '_b'!r}, reads through it still answered from the old collection"
        )
        assert backend.drop_alias(alias) is True and backend.drop_alias(alias) is False
        assert alias not in backend.aliases(), f"a dropped alias is still listed: {backend.aliases()}"
        with pytest.raises(CollectionNotFoundError):
            backend.search(alias, filled[0].vector)
        assert backend.count(info.name) == len(filled) and backend.count(f"{info.name}_b") == len(other), (
            "moving or dropping an alias changed a collection"
        )

    def test_every_read_and_write_goes_through_an_alias(self, backend, info, filled):
        self._needs_aliases(backend, info)
        alias = f"{info.name}_via"
        backend.set_alias(alias, info.name)
        assert backend.open_collection(alias) == info and backend.has_collection(alias)
        ids = [r.id for r in filled[:4]]
        assert backend.search(alias, filled[5].vector, top_k=1)[0][0].id == filled[5].id
        assert backend.count(alias, filter={"domain": "photo"}) == backend.count(info.name, filter={"domain": "photo"})
        assert backend.get(alias, ids) == {r.id: r.payload for r in filled[:4]}
        assert backend.existing_ids(alias, ids + ["absent"]) == set(ids)
        assert len(dict(backend.records(alias, page_size=25))) == len(filled)
        if backend.supports("vectors"):
            assert list(backend.vectors(alias, ids)) == ids
        new = make_records(3, seed=91, dim=self.dim, prefix="via")
        assert backend.upsert(alias, new) == 3
        backend.flush(alias)
        assert backend.count(info.name) == len(filled) + 3, "records written through an alias did not reach its collection"
        assert backend.delete(alias, [new[0].id]) == 1 and backend.count(info.name) == len(filled) + 2
        with pytest.raises(AliasError, match=alias):
            backend.drop_collection(info.name)  # refused while an alias points at it, naming the alias
        with pytest.raises(AliasError):
            backend.drop_collection(alias)  # an alias is not a collection
        assert backend.count(info.name) == len(filled) + 2

    def test_moving_an_alias_is_atomic_for_a_reader(self, backend, info, filled, made):
        self._needs_aliases(backend, info)
        other = self._fill(backend, f"{info.name}_b", 30, 101, made)
        ids = {info.name: {r.id for r in filled}, f"{info.name}_b": {r.id for r in other}}
        alias = f"{info.name}_swap"
        backend.set_alias(alias, info.name)
        query = make_records(1, seed=102, dim=self.dim)[0].vector
        seen = {name: 0 for name in ids}
        done, stop, problems = [0], threading.Event(), []

        def reader() -> None:
            while not stop.is_set():
                try:
                    row = backend.search(alias, query, top_k=5)[0]
                except Exception as exc:
                    problems.append(f"{type(exc).__name__}: {exc}")
                else:
                    got = {h.id for h in row}
                    owner = [name for name, known in ids.items() if got and got <= known]
                    if owner:
                        seen[owner[0]] += 1
                    else:
                        problems.append(f"a mix of both collections, or nothing: {_short(got)}")
                done[0] += 1

        t = threading.Thread(target=reader, daemon=True)
        t.start()
        try:
            for i in range(10):
                backend.set_alias(alias, f"{info.name}_b" if i % 2 == 0 else info.name)
                mark = done[0]
                deadline = time.monotonic() + 60
                while done[0] < mark + 2 and t.is_alive() and time.monotonic() < deadline:
                    time.sleep(0.002)  # two searches after the move: the second began after it
        finally:
            stop.set()
            t.join(timeout=60)
        assert not problems, (
            f"a reader searching through alias {alias!r} while it moved back and forth got errors or mixed answers "
            f"({len(problems)}): {problems[:3]}; a move must be atomic"
        )
        assert all(seen.values()), f"the reader never saw one of the collections: {seen}"

    def test_an_alias_never_hides_a_collection(self, backend, info, filled, made):
        self._needs_aliases(backend, info)
        other = self._fill(backend, f"{info.name}_b", 5, 111, made)
        with pytest.raises(AliasError, match="never hides"):
            backend.set_alias(f"{info.name}_b", info.name)
        assert backend.resolve(f"{info.name}_b") == f"{info.name}_b" and backend.count(f"{info.name}_b") == len(other)
        alias = f"{info.name}_name"
        backend.set_alias(alias, info.name)
        with pytest.raises(AliasError, match="alias"):
            backend.create_collection(CollectionInfo(alias, self.dim, "test-model"))
        with pytest.raises(AliasError, match="itself an alias"):
            backend.set_alias(f"{info.name}_chain", alias)
        with pytest.raises(CollectionNotFoundError):
            backend.set_alias(f"{info.name}_dangling", f"{PREFIX}no_such_collection")
        with pytest.raises(InvalidCollectionNameError):
            backend.set_alias("bad-alias name", info.name)
        mine = {a: c for a, c in backend.aliases().items() if a.startswith(info.name)}
        assert mine == {alias: info.name}, f"refused aliases were created anyway: {mine}"

    def test_an_alias_moved_by_another_process_is_seen_by_an_open_handle(self, backend, backend_uri, backend_options, info,
                                                                         filled, made):  # fmt: skip
        self._needs_aliases(backend, info)
        if not backend.shared:
            pytest.skip("an embedded store opens in one process at a time: no other process can move its aliases")
        other = self._fill(backend, f"{info.name}_b", 8, 121, made)
        alias = f"{info.name}_moved"
        backend.set_alias(alias, info.name)
        assert backend.search(alias, filled[0].vector, top_k=1)[0][0].id == filled[0].id
        out = in_new_process(self.backend_name, backend_uri, backend_options, "set_alias", collection=f"{info.name}_b",
                             alias=alias)  # fmt: skip
        assert "error" not in out, f"another process could not move the alias: {out.get('error')}: {out.get('message')}"
        hit = backend.search(alias, other[0].vector, top_k=1)[0]
        assert hit and hit[0].id == other[0].id, (
            f"another process moved alias {alias!r} to {info.name + '_b'!r}, but this open handle still answered from "
            f"{info.name!r}: a handle must resolve an alias at every call, never cache it"
        )
