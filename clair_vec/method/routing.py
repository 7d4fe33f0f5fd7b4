"""How much of the trained head each domain's embedding uses: the shipped per-domain decision.

A domain's embedding is ``e_d(v) = normalize((1 - b_d) v + b_d head(v))`` for its CLIP feature
``v``, then its domain map (which may be the identity). ``b_d = 1`` is the CLAIR head, ``b_d = 0``
raw CLIP. The gallery (pivot) domain has one blend like every other domain, and every query
domain's blend was chosen against that same gallery embedding (see
:mod:`clair_vec.training.selection`): the gallery is embedded once, whatever the queries do.

The blends live in the model object and its ``clair.json`` (``routing``), so every consumer that
embeds through :meth:`ClairModel.embed_features` gets them: index, search, the service, Ray jobs.
A model without a ``routing`` entry (every checkpoint written before it) uses the head everywhere.
Torch-free: :mod:`clair_vec.method.model_card` validates it without loading the model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

HEAD, RAW = 1.0, 0.0


def check_routing(routing: Any, domains: Sequence[str]) -> dict[str, float]:
    """``routing`` as ``{domain: blend}`` over exactly ``domains``; raises ``ValueError`` naming
    the first problem (the checkpoint reader adds the file and field)."""
    if not isinstance(routing, Mapping):
        raise ValueError(f"is a {type(routing).__name__}; expected an object {{domain: blend in [0, 1]}}")
    unknown = sorted(str(d) for d in routing if d not in domains)
    if unknown:
        raise ValueError(f"names domains {unknown} the model does not have; expected keys among {sorted(domains)}")
    out = {}
    for d in domains:
        value = routing.get(d, HEAD)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not 0 <= value <= 1:
            raise ValueError(f"gives domain {d!r} the blend {value!r}; expected a number in [0, 1] (0: raw CLIP, 1: the head)")
        out[d] = float(value)
    return out


def uses_head(routing: Mapping[str, float]) -> bool:
    return any(b > 0 for b in routing.values())


def is_default(routing: Mapping[str, float]) -> bool:
    """Head everywhere: the behaviour of checkpoints that have no routing."""
    return all(b == HEAD for b in routing.values())
