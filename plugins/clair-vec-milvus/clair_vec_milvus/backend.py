"""The backend class: its options, and the mixins it is made of."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

from clair_vec.plugin import Backend, register_secret

from .connection import DEFAULT_URI, MilvusConnection, _is_lite
from .errors import MilvusErrors, _DropUnimplementedProbe
from .schema import AUTO_INDEX_ROWS, MilvusCollections
from .search import MilvusSearch
from .writes import MilvusWrites

#: the index types milvus-lite 3 builds (its index factory; IVF and HNSW ones need faiss, which it installs)
LITE_INDEX_TYPES = ("FLAT", "BRUTE_FORCE", "AUTOINDEX", "HNSW", "HNSW_SQ", "IVF_FLAT", "IVF_SQ8")


# Each mixin subclasses Backend and overrides its defaults; no two define the same method, so
# their order only has to put them all before Backend.
class MilvusBackend(MilvusErrors, MilvusCollections, MilvusWrites, MilvusSearch, MilvusConnection, Backend):
    name = "milvus"
    max_top_k = 16384

    def __init__(
        self,
        uri: str | None = None,
        *,
        token: str | None = None,
        user: str = "",
        password: str | None = None,
        db_name: str = "",
        timeout: float = 10.0,
        index_type: str | None = None,
        index_params: dict[str, Any] | None = None,
        index_threshold: int | None = AUTO_INDEX_ROWS,
        search_params: dict[str, Any] | None = None,
        load_timeout: float = 120.0,
        index_timeout: float = 3600.0,
        **options: Any,
    ) -> None:
        uri = uri or os.environ.get("CLAIR_VEC_MILVUS_URI") or DEFAULT_URI
        register_secret(token)
        register_secret(password)
        super().__init__(uri, **options)
        self.lite = _is_lite(uri)
        if index_threshold is not None and (not isinstance(index_threshold, int) or isinstance(index_threshold, bool)
                                            or index_threshold < 0):  # fmt: skip
            raise ValueError(f"index_threshold must be a non-negative integer or None, got {index_threshold!r}")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
            # checked here: while connecting, any error reads as an unreachable server
            raise ValueError(f"timeout must be a number of seconds > 0, got {timeout!r}")
        for key, value in (("load_timeout", load_timeout), ("index_timeout", index_timeout)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"{key} must be a number of seconds >= 0, got {value!r}")
        if index_type is not None and (not isinstance(index_type, str) or (self.lite and index_type.upper() not in LITE_INDEX_TYPES)):
            # Milvus Lite takes any name at creation and fails only in its background index build,
            # leaving a collection no search can use; a server refuses an unknown name itself
            raise ValueError(f"index_type {index_type!r} is not one Milvus Lite builds; use one of {', '.join(LITE_INDEX_TYPES)}"
                             if isinstance(index_type, str) else f"index_type must be a name such as HNSW, got {index_type!r}")  # fmt: skip
        for key, value in (("index_params", index_params), ("search_params", search_params)):
            if value is not None and not isinstance(value, dict):
                raise ValueError(f"{key} must be a JSON object (a dict), e.g. {key}='{{\"M\": 16}}', got {value!r}")
        #: None: on Milvus Lite FLAT, then HNSW once a flush finds index_threshold rows; on a server
        #: HNSW from the start (see MilvusCollections._first_index)
        self.index_type = index_type.upper() if index_type else None
        self.index_params = dict(index_params or {})
        self.index_threshold = index_threshold
        self.search_params = dict(search_params or {})
        self._index_types: dict[str, str] = {}
        self._warned_large: set[str] = set()
        self.load_timeout = load_timeout
        #: how long flush() waits for a server to index what it holds (see MilvusWrites._wait_for_index)
        self.index_timeout = index_timeout
        self.db_name = db_name
        self._timeout = timeout
        self._credential = self._find_credential(token, user, password)
        self._client: Any = None
        self._connect_lock = threading.Lock()
        if self.lite:
            grpc_log = logging.getLogger("grpc._server")
            if not any(isinstance(f, _DropUnimplementedProbe) for f in grpc_log.filters):
                grpc_log.addFilter(_DropUnimplementedProbe())
            if Path(uri).exists():  # an existing store opens now, so a lock conflict shows at once
                self._connect()
        else:
            self._connect()
