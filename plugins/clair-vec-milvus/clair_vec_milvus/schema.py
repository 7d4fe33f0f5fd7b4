"""Collections and aliases: the schema a collection is created with (its CollectionInfo stored in
the collection's properties), loading, listing, dropping, and Milvus's own aliases."""

from __future__ import annotations

import time
from pathlib import Path

from clair_vec.plugin import Backend, BackendUnavailableError, CollectionInfo, CollectionMismatchError

#: payload keys stored as scalar fields (every other key goes to the dynamic field)
_FIELDS = ("domain", "label", "path")
#: with no index_type given, a Milvus Lite collection is exact (FLAT) until a flush finds this
#: many rows, then HNSW: FLAT in Lite answered 2.8 queries a second at 100k x 512-d, HNSW 16 (at
#: ef 64) at recall@10 1.000 (python -m clair_vec.benchmarks.ann --vectors 20000,100000)
AUTO_INDEX_ROWS = 20_000
AUTO_INDEX = ("HNSW", {"M": 16, "efConstruction": 200})
#: the collection property that marks a collection as created with the automatic index
AUTO_PROPERTY = "clair_vec_index"


class MilvusCollections(Backend):
    """The collection and alias primitives of :class:`~clair_vec.plugin.Backend`."""

    def _exists(self) -> bool:
        """False for a Lite store that was never created: reads then find nothing, and create nothing."""
        return self._client is not None or not self.lite or Path(self.uri).exists()

    def _create(self, info: CollectionInfo) -> None:
        from pymilvus import DataType

        client = self.client
        schema = client.create_schema(auto_id=False, enable_dynamic_field=True, description="clair_vec collection")
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=128)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=info.dim)
        schema.add_field("domain", DataType.VARCHAR, max_length=128)
        schema.add_field("label", DataType.VARCHAR, max_length=512)
        schema.add_field("path", DataType.VARCHAR, max_length=4096)
        kind, params = self._first_index()
        index = client.prepare_index_params()
        index.add_index(field_name="vector", index_type=kind, metric_type="COSINE", params=params)
        # the spec travels in the collection's properties, set in the same call that creates it,
        # so no collection exists without one
        client.create_collection(
            info.name, schema=schema, index_params=index, consistency_level="Strong",
            properties={"clair_vec": info.to_json(), **({AUTO_PROPERTY: "auto"} if self.index_type is None else {})},
        )  # fmt: skip
        self._index_types[info.name] = kind

    def _first_index(self) -> tuple[str, dict]:
        """The index a new collection is created with. Chosen: that one. Automatic: on Milvus
        Lite FLAT, grown to HNSW by the flush that reaches ``index_threshold`` rows; on a server
        HNSW from the start, since a server cannot change it later without releasing the
        collection under other clients, and it searches segments too small to index exactly."""
        if self.index_type is not None:
            return self.index_type, self.index_params
        if self.lite or self.index_threshold is None:
            return "FLAT", {}
        return AUTO_INDEX[0], dict(AUTO_INDEX[1])

    def _read_info(self, name: str) -> CollectionInfo | None:
        if not self._exists() or not self.client.has_collection(name):
            return None
        props = self.client.describe_collection(name).get("properties") or {}
        try:
            return CollectionInfo.from_json(props["clair_vec"])
        except (KeyError, ValueError, TypeError) as exc:
            raise CollectionMismatchError(
                f"Milvus collection {name!r} was not created by clair_vec (it has no clair_vec property); "
                "choose another collection name"
            ) from exc

    def _list(self) -> list[str]:
        return list(self.client.list_collections()) if self._exists() else []

    def _load(self, name: str) -> None:
        """Load the collection (a new process or a restarted server finds it released or still
        loading), wait a bounded time for it, then sync once with a Strong read."""
        from pymilvus.client.types import LoadState

        client = self.client
        deadline = time.monotonic() + self.load_timeout
        state = client.get_load_state(name)["state"]
        if state == LoadState.NotLoad:
            client.load_collection(name, timeout=self.load_timeout)
        while client.get_load_state(name)["state"] != LoadState.Loaded:
            if time.monotonic() > deadline:
                raise BackendUnavailableError(
                    f"Milvus collection {name!r} at {self.display_uri} is still not loaded after {self.load_timeout:.0f} s "
                    "(a server that just restarted loads its collections first); retry, or raise load_timeout"
                )
            time.sleep(0.5)
        self._sync(name)

    def _grow_index(self, name: str) -> None:
        """The automatic index (Milvus Lite only, collections created with no ``index_type``, which
        say so in their ``clair_vec_index`` property): once a flush finds ``index_threshold`` rows,
        a FLAT collection is re-indexed as HNSW, once. A server keeps what it was created with:
        re-indexing there would release the collection under other clients."""
        if self.index_type is not None or self.index_threshold is None or not self.lite:
            return
        client = self.client
        if (client.describe_collection(name).get("properties") or {}).get(AUTO_PROPERTY) != "auto":
            return  # created with a chosen index, or before the automatic one existed
        if int(client.get_collection_stats(name).get("row_count", 0)) < self.index_threshold:
            return
        current = (client.describe_index(name, "vector") or {}).get("index_type")
        if current not in (None, "FLAT"):
            return  # asked afresh: another handle may have grown it already
        failure: BaseException | None = None
        client.release_collection(name)
        try:
            if current is not None:  # None: a run killed between the drop and the create left none
                client.drop_index(name, "vector")
            try:
                self._make_index(name, *AUTO_INDEX)
            except BaseException:
                self._make_index(name, "FLAT", {})  # never leave the collection without an index
                raise
        except BaseException as exc:
            failure = exc
        self._index_types.pop(name, None)
        try:
            client.load_collection(name, timeout=self.load_timeout)
        except Exception:
            if failure is None:
                raise
        if failure is not None:
            raise failure  # what went wrong first, not the reload it caused
        self._sync(name)

    def _make_index(self, name: str, kind: str, params: dict) -> None:
        index = self.client.prepare_index_params()
        index.add_index(field_name="vector", index_type=kind, metric_type="COSINE", params=params)
        self.client.create_index(name, index)

    def _drop(self, name: str) -> None:
        self.client.drop_collection(name)
        self._index_types.pop(name, None)

    # ------------------------------------------------------------------ aliases (Milvus's own)
    def _alias_names(self) -> list[str]:
        return list(self.client.list_aliases().get("aliases") or []) if self._exists() else []

    def _list_aliases(self) -> dict[str, str]:
        found = {}
        for alias in self._alias_names():
            target = self._alias_target(alias)
            if target is not None:
                found[alias] = target
        return found

    def _alias_target(self, name: str) -> str | None:
        from pymilvus.exceptions import MilvusException

        if name not in self._alias_names():  # listing first: describing a non-alias logs an RPC error
            return None
        try:
            return str(self.client.describe_alias(name)["collection_name"])
        except MilvusException:  # dropped meanwhile
            return None

    def _set_alias(self, alias: str, collection: str) -> None:
        from pymilvus.exceptions import MilvusException

        if alias in self._alias_names():
            self.client.alter_alias(collection, alias)
            return
        try:
            self.client.create_alias(collection, alias)
        except MilvusException as exc:
            if "exist" not in str(exc).lower():
                raise
            self.client.alter_alias(collection, alias)  # another process created it meanwhile: move it

    def _drop_alias(self, alias: str) -> None:
        self.client.drop_alias(alias)
