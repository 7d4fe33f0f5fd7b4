"""Isolation: collections never share storage, whether one handle moves between three of them,
their names differ only in case, or they are 255 characters long and share all but the last few."""

from __future__ import annotations

from clair_vec.store.backend import Backend, Record
from clair_vec.store.testing.support import Promises, _short


class IsolationPromises(Promises):
    """Each collection answers for itself: counts, searches, lookups and listings see nothing of another."""

    @staticmethod
    def _answers_for_itself(backend: Backend, name: str, own: list[Record], others: dict[str, list[Record]]) -> None:
        """``name`` holds exactly ``own``: counts, searches, lookups and listings see nothing of ``others``."""
        mine = {r.id for r in own}
        count = backend.count(name)
        assert count == len(own), (
            f"collection {name[:40]!r}... holds {len(own)} records, but count() says {count}: data of another collection "
            "(or none of its own) is counted there"
        )
        hit = backend.search(name, own[0].vector, top_k=1)[0]
        assert hit and hit[0].id == own[0].id, (
            f"searching collection {name[:40]!r}... for one of its own records returned {_short(h.id for h in hit)} "
            f"instead of {own[0].id[:8]}"
        )
        for other, records in others.items():
            row = backend.search(name, records[0].vector, top_k=len(own) + len(records))[0]
            foreign = [h.id for h in row if h.id not in mine]
            assert not foreign, (
                f"searching collection {name[:40]!r}... returned {len(foreign)} records written to collection "
                f"{other[:40]!r}...: collections must not share storage"
            )
            got = backend.get(name, [r.id for r in records[:5]])
            assert got == {}, f"get() on collection {name[:40]!r}... returned records of collection {other[:40]!r}..."
        listed = {i for i, _ in backend.records(name, page_size=50)}
        assert listed == mine, f"records() of {name[:40]!r}... listed {len(listed - mine)} foreign and missed {len(mine - listed)} own records"

    def test_collections_stay_apart_while_a_handle_moves_between_them(self, backend, info, filled, made):
        b = self._fill(backend, f"{info.name}_b", 25, 31, made)
        c = self._fill(backend, f"{info.name}_c", 10, 32, made)
        data = {info.name: filled, f"{info.name}_b": b, f"{info.name}_c": c}
        # one handle, back and forth: a backend that binds a handle to the last collection it used fails here
        for name in (info.name, f"{info.name}_b", info.name, f"{info.name}_c", f"{info.name}_b", f"{info.name}_c", info.name):
            self._answers_for_itself(backend, name, data[name], {k: v for k, v in data.items() if k != name})
        assert backend.drop_collection(f"{info.name}_c")
        made.remove(f"{info.name}_c")
        assert backend.count(info.name) == len(filled) and backend.count(f"{info.name}_b") == len(b), (
            "dropping one collection changed the others"
        )

    def test_names_that_differ_only_in_case_are_two_collections(self, backend, info, made):
        lower = f"{info.name}_case"
        upper = lower.upper()
        first = self._fill(backend, lower, 12, 41, made)
        assert not backend.has_collection(upper), (
            f"collection {upper!r} was never created, but has_collection says it exists: the backend folds the case of "
            f"names, so {lower!r} and {upper!r} would be one collection"
        )
        second = self._fill(backend, upper, 7, 42, made)
        assert {lower, upper} <= set(backend.list_collections()), f"list_collections() shows {backend.list_collections()}"
        self._answers_for_itself(backend, lower, first, {upper: second})
        self._answers_for_itself(backend, upper, second, {lower: first})

    def test_long_names_that_share_a_prefix_are_two_collections(self, backend, info, made):
        stem = f"{info.name}_" + "l" * (255 - len(info.name) - 3)
        one, two = f"{stem}_1", f"{stem}_2"
        assert len(one) == len(two) == 255
        first = self._fill(backend, one, 9, 51, made)
        second = self._fill(backend, two, 6, 52, made)
        assert backend.open_collection(one).name == one and backend.open_collection(two).name == two, (
            "a 255-character collection name came back changed: an engine with shorter identifiers must map long names "
            "(e.g. to a hash) and keep the real name"
        )
        self._answers_for_itself(backend, one, first, {two: second})
        self._answers_for_itself(backend, two, second, {one: first})
