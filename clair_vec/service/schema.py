"""What the service's OpenAPI document (``--docs``: ``/openapi.json``) says about bodies and
answers, so a client generator or a schema-driven fuzzer sees the service as it is: the two
shapes of ``POST /search``, and every error as ``{"detail": "<words>"}``.

The routes read their bodies themselves (:mod:`~clair_vec.service.requests`: multipart or JSON,
strictly), so FastAPI cannot infer either; and FastAPI's own 422 schema (a list of validation
errors) is not what this service sends.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi.openapi.utils import get_openapi

from clair_vec.retrieval.queries import RERANKS, TEXT_PATTERN
from clair_vec.service.requests import MAX_OFFSET
from clair_vec.service.settings import ServiceSettings
from clair_vec.service.thumbnails import THUMB_SIZES
from clair_vec.store.ids import ID_PATTERN as _ID

if TYPE_CHECKING:
    from fastapi import FastAPI

    from clair_vec.service.context import ServiceContext

#: a record id, whole (search hits return them)
ID_PATTERN = f"^{_ID}$"

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


#: a text query holds a non-space character and fits the text encoder with its prompt, a limit in
#: tokens that JSON Schema cannot count: a longer text is a 422 that gives its count and the budget
_TEXT = {"pattern": TEXT_PATTERN,
         "description": "words that fit the model's text encoder with its prompt (about 18 words for the smallest models)"}


_RECORD_ID = {"type": "string", "pattern": ID_PATTERN}


def _one_or_list(one: dict[str, Any], max_items: int, *, min_items: int = 0) -> dict[str, Any]:
    """``one``, or a list of them (a form repeats the field)."""
    return {"oneOf": [one, {"type": "array", "items": one, "maxItems": max_items, "minItems": min_items}]}


def _text(s: ServiceSettings) -> dict[str, Any]:
    return {"type": "string", "maxLength": s.max_text_chars, **_TEXT}


def _fields(domains: list[str], s: ServiceSettings) -> dict[str, Any]:
    ids = _one_or_list(_RECORD_ID, s.max_parts, min_items=1)
    labels = _one_or_list({"type": "string", "maxLength": s.max_text_chars}, s.max_labels)
    return {
        "domain": {"type": "string", "enum": domains, "description": "the image's domain: required with an image"},
        "text": _one_or_list(_text(s), s.max_parts, min_items=1),
        "like": ids,
        "unlike": ids,
        "label": labels,
        "pseudo_label": labels,
        "top_k": {"type": "integer", "minimum": 1, "maximum": s.max_top_k},
        "offset": {"type": "integer", "minimum": 0, "maximum": MAX_OFFSET},
        "min_score": {"type": "number", "minimum": -1, "maximum": 1},
        "rerank": {"type": "string", "enum": list(RERANKS)},
    }


def search_body(fields: dict[str, Any], s: ServiceSettings) -> dict[str, Any]:
    """``POST /search``'s body in both shapes, as exactly as JSON Schema can say it: every request
    the document allows is one the service runs, and the service refuses what it does not allow.
    A query needs something to search with (an image with its domain, a text, a stored id that is
    liked, or parts of which one weighs more than 0). ``fields``: :func:`_fields`."""
    weight = {"type": "number", "minimum": -100, "maximum": 100, "not": {"const": 0}}
    image = {"type": "string", "format": "byte", "description": "an image (JPEG, PNG, ...) in base64, or a data: URL"}
    part = {"oneOf": [
        {"type": "object", "required": ["image", "domain"], "additionalProperties": False,
         "properties": {"image": image, "domain": fields["domain"], "weight": weight}},
        {"type": "object", "required": ["text"], "properties": {"text": _text(s), "weight": weight}, "additionalProperties": False},
        {"type": "object", "required": ["id"], "properties": {"id": _RECORD_ID, "weight": weight}, "additionalProperties": False},
    ]}  # fmt: skip
    # weight absent means 1
    positive = {"anyOf": [{"not": {"required": ["weight"]}}, {"properties": {"weight": {"exclusiveMinimum": 0}}}]}
    # the branches only name fields: a list of texts or ids is never empty (the service refuses [])
    something = [{"required": ["text"]}, {"required": ["like"]}, {"required": ["parts"], "properties": {"parts": {"contains": positive}}}]
    json_shape = {
        "type": "object",
        "properties": {"image": image, **fields, "parts": {"type": "array", "items": part, "minItems": 1, "maxItems": s.max_parts}},
        "additionalProperties": False,
        "dependentRequired": {"image": ["domain"]},
        "anyOf": [{"required": ["image"]}, *something],
    }
    form_shape = {
        "type": "object",
        "properties": {"image": {"type": "string", "format": "binary", "description": "an image file (JPEG, PNG, ...)"}, **fields},
        "additionalProperties": False,
        "dependentRequired": {"image": ["domain"]},
        "anyOf": [{"required": ["image", "domain"]}, *something[:2]],
    }
    return {"required": True, "content": {"multipart/form-data": {"schema": form_shape}, "application/json": {"schema": json_shape}}}


def document(app: FastAPI, ctx: ServiceContext) -> dict[str, Any]:
    """The OpenAPI document of ``app`` as it serves now: the domains of the model it serves and
    the limits it runs with, which FastAPI cannot infer from routes that read their own bodies
    and parameters."""
    doc = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
    s, domains = ctx.settings, list(ctx.serving.model.domains)
    paths = doc["paths"]
    fields = _fields(domains, s)
    paths["/search"]["post"]["requestBody"] = search_body(fields, s)
    _parameters(paths["/similar/{rid}"]["get"], {"rid": _RECORD_ID,
                                                 "top_k": fields["top_k"], "offset": fields["offset"],
                                                 "min_score": fields["min_score"],
                                                 "label": {"type": "array", "items": {"type": "string", "maxLength": s.max_text_chars},
                                                           "maxItems": s.max_labels}})  # fmt: skip
    _parameters(paths["/images/{rid}"]["get"], {"rid": _RECORD_ID,
                                                "size": {"type": "integer", "enum": list(THUMB_SIZES), "default": 160}})  # fmt: skip
    return doc


def _parameters(operation: dict[str, Any], schemas: dict[str, dict[str, Any]]) -> None:
    for p in operation.get("parameters", []):
        if p["name"] in schemas:
            p["schema"] = schemas[p["name"]]
