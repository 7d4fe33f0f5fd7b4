"""Reading a search request into a :class:`~clair_vec.retrieval.queries.Query`, refusing anything
malformed with a 4xx that names the problem.

Two shapes: a multipart form (``image`` file, ``domain``, repeatable ``text``, ``like``,
``unlike``, ``label``, and ``top_k``, ``offset``, ``min_score``, ``rerank``) or a JSON object with
the same fields (``image`` base64 or a data URL; ``text``/``like``/``unlike``/``label`` a string
or a list) and, for weights, ``parts``: ``[{"image": ..., "domain": ..., "weight": 1},
{"text": "guitar", "weight": 0.5}, {"id": "<hit id>", "weight": -1}]``. JSON is parsed strictly:
no NaN or Infinity, a bounded depth, every string valid Unicode.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from PIL import Image
from starlette.concurrency import run_in_threadpool

from clair_vec.datasets.images import IMAGE_FORMATS, decode_image
from clair_vec.errors import CorruptImageError
from clair_vec.retrieval.queries import RERANKS, Part, Query
from clair_vec.service.problems import HTTPProblem, too_large
from clair_vec.service.settings import ServiceSettings

MAX_QUERY_PIXELS = 40_000_000
_DATA_URL = re.compile(r"data:[\w.+-]+/[\w.+-]+(?:;[\w-]+=[\w.-]+)*;base64,", re.ASCII)


@dataclass
class SearchRequest:
    """A search as read from the wire: images still encoded (they are decoded off the event loop)."""

    images: list[tuple[bytes, str | None, float]] = field(default_factory=list)  # (data, domain, weight)
    texts: list[tuple[str, float]] = field(default_factory=list)
    ids: list[tuple[str, float]] = field(default_factory=list)
    top_k: int = 10
    offset: int = 0
    min_score: float | None = None
    labels: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)  # zero-shot tags (pseudo_label) stored by index --labels
    rerank: str | None = None
    domain: str | None = None  # as sent, checked against the model even when no image came with it

    @property
    def filter(self) -> dict[str, list[str]] | None:
        flt = {k: v for k, v in (("label", self.labels), ("pseudo_label", self.tags)) if v}
        return flt or None

    def query(self, images: list[Image.Image], exclude: frozenset[str] = frozenset()) -> Query:
        parts = [Part.image(im, domain, w) for im, (_, domain, w) in zip(images, self.images, strict=True)]
        parts += [Part.text(t, w) for t, w in self.texts] + [Part("id", i, None, w) for i, w in self.ids]
        return Query(tuple(parts), top_k=self.top_k, offset=self.offset, min_score=self.min_score, filter=self.filter,
                     rerank=self.rerank, exclude=exclude)  # fmt: skip


#: the deepest page a search may ask for (``offset``)
MAX_OFFSET = 10_000
#: the longest integer literal a request may hold; every number the service takes fits in far fewer
MAX_INT_DIGITS = 30
#: values in a JSON search body: parts, labels and texts are counted in tens; texts may hold commas
MAX_JSON_VALUES = 100_000


#: what a form or a URL may spell a number as: ASCII digits (``int()`` and ``float()`` also take
#: ``1_0``, other scripts' digits and spaces, which no client means)
_INTEGER = re.compile(r"[+-]?[0-9]+")
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")  # one way to split: linear


def strict_json(body: bytes, max_depth: int) -> Any:
    def no_constants(name: str) -> Any:
        raise HTTPProblem(400, f"the body is not valid JSON: {name} is not a JSON number")

    def once_each(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:  # json.loads would silently keep the last of a repeated key
                shown = key if len(key) <= 40 else key[:40] + "..."
                raise HTTPProblem(422, f"the JSON body has the key {shown!r} more than once in one object; give it once")
            out[key] = value
        return out

    def bounded_int(digits: str) -> int:
        if len(digits) > MAX_INT_DIGITS:
            raise HTTPProblem(422, f"a number in the body has {len(digits)} digits; no field takes more than {MAX_INT_DIGITS}")
        return int(digits)

    try:
        value = json.loads(body, parse_constant=no_constants, parse_int=bounded_int, object_pairs_hook=once_each)
    except RecursionError:
        raise HTTPProblem(400, f"the JSON body is nested too deeply (the limit is {max_depth} levels)") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise HTTPProblem(400, f"the body is not valid JSON ({exc})") from None
    if _depth(value, max_depth) > max_depth:
        raise HTTPProblem(400, f"the JSON body is nested too deeply (the limit is {max_depth} levels)")
    return value


def _depth(value: Any, limit: int, level: int = 1) -> int:
    if level > limit or not isinstance(value, (dict, list)):
        return level
    children = value.values() if isinstance(value, dict) else value
    return max([_depth(c, limit, level + 1) for c in children] or [level])


def text(value: Any, what: str, max_chars: int) -> str:
    """A string that is valid Unicode (a lone surrogate like ``\\ud800`` is not) and not too long."""
    if not isinstance(value, str):
        raise HTTPProblem(422, f"{what} must be a string, got {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise HTTPProblem(422, f"{what} is not valid Unicode (it holds an unpaired surrogate such as \\ud800)") from None
    if len(value) > max_chars:
        raise HTTPProblem(422, f"{what} is {len(value)} characters; the limit is {max_chars}")
    return value


def strings(value: Any, what: str, limit: int, max_chars: int) -> list[str]:
    values = [] if value is None else [value] if isinstance(value, str) else value
    if not isinstance(values, list):
        raise HTTPProblem(422, f"{what} must be a string or a list of strings")
    if len(values) > limit:
        raise HTTPProblem(422, f"{what} has {len(values)} values; the limit is {limit}")
    return [text(v, what, max_chars) for v in values]


def integer(value: Any, what: str, lo: int, hi: int, default: int) -> int:
    if value is None or value == "":
        return default
    if isinstance(value, str) and len(value) > MAX_INT_DIGITS:
        raise HTTPProblem(422, f"{what} must be an integer from {lo} to {hi}, got {len(value)} characters")
    if isinstance(value, bool) or isinstance(value, float) and not value.is_integer() or (
            isinstance(value, str) and not _INTEGER.fullmatch(value)):  # fmt: skip
        raise HTTPProblem(422, f"{what} must be an integer from {lo} to {hi}, got {value!r}")
    try:
        n = int(value) if not isinstance(value, float) or math.isfinite(value) else None
    except (TypeError, ValueError):
        n = None
    if n is None or not lo <= n <= hi:
        raise HTTPProblem(422, f"{what} must be an integer from {lo} to {hi}, got {repr(value) if n is None else n}")
    return n


def number(value: Any, what: str, lo: float, hi: float) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, str) and len(value) > MAX_INT_DIGITS:
        raise HTTPProblem(422, f"{what} must be a number from {lo:g} to {hi:g}, got {len(value)} characters")
    try:
        x = math.nan if isinstance(value, bool) or isinstance(value, str) and not _DECIMAL.fullmatch(value) else float(value)
    except (TypeError, ValueError):
        x = math.nan
    if not math.isfinite(x) or not lo <= x <= hi:
        raise HTTPProblem(422, f"{what} must be a number from {lo:g} to {hi:g}, got {value!r}")
    return x


def image_bytes(value: Any, settings: ServiceSettings, what: str = '"image"') -> bytes:
    """The bytes of a base64 image or a ``data:<type>;base64,<data>`` URL."""
    if not isinstance(value, str):
        raise HTTPProblem(400, f'{what} must be a base64 string or a data: URL')
    raw = value
    if value.startswith("data:"):
        m = _DATA_URL.match(value)
        if m is None:
            raise HTTPProblem(400, f"{what} is a data: URL but not of the form data:<type>;base64,<data> (e.g. data:image/png;base64,...)")
        raw = value[m.end() :]
    limit = settings.max_upload_bytes
    if len(raw) > limit * 4 // 3 + 8:
        raise HTTPProblem(413, too_large(len(raw) * 3 // 4, limit))
    try:
        data = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise HTTPProblem(400, f"{what} is not valid base64") from None
    if len(data) > limit:
        raise HTTPProblem(413, too_large(len(data), limit))
    return data


def _weight(value: Any, what: str) -> float:
    if isinstance(value, (str, bool)):  # a part is JSON: a weight is a number ("" once reached float(None): a 500)
        raise HTTPProblem(422, f"the weight of {what} must be a number from -100 to 100, got {value!r}"[:200])
    w = number(1.0 if value is None else value, f"the weight of {what}", -100.0, 100.0)
    if w == 0:
        raise HTTPProblem(422, f"the weight of {what} is 0: leave the part out instead")
    return float(w)


#: the fields of a search body, both shapes; any other is refused (a misspelt "top-k" would
#: otherwise be ignored and the search run with the default)
FIELDS = ("image", "domain", "text", "like", "unlike", "label", "pseudo_label", "top_k", "offset", "min_score", "rerank")
#: the fields that take one value (the others take a list: repeated in a form)
SCALARS = ("image", "domain", "top_k", "offset", "min_score", "rerank")
PART_FIELDS = {"image": ("image", "domain", "weight"), "text": ("text", "weight"), "id": ("id", "weight")}


def known_fields(names: Any, known: tuple[str, ...], what: str) -> None:
    """Every field of ``names`` is one of ``known`` and, in JSON, none is null or an empty list (a
    field is given with a value or left out: a client that sends ``"text": null`` or ``[]`` meant
    something, and the search would run without it)."""
    if isinstance(names, dict):
        empty = [k for k, v in names.items() if v is None or v == [] and k not in ("label", "pseudo_label")]
        if empty:
            raise HTTPProblem(422, f"{what}: {empty[0][:40]!r} is {json.dumps(names[empty[0]])}; give it a value or leave it out")
    unknown = sorted(set(names) - set(known))
    if unknown:
        shown = ", ".join(repr(n[:40]) for n in unknown[:3]) + (f" and {len(unknown) - 3} more" if len(unknown) > 3 else "")
        raise HTTPProblem(422, f"{what} has unknown fields {shown}; the fields are {', '.join(known)}")


def _not_text(get: Any, name: str, what: str) -> None:
    """JSON says what a value is: "5" is a string, not a number (a form's values are all text, and
    are read by what they spell)."""
    value = get(name)
    if isinstance(value, str):
        raise HTTPProblem(422, f"{name} must be {what}, not a string: send {name}: 5, not {name}: \"5\"")


def from_fields(get: Any, get_all: Any, settings: ServiceSettings, *, typed: bool = False) -> SearchRequest:
    """The options both shapes share, read by ``get(name)`` / ``get_all(name)``; ``typed``: the
    values are JSON's, whose types count (a form's are all text)."""
    s, limit = settings, settings.max_labels
    if typed:
        for name, what in (("top_k", "an integer"), ("offset", "an integer"), ("min_score", "a number")):
            _not_text(get, name, what)
        if get("rerank") is not None and not isinstance(get("rerank"), str):
            raise HTTPProblem(422, f"rerank must be one of {list(RERANKS)}, got {get('rerank')!r}")
    rerank = get("rerank") if typed else get("rerank") or None  # a form's empty field is one left empty
    if rerank is not None and rerank not in RERANKS:
        raise HTTPProblem(422, f"rerank must be one of {list(RERANKS)}, got {rerank!r}")
    req = SearchRequest(
        texts=[(t, 1.0) for t in strings(get_all("text"), '"text"', s.max_parts, s.max_text_chars)],
        ids=[(i, 1.0) for i in strings(get_all("like"), '"like"', s.max_parts, 64)]
        + [(i, -1.0) for i in strings(get_all("unlike"), '"unlike"', s.max_parts, 64)],
        top_k=integer(get("top_k"), "top_k", 1, s.max_top_k, 10),
        offset=integer(get("offset"), "offset", 0, MAX_OFFSET, 0),
        min_score=number(get("min_score"), "min_score", -1.0, 1.0),
        labels=strings(get_all("label"), '"label"', limit, s.max_text_chars),
        tags=strings(get_all("pseudo_label"), '"pseudo_label"', limit, s.max_text_chars),
        rerank=rerank,
    )
    return req


async def read_search(request: Request, settings: ServiceSettings) -> SearchRequest:
    # the media type alone, compared as RFC 9110 says: case-insensitively, parameters apart
    ctype = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if ctype in ("multipart/form-data", "application/x-www-form-urlencoded"):
        # text, like, unlike repeat up to max_parts times, label and pseudo_label up to max_labels
        form = await request.form(max_files=1, max_fields=3 * settings.max_parts + 2 * settings.max_labels + len(SCALARS))
        known_fields(form.keys(), FIELDS, "the form")
        repeated = [k for k in SCALARS if len(form.getlist(k)) > 1]
        if repeated:
            raise HTTPProblem(422, f"the form has {repeated[0]!r} {len(form.getlist(repeated[0]))} times; it takes one value")
        req = from_fields(lambda k: _form_value(form.get(k), k), lambda k: [_form_value(v, k) for v in form.getlist(k)],
                          settings)  # fmt: skip
        upload = form.get("image")
        domain = _form_value(form.get("domain"), "domain")
        if upload is not None:
            if isinstance(upload, str):
                raise HTTPProblem(400, "multipart field 'image' must be a file")
            data = await upload.read(settings.max_upload_bytes + 1)
            if len(data) > settings.max_upload_bytes:
                raise HTTPProblem(413, too_large(len(data), settings.max_upload_bytes))
            req.images.append((data, domain or None, 1.0))
        req.domain = domain or None
        return req
    if ctype == "application/json":
        raw = await request.body()
        # a search is a handful of values (an image is one string): refuse a body of millions before
        # parsing builds millions of objects, and parse off the event loop, which answers everyone else
        values = raw.count(b",") + raw.count(b"[") + raw.count(b"{")
        if values > MAX_JSON_VALUES:
            raise HTTPProblem(413, f"the JSON body holds about {values:,} values; a search holds at most {MAX_JSON_VALUES:,}")
        body = await run_in_threadpool(strict_json, raw, settings.max_json_depth)
        if not isinstance(body, dict):
            raise HTTPProblem(400, 'the JSON body must be an object, e.g. {"image": "<base64>", "domain": "sketch"}')
        known_fields(body, (*FIELDS, "parts"), "the JSON body")
        req = from_fields(body.get, body.get, settings, typed=True)
        domain = body.get("domain")
        req.domain = text(domain, '"domain"', 64) if domain is not None else None
        if body.get("image") is not None:
            req.images.append((image_bytes(body["image"], settings), req.domain, 1.0))
        _parts(body.get("parts"), req, settings)
        return req
    raise HTTPProblem(415, 'send multipart/form-data (field "image") or application/json ({"image": base64, "domain": ...})')


def _form_value(value: Any, name: str) -> Any:
    if value is not None and not isinstance(value, str) and name != "image":
        raise HTTPProblem(400, f"multipart field {name!r} must be text, not a file")
    return value


def _parts(parts: Any, req: SearchRequest, settings: ServiceSettings) -> None:
    if parts is None:
        return
    if not isinstance(parts, list) or len(parts) > settings.max_parts:
        raise HTTPProblem(422, f'"parts" must be a list of at most {settings.max_parts} objects')
    for n, p in enumerate(parts):
        what = f"part #{n}"
        if not isinstance(p, dict) or sum(k in p for k in ("image", "text", "id")) != 1:
            raise HTTPProblem(422, f'{what} must be an object with exactly one of "image", "text" or "id" (and "weight")')
        known_fields(p, next(f for k, f in PART_FIELDS.items() if k in p), what)
        w = _weight(p.get("weight"), what)
        if "image" in p:
            domain = p.get("domain")
            req.images.append((image_bytes(p["image"], settings, f"{what} image"), text(domain, f"{what} domain", 64) if domain else None, w))
        elif "text" in p:
            req.texts.append((text(p["text"], f"{what} text", settings.max_text_chars), w))
        else:
            req.ids.append((text(p["id"], f"{what} id", 64), w))


def decode_upload(data: bytes, max_pixels: int = MAX_QUERY_PIXELS) -> Image.Image:
    """A query image, refused before decoding when its header announces too many pixels (a 10 MB
    PNG can decode to gigabytes; PIL itself only warns below 179 Mpx)."""
    if not data:
        raise HTTPProblem(400, "the image is empty")
    try:
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as im:
            width, height = im.size
    except Image.DecompressionBombError:  # Pillow's own refusal, far above our limit: the same answer
        raise HTTPProblem(413, f"the image has more than {max_pixels / 1e6:.0f} Mpx, the limit") from None
    except Exception as exc:
        raise HTTPProblem(400, f"the upload is not an image in a format the service reads ({', '.join(IMAGE_FORMATS)}): "
                               f"{type(exc).__name__}") from None  # fmt: skip
    if width * height > max_pixels:
        raise HTTPProblem(413, f"the image is {width}x{height} pixels; the limit is {max_pixels / 1e6:.0f} Mpx")
    try:
        return decode_image(data, "upload")
    except CorruptImageError as exc:
        raise HTTPProblem(400, f"the upload is not an image the service can read: {exc.reason}") from None
