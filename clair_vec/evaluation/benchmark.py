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

from clair_vec.evaluation.protocols import PROTOCOLS, get_protocol, protocol_split
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
    from clair_vec.training.job import train_local

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
    tmp.write_text(json.dumps(result, indent=1, default=str))
    os.replace(tmp, path)  # a run killed while writing leaves the last complete file, or none
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
