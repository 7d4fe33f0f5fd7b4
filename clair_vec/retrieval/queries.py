"""One query model for the API, the CLI, the service and Ray Serve.

A :class:`Query` is a weighted set of parts, each an image (of a domain), a text, or a stored
record's id, plus ``top_k``, ``offset`` (paging), ``min_score``, a payload filter and an optional
re-ranking. Every part is encoded into the gallery domain's space:

- an image: CLIP -> CLAIR head -> the closed-form mapping of its domain into the gallery domain,
  exactly as a one-image search always did;
- a text: CLIP's text encoder with the model's prompts for the gallery domain (hand-crafted
  templates plus the learned context, as for zero-shot labels), so "guitar" becomes "a photo of
  a guitar." in the space the mapping was fitted in;
- an id: the vector stored for that record.

They are combined as the normalised weighted sum ``normalize(sum_i w_i * e_i)`` of the unit
embeddings ``e_i``: a negative weight ("less like this") subtracts. A query of one image with
weight 1 is the one-image query of before, with exactly its results. The score of a hit is its
cosine similarity to that combined vector.

``rerank="aqe"`` is alpha query expansion (Radenović et al.): the query is searched once, then
again with ``normalize(q + sum_{i<=n} max(0, s_i)**alpha * g_i)`` over the stored vectors of its
top ``n`` hits. It is off by default: see README for what it measured.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np

from clair_vec.errors import ClairVecError
from clair_vec.store.ids import ID_PATTERN

Kind = Literal["image", "text", "id"]
RERANKS = ("aqe",)
#: the most hits one query may page through (top_k + offset): the smallest engine limit (Milvus: 16384)
MAX_WINDOW = 16384
#: alpha query expansion: top hits folded back into the query, and the power of their scores
AQE_TOP, AQE_ALPHA = 10, 3.0


class QueryError(ClairVecError, ValueError):
    """A query that cannot be run as given; the message names the part and the fix."""


@dataclass(frozen=True)
class Part:
    kind: Kind
    value: Any  # an image input (path, PIL image, array), a text, or a record id
    domain: str | None = None  # images only: the domain the image was drawn in
    weight: float = 1.0

    @classmethod
    def image(cls, image: Any, domain: str, weight: float = 1.0) -> Part:
        return cls("image", image, domain, weight)

    @classmethod
    def text(cls, text: str, weight: float = 1.0) -> Part:
        return cls("text", text, None, weight)

    @classmethod
    def like(cls, record_id: str, weight: float = 1.0) -> Part:
        return cls("id", record_id, None, weight)

    @classmethod
    def unlike(cls, record_id: str, weight: float = 1.0) -> Part:
        return cls("id", record_id, None, -abs(weight))

    def describe(self) -> str:
        if self.kind == "image":
            shown = self.value if isinstance(self.value, str) else type(self.value).__name__
            return f"image {shown!r} ({self.domain})"
        return f"{self.kind} {str(self.value)[:60]!r}"


@dataclass(frozen=True)
class Query:
    parts: tuple[Part, ...]
    top_k: int = 10
    offset: int = 0
    min_score: float | None = None
    filter: Mapping[str, Any] | None = None
    rerank: str | None = None
    #: ids never returned (``/similar/{id}`` leaves out the record it starts from)
    exclude: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def of(cls, *parts: Part, **options: Any) -> Query:
        return cls(tuple(parts), **options)

    def with_parts(self, *parts: Part) -> Query:
        """The same query refined: relevance feedback adds liked / unliked ids this way."""
        return replace(self, parts=self.parts + tuple(parts))

    @property
    def window(self) -> int:
        """How many hits to ask the engine for: enough to page, and to drop the excluded ones."""
        return self.offset + self.top_k + len(self.exclude)

    def validate(self, domains: Sequence[str], max_top_k: int = MAX_WINDOW) -> Query:
        """This query, checked before anything is encoded; :class:`QueryError` says what is wrong."""
        if not self.parts:
            raise QueryError("the query is empty: give an image, a text or a stored id to search with")
        for p in self.parts:
            if p.kind not in ("image", "text", "id"):
                raise QueryError(f"unknown query part kind {p.kind!r}; use image, text or id")
            if isinstance(p.weight, bool) or not isinstance(p.weight, (int, float)) or not math.isfinite(p.weight):
                raise QueryError(f"the weight of {p.describe()} is {p.weight!r}; weights must be finite numbers")
            if p.weight == 0:
                raise QueryError(f"the weight of {p.describe()} is 0: leave the part out instead")
            if p.kind == "image" and p.domain not in domains:
                raise QueryError(f"{p.describe()}: unknown domain {p.domain!r}; this model knows {sorted(domains)}")
            if p.kind == "text" and (not isinstance(p.value, str) or not _HAS_TEXT.search(p.value)):
                raise QueryError(f"a text part must be a non-empty string, got {p.value!r}")
            if p.kind == "id" and (not isinstance(p.value, str) or not _ID.fullmatch(p.value)):
                raise QueryError(f"{p.value!r} is not a record id (32 hex digits, as search hits return them)")
        if not any(p.weight > 0 for p in self.parts):
            raise QueryError("the query has only negative parts: say what to search for, not only what to avoid")
        for name, value, lo in (("top_k", self.top_k, 1), ("offset", self.offset, 0)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
                raise QueryError(f"{name} must be an integer >= {lo}, got {value!r}")
        if self.top_k > max_top_k:
            raise QueryError(f"top_k must be an integer from 1 to {max_top_k}, got {self.top_k}")
        if self.window > MAX_WINDOW:
            raise QueryError(f"offset + top_k is {self.offset + self.top_k}; results can be paged up to {MAX_WINDOW}")
        if self.min_score is not None and (isinstance(self.min_score, bool) or not isinstance(self.min_score, (int, float))
                                           or not -1.0 <= self.min_score <= 1.0):  # fmt: skip
            raise QueryError(f"min_score must be a number from -1 to 1 (a cosine similarity), got {self.min_score!r}")
        if self.rerank is not None and self.rerank not in RERANKS:
            raise QueryError(f"unknown rerank {self.rerank!r}; use one of {list(RERANKS)} or none")
        return self


_ID = re.compile(ID_PATTERN)
#: a text says something when it holds a character that is not white space, white space as
#: JSON Schema (ECMA-262) counts it, so the service's OpenAPI document and this check agree
#: (Python's str.isspace also counts the control characters \x1c-\x1f)
TEXT_PATTERN = "[^\t\n\v\f\r \u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff]"
_HAS_TEXT = re.compile(TEXT_PATTERN)


def combine(parts: Sequence[Part], embeddings: Sequence[np.ndarray]) -> np.ndarray:
    """``normalize(sum_i w_i * e_i)`` of unit embeddings; a combination that cancels out is refused.
    One part of positive weight is its embedding unchanged (the one-image query of before, bit for bit)."""
    if len(parts) == 1 and parts[0].weight > 0:
        return np.asarray(embeddings[0], np.float32)
    total = np.zeros_like(np.asarray(embeddings[0], np.float64))
    for part, e in zip(parts, embeddings, strict=True):
        e = np.asarray(e, np.float64)
        total += part.weight * e / max(float(np.linalg.norm(e)), 1e-12)
    norm = float(np.linalg.norm(total))
    if norm < 1e-6:
        raise QueryError("the query's parts cancel out (the positive and negative parts are the same): change a weight")
    return (total / norm).astype(np.float32)


def expand_query(q: np.ndarray, hit_vectors: np.ndarray, scores: Sequence[float], alpha: float = AQE_ALPHA) -> np.ndarray:
    """Alpha query expansion: the query plus its top hits, each weighted by its score to the power alpha."""
    w = np.clip(np.asarray(scores, np.float64), 0.0, None) ** alpha
    v = np.asarray(q, np.float64) + (w[:, None] * np.asarray(hit_vectors, np.float64)).sum(0) if len(w) else np.asarray(q, np.float64)
    return (v / max(float(np.linalg.norm(v)), 1e-12)).astype(np.float32)


def empty_filter_note(retriever: Any, collection: str, flt: Mapping[str, Any]) -> str | None:
    """Why a filtered search came back empty when it is the filter: "no record has pseudo_label
    'guitar'" (rather than silence), or None when each filter value does match something."""
    from clair_vec.store.backend import normalize_filter

    empty = [f"{key} {value!r}" for key, values in normalize_filter(flt).items() for value in values
             if retriever.count(collection, filter={key: value}) == 0]  # fmt: skip
    if not empty:
        return None
    return f"no record in {collection!r} has {' or '.join(empty)}"


def text_token_problem(tokenizer: Any, text: str, templates: Sequence[str], extra_tokens: int = 0) -> str | None:
    """Why ``text`` does not fit the text encoder once put in the prompts (the tokenizer would cut
    it silently), or None. ``extra_tokens``: learned context vectors that precede the text."""
    encode = getattr(tokenizer, "encode", None)
    context = int(getattr(tokenizer, "context_length", 77))
    if encode is None:  # a Hugging Face tokenizer: no cheap count; open_clip truncates, which is documented
        return None
    own = len(encode(text))
    longest = max([len(encode(t.format(text))) for t in templates] + [extra_tokens + own + 1])
    if longest + 2 > context:  # start- and end-of-text tokens
        budget = context - 2 - (longest - own)
        return (f"the text is {own} tokens long; the text encoder takes {context} tokens with the prompt around it, "
                f"which leaves {budget} for the text (about {max(budget * 3 // 4, 1)} words): shorten it")  # fmt: skip
    return None
