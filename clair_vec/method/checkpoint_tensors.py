"""The tensors of ``clair.pt`` (and ``foundation.pt``) checked against the validated ``clair.json``.

Shapes follow from the metadata: the head's weights from ``dim`` and ``head_hidden``, one mapping
``W`` (dim x dim) and ``b`` (dim) per non-gallery domain, text embeddings (len(classes) x dim) per
domain, prompt context (domains x n_ctx x the CLIP text width), and optionally one centre (dim)
per domain. A file that holds CLIP weights, a
list, or tensors of other shapes ends in one :class:`CheckpointError` naming the file and the entry.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from clair_vec.errors import CheckpointError
from clair_vec.method.checkpoint_schema import MAX_DIM, fail, shown

STATE_KEYS = ("head", "head_hidden", "mapping", "text_embeddings", "prompts")


def _tensor(path: Path, name: str, value: Any, shape: tuple[int, ...], meaning: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise fail(path, "clair.pt", name, f"is {type(value).__name__} {shown(value)}", f"a tensor of shape {list(shape)} ({meaning})")
    if tuple(value.shape) != shape:
        raise fail(path, "clair.pt", name, f"has shape {list(value.shape)}", f"{list(shape)} ({meaning})")
    if not value.is_floating_point():
        raise fail(path, "clair.pt", name, f"has dtype {value.dtype}", "a floating-point tensor")
    if not bool(torch.isfinite(value).all()):
        raise fail(path, "clair.pt", name, "holds NaN or infinite values", "finite weights (retrain: the run diverged)")
    return value


def check_state(state: Any, meta: Mapping[str, Any], path: str | Path) -> dict[str, Any]:
    """Every entry of ``clair.pt`` that loading reads, checked against ``meta``; returns ``state``."""
    path = Path(path)
    if not isinstance(state, dict):
        raise fail(path, "clair.pt", None, f"holds a {type(state).__name__}", "the dictionary clair-vec train writes (head, mapping, ...)")
    if "head" not in state and any(isinstance(k, str) and k.startswith(("visual.", "positional_embedding", "token_embedding"))
                                   for k in state):  # fmt: skip
        raise fail(path, "clair.pt", None, "holds CLIP weights, not a CLAIR checkpoint",
                   "the clair.pt clair-vec train writes; CLIP weights go in --clip-pretrained (or foundation.pt)")  # fmt: skip
    missing = [k for k in STATE_KEYS if k not in state]
    if missing:
        raise fail(path, "clair.pt", None, f"has no entries {missing}", f"the entries {list(STATE_KEYS)}")
    dim, domains, pivot, n_classes = meta["dim"], meta["domains"], meta["pivot"], len(meta["classes"])
    hidden = state["head_hidden"]
    if isinstance(hidden, bool) or not isinstance(hidden, int) or not 0 < hidden <= MAX_DIM:
        raise fail(path, "clair.pt", "head_hidden", f"is {shown(hidden)}", f"a positive integer at most {MAX_DIM} (the head's hidden width)")
    head = state["head"]
    if not isinstance(head, dict):
        raise fail(path, "clair.pt", "head", f"is {type(head).__name__}", "the head's state dict")
    expected = {"mlp.0.weight": (hidden, dim), "mlp.0.bias": (hidden,), "mlp.2.weight": (dim, hidden), "mlp.2.bias": (dim,), "alpha": ()}
    if meta["config"].get("head_center", False):
        expected["offset"] = (dim,)
    if set(head) != set(expected):
        raise fail(path, "clair.pt", "head", f"has entries {sorted(map(str, head))[:8]}", f"{sorted(expected)} (dim {dim}, hidden {hidden})")
    for name, shape in expected.items():
        _tensor(path, f"head.{name}", head[name], shape, f"dim {dim}, hidden {hidden}")
    mapping = state["mapping"]
    if not isinstance(mapping, dict) or not isinstance(mapping.get("maps"), dict):
        raise fail(path, "clair.pt", "mapping", f"is {shown(mapping)}", "{'pivot': domain, 'maps': {domain: {'W', 'b'}}}")
    if mapping.get("pivot") != pivot:
        raise fail(path, "clair.pt", "mapping.pivot", f"is {shown(mapping.get('pivot'))}", f"{pivot!r}, the pivot in clair.json")
    want = sorted(d for d in domains if d != pivot)
    if sorted(map(str, mapping["maps"])) != want:
        raise fail(path, "clair.pt", "mapping.maps", f"has domains {sorted(map(str, mapping['maps']))}", f"{want} (clair.json's domains but the pivot)")
    for d, m in mapping["maps"].items():
        if not isinstance(m, dict) or set(m) != {"W", "b"}:
            raise fail(path, "clair.pt", f"mapping.maps.{d}", f"is {shown(m)}", "{'W': (dim, dim) tensor, 'b': (dim,) tensor}")
        _tensor(path, f"mapping.maps.{d}.W", m["W"], (dim, dim), f"the {d} -> {pivot} map, dim {dim}")
        _tensor(path, f"mapping.maps.{d}.b", m["b"], (dim,), f"the {d} -> {pivot} offset, dim {dim}")
    text = state["text_embeddings"]
    if not isinstance(text, dict) or sorted(map(str, text)) != sorted(domains):
        raise fail(path, "clair.pt", "text_embeddings", f"is {shown(text) if not isinstance(text, dict) else sorted(map(str, text))}",
                   f"one tensor per domain {sorted(domains)}")  # fmt: skip
    for d, t in text.items():
        _tensor(path, f"text_embeddings.{d}", t, (n_classes, dim), f"{n_classes} classes x dim {dim}")
    prompts = state["prompts"]
    if prompts is not None and (not isinstance(prompts, dict) or set(prompts) != {"ctx"}):
        raise fail(path, "clair.pt", "prompts", f"is {shown(prompts)}", "null or {'ctx': (domains, n_ctx, text width) tensor}")
    classes = state.get("classes")  # absent in checkpoints from before it was kept beside the text embeddings
    if isinstance(classes, list) and sorted(map(str, classes)) == sorted(meta["classes"]) and classes != list(meta["classes"]):
        # the rows of text_embeddings follow this order: reordered, "dog" would be searched with "cat"'s text
        # (a class renamed for display keeps its row, and stays allowed)
        raise fail(path, "clair.json", "classes", "lists the classes in another order than clair.pt was saved with",
                   "the order the two files were saved with (one of them was edited: restore it)")  # fmt: skip
    centers = state.get("centers")  # absent in checkpoints from before per-domain centring
    if centers is not None:
        if not isinstance(centers, dict) or not set(map(str, centers)) <= set(domains):
            raise fail(path, "clair.pt", "centers", f"is {shown(centers) if not isinstance(centers, dict) else sorted(map(str, centers))}",
                       f"null or one (dim,) tensor per domain among {sorted(domains)}")  # fmt: skip
        for d, c in centers.items():
            _tensor(path, f"centers.{d}", c, (dim,), f"the mean {d} embedding, dim {dim}")
    return state


def check_prompts(state: dict[str, Any], meta: Mapping[str, Any], text_width: int, path: str | Path) -> None:
    """The prompt context against the loaded CLIP's text width (known only once CLIP is loaded)."""
    if state["prompts"] is None:
        return
    shape = (len(meta["domains"]), int(meta["config"].get("n_ctx", 4)), text_width)
    _tensor(Path(path), "prompts.ctx", state["prompts"]["ctx"], shape, f"domains x n_ctx x the text width of {meta['clip_model']}")


def load_foundation_weights(model: torch.nn.Module, weights: Any, arch: str, path: str | Path) -> None:
    """``foundation.pt`` into the architecture ``clair.json`` names, or a CheckpointError."""
    if not isinstance(weights, dict):
        raise fail(path, "foundation.pt", None, f"holds a {type(weights).__name__}", f"the state dict of a {arch} CLIP")
    try:
        model.load_state_dict(weights)
    except (RuntimeError, KeyError, TypeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise CheckpointError(f"model directory {path}: foundation.pt does not fit the CLIP architecture {arch!r} named by "
                              f"clair.json field 'clip_model' ({first}); expected the weights clair-vec train saved with it") from None
