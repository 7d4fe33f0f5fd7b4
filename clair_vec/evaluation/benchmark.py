"""``clair-vec benchmark run NAME``: train on a protocol's seen classes, evaluate on its unseen
ones, and put raw CLIP beside CLAIR in the protocol's own metrics (:mod:`.protocols`).

The run writes ``OUT/model`` (the trained model, as ``clair-vec train`` writes it) and
``OUT/results.json`` (everything ``clair-vec evaluate`` measures, plus the protocol), which
``clair-vec report OUT/results.json --out DIR`` turns into the HTML report and its charts.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from clair_vec.errors import DatasetError
from clair_vec.evaluation.protocols import PROTOCOLS, get_protocol, protocol_split
from clair_vec.evaluation.report import finite
from clair_vec.method.config import ClairConfig

RESULTS = "results.json"


def protocol_rows() -> list[dict[str, Any]]:
    """What ``benchmark list`` prints: each protocol with its class counts, domains and metrics."""
    rows = []
    for p in PROTOCOLS.values():
        counts = {part: len(p.classes(part)) for part in ("seen", *(["val"] if p.has_validation else []), "unseen")}
        rows.append({"name": p.name, "title": p.title, "classes": counts, "gallery": p.gallery, "queries": list(p.queries),
                     "metrics": list(p.metrics)})  # fmt: skip
    return rows


def run_benchmark(name: str, data: str | Path, config: ClairConfig, *, out: str | Path, val_fraction: float = 0.3,
                  cache_dir: str | Path | None = None, progress: bool = True, device: str | None = None) -> dict[str, Any]:  # fmt: skip
    """Train and evaluate one protocol; the result is also written to ``OUT/results.json``."""
    from clair_vec.evaluation.zero_shot import evaluate
    from clair_vec.training.job import check_output, train_local

    check_output(Path(out) / "model", data, cache_dir=cache_dir)  # before the hour of training, not after
    protocol = get_protocol(name)
    config = config.replace(pivot_domain=protocol.gallery)
    split = protocol_split(protocol, data, config.seed)  # a missing folder or class fails here, before any work
    model = train_local(data, config, split=split, val_fraction=val_fraction, cache_dir=cache_dir, progress=progress,
                        device=device)  # fmt: skip
    out = Path(out)
    model_dir = model.save(out / "model")
    result = evaluate(model_dir, data, query_domains=list(protocol.queries), k=200, device=device)
    result["protocol"] = {"name": protocol.name, "title": protocol.title, "metrics": list(protocol.metrics),
                          "seen_classes": len(split.train.classes), "unseen_classes": len(split.unseen.classes)}  # fmt: skip
    path = out / RESULTS
    tmp = path.with_name(f".{RESULTS}.tmp")
    tmp.write_text(json.dumps(finite(result), indent=1, default=str, allow_nan=False))
    os.replace(tmp, path)  # a run killed while writing leaves the last complete file, or none
    return result


_ROW = {"query": str, "gallery": str, "classes": list, "queries": int, "gallery_size": int, "raw_clip": dict, "model": dict}
_METRICS = ("mAP@all", "P@100")  # and mAP@k, P@k of the file's k


def read_results(path: str | Path) -> dict[str, Any]:
    """A results.json, checked to hold what the report draws; one line naming the first problem."""
    path = Path(path)

    def bad(why: str) -> DatasetError:
        return DatasetError(f"{path} is not a results file ({why}); give the results.json that `clair-vec benchmark run` wrote")

    try:
        result = json.loads(path.read_bytes())
    except UnicodeDecodeError:
        raise bad("not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise bad(f"not JSON: {exc.msg} at line {exc.lineno}") from None
    except (ValueError, RecursionError) as exc:  # a number of thousands of digits, arrays nested past Python's stack
        raise bad(f"not JSON this reader takes: {str(exc).splitlines()[0][:120]}") from None
    if not isinstance(result, dict):
        raise bad("not a JSON object")
    for key, kind in (("model", str), ("classes_from", str), ("k", int), ("rows", list), ("samples", dict)):
        if not isinstance(result.get(key), kind):
            raise bad(f"field {key!r} is missing or not a {kind.__name__}")
    metrics = (*_METRICS, f"mAP@{result['k']}", f"P@{result['k']}")
    for i, row in enumerate(result["rows"]):
        if not isinstance(row, dict):
            raise bad(f"row {i} is not an object")
        for key, kind in _ROW.items():
            if not isinstance(row.get(key), kind):
                raise bad(f"row {i}: field {key!r} is missing or not a {kind.__name__}")
        for who in ("raw_clip", "model"):
            missing = [m for m in metrics if not isinstance(row[who].get(m), (int, float))]
            if missing:
                raise bad(f"row {i}: {who} lacks {missing}")
    for domain, samples in result["samples"].items():
        ok = isinstance(samples, list) and all(
            isinstance(s, dict) and isinstance(s.get("query"), str) and isinstance(s.get("label"), str)
            and isinstance(s.get("hits"), list)
            and all(isinstance(h, dict) and isinstance(h.get("path"), str) and isinstance(h.get("label"), str) for h in s["hits"])
            for s in samples)  # fmt: skip
        if not ok:
            raise bad(f"samples of {domain!r} are not a list of queries with their hits")
    return result


def benchmark_table(result: dict[str, Any]) -> str:
    """Raw CLIP beside CLAIR, per query domain, in the protocol's metrics."""
    metrics = result["protocol"]["metrics"]
    head = ["query → gallery", "queries"]
    for m in metrics:
        head += [f"{m} raw CLIP", "CLAIR", "change"]
    body = []
    for r in result["rows"]:
        row = [f"{r['query']} → {r['gallery']}", str(r["queries"])]
        for m in metrics:
            raw, mod = r["raw_clip"][m], r["model"][m]
            row += [f"{raw:.3f}", f"{mod:.3f}", f"{mod - raw:+.3f}"]
        body.append(row)
    widths = [max(len(x[i]) for x in (head, *body)) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(x, widths, strict=True)))
             for x in (head, *body)]  # fmt: skip
    lines.insert(1, "-" * len(lines[0]))
    p = result["protocol"]
    shipped = result["rows"][0]["shipped"] if result["rows"] else "?"
    lines.insert(0, f"{p['name']}: {p['title']}; {p['seen_classes']} seen / {p['unseen_classes']} unseen classes")
    lines.append(f"shipped: {shipped}; CLAIR is the model as shipped (raw CLIP where the selection kept it)")
    return "\n".join(lines)
