"""Registration and collections: the backend is found by its registered name; a collection is
created, opened, refused and named by one rule; and looking (at a missing collection, a store that
does not exist yet, an empty server namespace) creates nothing."""

from __future__ import annotations

import os

import numpy as np
import pytest

from clair_vec.errors import CollectionMismatchError, CollectionNotFoundError, InvalidCollectionNameError
from clair_vec.store.backend import Backend, CollectionInfo
from clair_vec.store.testing.support import PREFIX, Promises, open_backend


class CollectionPromises(Promises):
    """A backend is registered, and its collections keep their spec and their names' rule."""

    def test_backend_is_found_by_its_registered_name(self, backend):
        from clair_vec.store.plugins import backends

        registered = backends()
        assert self.backend_name in registered, f"{self.backend_name!r} is not registered; registered: {sorted(registered)}"
        assert isinstance(backend, Backend)

    def test_create_then_open_returns_same_spec(self, backend, info):
        assert not backend.has_collection(info.name)
        backend.create_collection(info)
        assert backend.has_collection(info.name)
        assert backend.open_collection(info.name) == info
        assert info.name in backend.list_collections()

    def test_create_is_idempotent_for_same_spec_and_refuses_another(self, backend, info):
        backend.create_collection(info)
        assert backend.create_collection(info) == info
        with pytest.raises(CollectionMismatchError, match="dim"):
            backend.create_collection(CollectionInfo(info.name, info.dim + 1, info.model))
        with pytest.raises(CollectionMismatchError, match="model"):
            backend.create_collection(CollectionInfo(info.name, info.dim, "other-model"))

    def test_missing_collection_is_a_clear_error(self, backend):
        with pytest.raises(CollectionNotFoundError, match="nope"):
            backend.open_collection("nope")
        with pytest.raises(CollectionNotFoundError):
            backend.search("nope", np.zeros((1, self.dim), np.float32))
        assert backend.drop_collection("nope") is False
        assert not backend.has_collection("nope")  # looking never creates

    def test_invalid_collection_names_are_refused_with_one_rule(self, backend):
        for bad in ("", "has-hyphen", "has space", "../escape", "1starts_with_digit", "x" * 256, "naïve"):
            with pytest.raises(InvalidCollectionNameError, match="letters, digits and underscores"):
                backend.create_collection(_info_named(bad, self.dim))
            with pytest.raises(InvalidCollectionNameError):
                backend.search(bad, np.zeros((1, self.dim), np.float32))

    def test_reading_a_store_that_does_not_exist_creates_nothing(self, fresh_uri, fresh_path, backend_options):
        if fresh_uri is None:
            pytest.skip("no fresh_uri: a server, or a store that is not a file system path (override fresh_uri to check)")
        be = open_backend(self.backend_name, fresh_uri, backend_options)
        try:
            with pytest.raises(CollectionNotFoundError):
                be.search("gallery", np.zeros((1, self.dim), np.float32))
            assert be.list_collections() == []
        finally:
            be.close()
        assert not os.path.exists(fresh_path), f"a search created {fresh_path}"

    def test_opening_a_fresh_server_namespace_creates_nothing(self, fresh_namespace):
        if fresh_namespace is None:
            pytest.skip("no fresh_namespace fixture: an embedded store (see the fresh_uri promise), or a server plugin "
                        "that does not provide an empty namespace to check")  # fmt: skip
        before = fresh_namespace.contents()
        assert before == [], f"fresh_namespace is not empty: {before}"
        be = open_backend(self.backend_name, fresh_namespace.uri, fresh_namespace.options)
        try:
            with pytest.raises(CollectionNotFoundError):
                be.search(f"{PREFIX}missing", np.zeros((1, self.dim), np.float32))
            with pytest.raises(CollectionNotFoundError):
                be.count(f"{PREFIX}missing")
            assert be.list_collections() == [] and be.aliases() == {} and not be.has_collection(f"{PREFIX}missing")
        finally:
            be.close()
        after = fresh_namespace.contents()
        assert after == [], (
            f"opening the backend on an empty namespace and searching a missing collection created {after} there: "
            "nothing may be created before the first collection"
        )


def _info_named(name: str, dim: int) -> CollectionInfo:
    """A CollectionInfo whose name skipped validation, to show the backend checks it too."""
    info = object.__new__(CollectionInfo)
    for k, v in {"name": name, "dim": dim, "model": "m", "metric": "cosine", "target_domain": "photo", "extra": {}}.items():
        object.__setattr__(info, k, v)
    return info
