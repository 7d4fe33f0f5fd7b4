"""The schema of a model directory's ``clair.json``, checked before anything uses it (torch-free).

A model directory comes from disk, a shared drive, a colleague: a hand edit, a truncated copy or a
file from elsewhere must end in one clear :class:`CheckpointError` naming the directory, the file,
the field and what was expected, never in a ``KeyError`` three calls later. The parse itself is
bounded: the file is capped at ``MAX_META_BYTES`` and its nesting at ``MAX_DEPTH`` levels, checked
by a scan before ``json`` recurses (100,000 nested brackets would otherwise be a RecursionError).

The tensors of ``clair.pt`` are checked against this metadata in :mod:`.checkpoint_tensors`.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from clair_vec.errors import CheckpointError
from clair_vec.method.config import ClairConfig
from clair_vec.method.routing import check_routing

FORMAT_VERSION = 1
MAX_META_BYTES = 32 * 2**20  # the training record (history, histograms) of a long run is a few MB at most
MAX_DEPTH = 32  # clair.json nests 6 levels; anything much deeper was not written by clair_vec
MAX_DIM = 16_384
MAX_CLASSES = 1_000_000
_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')


def fail(path: str | Path, file: str, field: str | None, problem: str, expected: str) -> CheckpointError:
    """``model directory runs/m: clair.json field 'dim' is -3; expected a positive integer ...``"""
    where = f"{file} field {field!r}" if field else file
    return CheckpointError(f"model directory {path}: {where} {problem}; expected {expected}")


def shown(value: Any) -> str:
    """A short, safe rendering of a bad value for an error message: never the whole of a huge one."""
    if isinstance(value, (dict, list)):
        return f"a JSON {'object' if isinstance(value, dict) else 'array'} of {len(value)} items"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def nesting_depth(text: str, limit: int) -> int:
    """Deepest bracket nesting of JSON ``text`` (strings skipped), stopping once past ``limit``."""
    depth = deepest = 0
    for m in _TOKENS.finditer(text):
        tok = m.group()
        if tok in "[{":
            depth += 1
            deepest = max(deepest, depth)
            if deepest > limit:
                break
        elif tok in "]}":
            depth -= 1
    return deepest


def parse_meta(path: str | Path) -> dict[str, Any]:
    """``clair.json`` of ``path`` parsed under the size and nesting caps; an object, or CheckpointError."""
    meta_file = Path(path) / "clair.json"
    size = meta_file.stat().st_size
    if size > MAX_META_BYTES:
        raise fail(path, "clair.json", None, f"is {size:,} bytes", f"at most {MAX_META_BYTES:,} (clair_vec writes a few kB to MB)")
    try:
        text = meta_file.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise fail(path, "clair.json", None, f"is not UTF-8 text (byte {exc.start})", "the JSON file clair-vec train writes") from None
    depth = nesting_depth(text, MAX_DEPTH)
    if depth > MAX_DEPTH:
        raise fail(path, "clair.json", None, f"nests more than {MAX_DEPTH} levels deep", "the JSON file clair-vec train writes")
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as exc:
        raise fail(path, "clair.json", None, f"is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})",
                   "the JSON file clair-vec train writes; re-save the model or retrain") from None  # fmt: skip
    if not isinstance(meta, dict):
        raise fail(path, "clair.json", None, f"holds a JSON {type(meta).__name__}", "a JSON object with model_id, dim, classes, ...")
    return meta


def _strings(value: Any, *, allow_empty_list: bool = False) -> bool:
    return isinstance(value, list) and (allow_empty_list or bool(value)) and all(isinstance(v, str) and v for v in value)


def _config_types(data: dict[str, Any]) -> tuple[str, Any, str] | None:
    """The first config field whose JSON type differs from ClairConfig's: (field, value, expected)."""
    for f in dataclasses.fields(ClairConfig):
        if f.name not in data:
            continue
        value = data[f.name]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        if value is None and f.name in ("clip_pretrained", "head_hidden"):
            continue
        want = int if f.name == "head_hidden" else type(default)
        if want is bool:
            ok = isinstance(value, bool)
        elif want is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        else:
            ok = isinstance(value, want) and not isinstance(value, bool)
        if not ok:
            return f.name, value, "a number" if want is float else f"a {want.__name__} (JSON {_JSON[want]})"
    return None


_JSON = {int: "integer", str: "string", list: "array", dict: "object", bool: "true/false"}


def check_meta(meta: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """Every field clair_vec reads from ``clair.json``, checked; returns ``meta`` unchanged."""
    def need(field: str, ok: Callable[[Any], bool], expected: str) -> Any:
        if field not in meta:
            raise fail(path, "clair.json", None, f"has no field {field!r}", f"{field}: {expected}")
        if not ok(meta[field]):
            raise fail(path, "clair.json", field, f"is {shown(meta[field])}", expected)
        return meta[field]

    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise fail(path, "clair.json", "format_version", f"is {shown(version)}",
                   f"{FORMAT_VERSION}, the format this clair_vec reads; retrain, or use the clair_vec that wrote it")  # fmt: skip
    need("model_id", lambda v: isinstance(v, str) and 0 < len(v) <= 200, "the model id string clair-vec train wrote")
    need("clip_model", lambda v: isinstance(v, str) and 0 < len(v) <= 200, "an open_clip architecture name, e.g. ViT-B-32")
    need("clip_pretrained", lambda v: v is None or isinstance(v, str) and 0 < len(v) <= 4096,
         "an open_clip pretrained tag, a weights file path, or null (weights in foundation.pt)")
    need("dim", lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 < v <= MAX_DIM,
         f"a positive integer (the embedding width, e.g. 512), at most {MAX_DIM}")
    classes = need("classes", lambda v: _strings(v) and len(v) <= MAX_CLASSES,
                   "a non-empty list of class names (the seen classes the model trained on)")
    if len(set(classes)) != len(classes):
        raise fail(path, "clair.json", "classes", "names a class twice", "each seen class once")
    domains = need("domains", lambda v: _strings(v) and len(v) <= 1000, "a non-empty list of domain names, e.g. [\"photo\", \"sketch\"]")
    if len(set(domains)) != len(domains):
        raise fail(path, "clair.json", "domains", "names a domain twice", "each domain once")
    need("pivot", lambda v: isinstance(v, str) and v in domains, f"the gallery domain, one of {sorted(domains)[:10]}")
    config = need("config", lambda v: isinstance(v, dict), "an object of ClairConfig fields")
    problem = _config_types(config)
    if problem:
        raise fail(path, "clair.json", f"config.{problem[0]}", f"is {shown(problem[1])}", problem[2])
    try:
        cfg = ClairConfig.from_dict(config)
    except (TypeError, ValueError) as exc:
        raise fail(path, "clair.json", "config", f"is not a valid ClairConfig ({exc})", "the config clair-vec train wrote") from None
    if cfg.pivot_domain != meta["pivot"]:
        raise fail(path, "clair.json", "config.pivot_domain", f"is {cfg.pivot_domain!r} but field 'pivot' is {meta['pivot']!r}",
                   "the same gallery domain in both")  # fmt: skip
    if meta.get("training") is not None and not isinstance(meta["training"], dict):
        raise fail(path, "clair.json", "training", f"is {shown(meta['training'])}", "an object (the training record) or null")
    record = meta.get("training") or {}
    for key in ("unseen_classes", "validation_classes", "seen_classes"):
        if key in record and not _strings(record[key], allow_empty_list=True):
            raise fail(path, "clair.json", f"training.{key}", f"is {shown(record[key])}", "a list of class names")
    for key in ("selection", "stats", "validation"):  # read by evaluate and its report
        if record.get(key) is not None and not isinstance(record[key], dict):
            raise fail(path, "clair.json", f"training.{key}", f"is {shown(record[key])}", "an object or null")
    if record.get("selection") and not isinstance(record["selection"].get("domains", {}), dict):
        raise fail(path, "clair.json", "training.selection.domains", f"is {shown(record['selection']['domains'])}",
                   "an object of query domains")  # fmt: skip
    if "split_seed" in record and (isinstance(record["split_seed"], bool) or not isinstance(record["split_seed"], int)):
        raise fail(path, "clair.json", "training.split_seed", f"is {shown(record['split_seed'])}", "an integer")
    if meta.get("routing") is not None:
        try:
            check_routing(meta["routing"], domains)
        except ValueError as exc:
            raise fail(path, "clair.json", "routing", str(exc).split("; expected ")[0],
                       str(exc).split("; expected ", 1)[-1]) from None  # fmt: skip
    return meta
