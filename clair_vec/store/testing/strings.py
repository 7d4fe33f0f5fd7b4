"""Strings: unicode, quotes and backslashes survive payloads and filters unchanged, and strings
that differ only in Unicode normalisation (NFC "é" and NFD "e" + U+0301) stay two labels."""

from __future__ import annotations

from clair_vec.store.testing.support import Promises, make_records

#: payload strings a backend must store, return and filter on unchanged
TRICKY = ("café", "猫", "emoji 🎨", 'say "cheese"', "back\\slash", "it's", "new\nline", "tab\there", "\\u00e9 literally")
#: strings that look alike but differ in Unicode normalisation: each is its own label
LOOKALIKES = (
    ("NFC e-acute", "\u00e9"), ("NFD e + combining acute", "e\u0301"),
    ("A-ring", "\u00c5"), ("ANGSTROM SIGN", "\u212b"), ("NFD A + combining ring", "A\u030a"),
    ("ligature fi", "\ufb01"), ("f i", "fi"), ("halfwidth ka", "\uff76"), ("katakana ka", "\u30ab"),
)  # fmt: skip


class StringPromises(Promises):
    """Payload strings are stored, returned and filtered on byte for byte."""

    def test_unicode_quotes_and_backslashes_survive_payloads_and_filters(self, backend, info):
        backend.create_collection(info)
        records = make_records(len(TRICKY) + 4, dim=self.dim, seed=3)
        for r, text in zip(records, TRICKY, strict=False):
            r.payload.update(label=text, path=f"/gallery/{text}.png", note=text)
        backend.upsert(info.name, records)
        stored = backend.get(info.name, [r.id for r in records])
        for r, text in zip(records, TRICKY, strict=False):
            assert stored[r.id]["label"] == text and stored[r.id]["note"] == text
            assert backend.count(info.name, filter={"label": text}) == 1, text
            row = backend.search(info.name, records[-1].vector, top_k=5, filter={"path": f"/gallery/{text}.png"})[0]
            assert [h.id for h in row] == [r.id], text
            assert row[0].payload["label"] == text
        assert backend.count(info.name, filter={"label": list(TRICKY)}) == len(TRICKY)

    def test_strings_differing_only_in_unicode_normalisation_stay_distinct(self, backend, info):
        backend.create_collection(info)
        records = make_records(len(LOOKALIKES) + 3, dim=self.dim, seed=61)
        for r, (_, text) in zip(records, LOOKALIKES, strict=False):
            r.payload.update(label=text, path=f"/look/{text}.png", note=text)
        backend.upsert(info.name, records)
        stored = backend.get(info.name, [r.id for r in records])
        listed = dict(backend.records(info.name))
        for r, (what, text) in zip(records, LOOKALIKES, strict=False):
            for where, payload in (("get", stored[r.id]), ("records", listed[r.id])):
                assert payload["label"] == text and payload["note"] == text, (
                    f"the label {ascii(text)} ({what}) came back from {where}() as {ascii(payload['label'])}: payload "
                    "strings must be stored byte for byte, never normalised"
                )
            n = backend.count(info.name, filter={"label": text})
            assert n == 1, (
                f"filtering on label {ascii(text)} ({what}) matched {n} records, not 1: strings that look alike but "
                "differ in Unicode normalisation are different labels"
            )
            row = backend.search(info.name, records[-1].vector, top_k=len(records), filter={"path": f"/look/{text}.png"})[0]
            assert [h.id for h in row] == [r.id], (
                f"a search filtered on path {ascii('/look/' + text + '.png')} ({what}) returned {len(row)} hits, not its one record"
            )
