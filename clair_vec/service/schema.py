"""What the service's OpenAPI document (``--docs``: ``/openapi.json``) says about bodies and
answers, so a client generator or a schema-driven fuzzer sees the service as it is: the two
shapes of ``POST /search``, and every error as ``{"detail": "<words>"}``.

The routes read their bodies themselves (:mod:`~clair_vec.service.requests`: multipart or JSON,
strictly), so FastAPI cannot infer either; and FastAPI's own 422 schema (a list of validation
errors) is not what this service sends.
"""

from __future__ import annotations

from typing import Any

PROBLEM = {"type": "object", "required": ["detail"], "properties": {"detail": {"type": "string"}},
           "additionalProperties": False}  # fmt: skip

_WHY = {
    400: "not an image, or not valid JSON",
    401: "an API key is needed, or it is wrong",
    403: "a web page of another origin",
    404: "no such record or image",
    405: "another method (see Allow)",
    408: "the body stopped arriving",
    413: "the upload, the image's pixels or the JSON body is over its limit",
    415: "a content type other than multipart/form-data, application/x-www-form-urlencoded or application/json",
    422: "a query that cannot run (out of range, unknown domain, bad filter)",
    503: "busy, or the vector database does not answer (see Retry-After)",
}


def answers(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses`` of a route: each error status as a Problem."""
    return {code: {"description": _WHY[code], "content": {"application/json": {"schema": PROBLEM}}} for code in codes}


_STRINGS = {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}
_FIELDS: dict[str, Any] = {
    "domain": {"type": "string", "description": "the image's domain (sketch, clipart...): required with an image"},
    "text": _STRINGS,
    "like": _STRINGS,
    "unlike": _STRINGS,
    "label": _STRINGS,
    "pseudo_label": _STRINGS,
    "top_k": {"type": "integer", "minimum": 1},
    "offset": {"type": "integer", "minimum": 0, "maximum": 10_000},
    "min_score": {"type": "number", "minimum": -1, "maximum": 1},
    "rerank": {"type": "string"},
}
_PART = {"type": "object", "properties": {"image": {"type": "string", "description": "base64 or a data: URL"},
                                          "domain": {"type": "string"}, "text": {"type": "string"},
                                          "id": {"type": "string"}, "weight": {"type": "number"}}}  # fmt: skip

SEARCH_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": {"type": "object", "properties": {
                "image": {"type": "string", "format": "binary"}, **_FIELDS}}},
            "application/json": {"schema": {"type": "object", "properties": {
                "image": {"type": "string", "description": "base64 or a data: URL"}, **_FIELDS,
                "parts": {"type": "array", "items": _PART}}}},
        },
    }
}  # fmt: skip

HITS = {"type": "object", "required": ["hits"], "properties": {"hits": {"type": "array", "items": {"type": "object"}},
                                                               "note": {"type": "string"}}}  # fmt: skip
