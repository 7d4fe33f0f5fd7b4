"""Conversion between clair_vec's records and hits and Qdrant points, shared by both engines.

Qdrant Edge and qdrant-client return points of different classes with the same attributes
(``id``, ``payload``, ``vector``, ``score``), and their model modules name the filter classes
alike, so one set of functions serves both. Qdrant point ids must be UUIDs or integers: a
record's own id travels in the ``clair_id`` payload field and comes back from there.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from clair_vec.plugin import Hit, Record

#: the name of the one vector each point carries
VECTOR = "clair"


def point_payload(r: Record) -> dict[str, Any]:
    return {**{k: v for k, v in r.payload.items() if v is not None}, "clair_id": r.id}


def record_of(point: Any) -> tuple[str, dict[str, Any]]:
    """A point as ``(record id, payload)``; points written without ``clair_id`` keep the point id."""
    payload = dict(point.payload or {})
    return str(payload.pop("clair_id", point.id)), payload


def hit_of(point: Any) -> Hit:
    rid, payload = record_of(point)
    return Hit(id=rid, score=float(point.score), payload=payload)


def vector_of(point: Any) -> np.ndarray:
    v = point.vector
    return np.asarray(v[VECTOR] if isinstance(v, dict) else v, np.float32)


def must_match(models: Any, flt: dict[str, list[str]]) -> Any:
    """The same filter for Qdrant Edge and qdrant-client (``models``: ``qdrant_edge`` or
    ``qdrant_client.models``); None for no filter."""
    if not flt:
        return None
    return models.Filter(must=[models.FieldCondition(key=k, match=models.MatchAny(any=list(vs))) for k, vs in flt.items()])
