"""Reads: search ranks as brute-force cosine does and honours ``top_k`` (beyond the matches, and
above the engine's limit); every filter key is applied in search and count, and filters are
checked; ``get`` and paged ``records`` return payloads; deleted records are gone from every read."""

from __future__ import annotations

import numpy as np
import pytest

from clair_vec.store.testing.support import Promises, _short, make_records


class ReadPromises(Promises):
    """Searches, counts, lookups and listings answer with exactly the records that match."""

    def test_search_matches_brute_force_cosine_ranking(self, backend, info, filled):
        vecs = np.stack([r.vector for r in filled])
        queries = make_records(5, seed=7, dim=self.dim)
        q = np.stack([r.vector for r in queries])
        hits = backend.search(info.name, q, top_k=5)
        assert len(hits) == 5
        for row, sims in zip(hits, q @ vecs.T, strict=True):
            expected = [filled[i].id for i in np.argsort(-sims)[:5]]
            got = [h.id for h in row]
            assert got == expected, (
                f"the top 5 differ from brute-force cosine ranking: got {_short(got)}, expected {_short(expected)} "
                f"({len(set(got) & set(expected))} in common)"
            )
            np.testing.assert_allclose([h.score for h in row], np.sort(sims)[::-1][:5], atol=1e-4)

    def test_search_returns_payload_and_respects_top_k(self, backend, info, filled):
        row = backend.search(info.name, filled[3].vector, top_k=3)[0]
        assert len(row) == 3
        assert row[0].id == filled[3].id
        assert row[0].payload == filled[3].payload

    def test_vectors_not_of_unit_length_are_ranked_and_scored_by_cosine(self, backend, info):
        """The contract's vectors are finite, not necessarily unit length: an engine that ranks by
        inner product (or L2) agrees with cosine only on unit vectors, which is all the other promises write."""
        backend.create_collection(info)
        records = make_records(40, seed=11, dim=self.dim, prefix="scaled")
        scales = np.geomspace(0.05, 20.0, len(records)).astype(np.float32)
        np.random.default_rng(3).shuffle(scales)
        scaled = [type(r)(r.id, r.vector * s, r.payload) for r, s in zip(records, scales, strict=True)]
        backend.upsert(info.name, scaled)
        unit = np.stack([r.vector for r in records])
        queries = np.stack([r.vector for r in make_records(4, seed=12, dim=self.dim)]) * np.array([[0.1], [1], [7], [30]], np.float32)
        for q, row in zip(queries, backend.search(info.name, queries, top_k=5), strict=True):
            sims = unit @ (q / np.linalg.norm(q))
            expected = [records[i].id for i in np.argsort(-sims)[:5]]
            assert [h.id for h in row] == expected, (
                f"with vectors of lengths 0.05 to 20 the top 5 are {_short([h.id for h in row])}, by cosine "
                f"{_short(expected)}: the engine ranks by something other than cosine similarity"
            )
            np.testing.assert_allclose([h.score for h in row], np.sort(sims)[::-1][:5], atol=1e-3,
                                       err_msg="scores must be cosine similarities whatever the vectors' lengths")  # fmt: skip

    def test_top_k_beyond_the_matches_returns_only_the_matches(self, backend, info, filled):
        n = len(backend.search(info.name, filled[0].vector, top_k=len(filled) + 25)[0])
        assert n == len(filled), f"top_k={len(filled) + 25} over {len(filled)} records returned {n} hits"
        matching = [r for r in filled if r.payload["label"] == "c2" and r.payload["domain"] == "photo"]
        row = backend.search(info.name, filled[0].vector, top_k=50, filter={"label": "c2", "domain": "photo"})[0]
        outside = [h.id for h in row if h.id not in {r.id for r in matching}]
        assert not outside and len(row) == len(matching), (
            f"top_k=50 with a filter that {len(matching)} records match returned {len(row)} hits, {len(outside)} of them "
            "outside the filter: only the matches may come back"
        )

    def test_top_k_above_the_engine_limit_is_refused_clearly(self, backend, info, filled):
        limit = backend.max_top_k
        if limit is None:
            row = backend.search(info.name, filled[0].vector, top_k=100_000)[0]
            assert len(row) == len(filled), f"top_k=100000 (no declared max_top_k) returned {len(row)} of {len(filled)} hits"
            return
        with pytest.raises(ValueError, match=f"limit of {limit}"):
            backend.search(info.name, filled[0].vector, top_k=limit + 1)
        assert len(backend.search(info.name, filled[0].vector, top_k=limit)[0]) == len(filled)

    def test_empty_query_gives_an_empty_result(self, backend, info, filled):
        assert backend.search(info.name, np.zeros((0, self.dim), np.float32), top_k=3) == []

    @pytest.mark.parametrize("key", ["domain", "label", "path", "pseudo_label"])
    def test_every_filter_key_is_applied_in_search_and_count(self, backend, info, filled, key):
        target = filled[10].payload[key]
        matching = [r for r in filled if r.payload[key] == target]
        assert 0 < len(matching) < len(filled)
        # query with a record the filter excludes: a backend ignoring the key returns it first
        outsider = next(r for r in filled if r.payload[key] != target)
        row = backend.search(info.name, outsider.vector, top_k=len(filled), filter={key: target})[0]
        outside = [h.id for h in row if h.payload.get(key) != target]
        assert sorted(h.id for h in row) == sorted(r.id for r in matching), (
            f"a search filtered on {key}={target!r} returned {len(row)} hits ({len(outside)} outside the filter) where "
            f"{len(matching)} records match: the search ignores or misapplies {key!r}"
        )
        assert all(h.payload[key] == target for h in row)
        sims = {r.id: float(r.vector @ outsider.vector) for r in matching}
        best = sorted(sims, key=sims.get, reverse=True)
        assert [h.id for h in row] == best, f"a search filtered on {key}={target!r} is not ranked best first"
        top = backend.search(info.name, outsider.vector, top_k=3, filter={key: target})[0]
        assert [h.id for h in top] == best[:3], (
            f"top_k=3 filtered on {key}={target!r} returned {len(top)} hits {_short([h.id for h in top])}, not the best 3 "
            f"matches {_short(best[:3])}: top_k and ranking hold with a filter too"
        )
        assert backend.count(info.name, filter={key: target}) == len(matching)
        both = [target, outsider.payload[key]]
        expected = [r for r in filled if r.payload[key] in both]
        assert backend.count(info.name, filter={key: both}) == len(expected)

    def test_filters_combine_keys_and_refuse_unknown_keys_and_non_strings(self, backend, info, filled):
        q = np.stack([r.vector for r in filled[:4]])
        for row in backend.search(info.name, q, top_k=10, filter={"domain": "sketch", "label": ["c1", "c3"]}):
            assert row and all(h.payload["domain"] == "sketch" and h.payload["label"] in ("c1", "c3") for h in row)
        expected = sum(1 for r in filled if r.payload["domain"] == "sketch" and r.payload["label"] in ("c1", "c3"))
        assert backend.count(info.name, filter={"domain": "sketch", "label": ["c1", "c3"]}) == expected
        with pytest.raises(ValueError, match="cannot filter"):
            backend.search(info.name, q, filter={"colour": "red"})
        for bad in (3, None, {"a": 1}, ["ok", 2.5], True):
            with pytest.raises(ValueError, match="must be strings"):
                backend.search(info.name, q, filter={"label": bad})
            with pytest.raises(ValueError, match="must be strings"):
                backend.count(info.name, filter={"label": bad})

    def test_get_and_records_return_payloads(self, backend, info, filled):
        got = backend.get(info.name, [filled[2].id, "absent", filled[9].id])
        assert got == {filled[2].id: filled[2].payload, filled[9].id: filled[9].payload}
        backend.flush(info.name)  # pages must hold across sealed storage too
        pages = list(backend.records(info.name, page_size=7))
        listed = dict(pages)
        assert len(pages) == len(listed), (
            f"records() in pages of 7 yielded {len(pages)} items for {len(listed)} ids: a page overlaps the one before"
        )
        missing = {r.id for r in filled} - set(listed)
        assert listed == {r.id: r.payload for r in filled}, (
            f"records() in pages of 7 listed {len(listed)} of {len(filled)} records ({len(missing)} missing, "
            f"{len(set(listed) - {r.id for r in filled})} unknown) or changed their payloads: paging must visit each once"
        )
        sketches = dict(backend.records(info.name, filter={"domain": "sketch"}, page_size=4))
        assert set(sketches) == {r.id for r in filled if r.payload["domain"] == "sketch"}

    def test_deleted_records_are_gone_from_every_read(self, backend, info, filled):
        ids = [r.id for r in filled[:5]]
        assert backend.existing_ids(info.name, ids + ["absent"]) == set(ids)
        label = filled[0].payload["label"]
        labelled = sum(1 for r in filled if r.payload["label"] == label)
        assert backend.delete(info.name, ids[:2] + ["absent"]) == 2
        assert backend.count(info.name) == len(filled) - 2
        gone = sum(1 for r in filled[:2] if r.payload["label"] == label)
        assert backend.count(info.name, filter={"label": label}) == labelled - gone, "a filtered count still counts deleted records"
        assert backend.existing_ids(info.name, ids) == set(ids[2:])
        for gone in filled[:2]:
            row = backend.search(info.name, gone.vector, top_k=len(filled))[0]
            assert gone.id not in {h.id for h in row}, f"a deleted record ({gone.id[:8]}) still comes back from search"
            assert len(row) == len(filled) - 2
        assert backend.get(info.name, ids[:2]) == {}
        assert ids[0] not in dict(backend.records(info.name))
        assert backend.drop_collection(info.name) is True
        assert not backend.has_collection(info.name)
        backend.create_collection(info)  # the same name again is a new, empty collection
        assert backend.count(info.name) == 0, "a collection dropped and created again still holds its old records"
        assert backend.search(info.name, filled[3].vector, top_k=5) == [[]]
