"""``clair-vec evaluate``: how good a model is on the classes it never saw."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from clair_vec.cli.common import device_arg, int_range, model_arg
from clair_vec.errors import ClairVecError
from clair_vec.extras import require


def cmd_evaluate(a: argparse.Namespace) -> None:
    from clair_vec.evaluation.zero_shot import evaluate

    if a.report:
        require("report", "matplotlib", needed_for="clair-vec evaluate --report")
        _check_report_folder(Path(a.report), Path(a.data), Path(a.model))

    result = evaluate(a.model, a.data, query_domains=a.query_domain, k=a.k, samples=a.samples, seed=a.seed, device=a.device)
    if a.json:
        for row in result["rows"]:
            print(json.dumps(row))
    else:
        print(results_table(result))
    if a.report:  # after the results are out: a report the disk refuses does not take them with it
        from clair_vec.evaluation.report import write_report

        sys.stdout.flush()
        print(f"report written to {write_report(result, a.report)}", file=sys.stderr)


def _check_report_folder(report: Path, data: Path, model: Path) -> None:
    """Before the evaluation runs: a report folder that is a file, or that lies inside the dataset
    (the next training would read it as a domain) or the model folder, is refused."""
    from clair_vec.evaluation.report import check_report_folder

    check_report_folder(report)
    r = report.resolve()
    for given, what in ((data, "--data"), (model, "--model")):
        if given.is_dir() and (r == given.resolve() or given.resolve() in r.parents):
            raise ClairVecError(f"--report {report} is inside {what} {given}: "
                                + ("the next training would read its images as a domain of the dataset; "
                                   if what == "--data" else "saving a model replaces that folder and would delete it; ")
                                + "write the report elsewhere")  # fmt: skip


def results_table(result: dict) -> str:
    """The rows as a plain-text table a person reads: raw CLIP against the shipped model per query domain."""
    k = result["k"]
    head = ("query → gallery", "queries", f"mAP@{k} raw CLIP", "model", "change", f"P@{k} raw CLIP", "model", "chance")
    body = []
    for r in result["rows"]:
        raw, mod = r["raw_clip"], r["model"]
        change = mod[f"mAP@{k}"] - raw[f"mAP@{k}"]
        body.append((f"{r['query']} → {r['gallery']}", str(r["queries"]), f"{raw[f'mAP@{k}']:.3f}", f"{mod[f'mAP@{k}']:.3f}",
                     f"{change:+.3f}", f"{raw[f'P@{k}']:.3f}", f"{mod[f'P@{k}']:.3f}", f"{r.get('chance', float('nan')):.3f}"))  # fmt: skip
    widths = [max(len(row[i]) for row in (head, *body)) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
             for row in (head, *body)]  # fmt: skip
    lines.insert(1, "-" * len(lines[0]))
    shipped = result["rows"][0]["shipped"] if result["rows"] else "?"
    lines.append(f"model {result['model']} (shipped: {shipped}); unseen classes from {result['classes_from']}: "
                 f"{', '.join(result['rows'][0]['classes']) if result['rows'] else '-'}")  # fmt: skip
    worse = [r["query"] for r in result["rows"] if r["model"][f"mAP@{k}"] < r["raw_clip"][f"mAP@{k}"] - 0.005]
    if worse:
        lines.append(f"the model ranks worse than raw CLIP for {', '.join(worse)} queries on these unseen classes: "
                     "for those domains raw CLIP is the better choice")  # fmt: skip
    return "\n".join(lines)


def add_commands(add) -> None:
    e = add("evaluate", cmd_evaluate, "mAP/Prec of raw CLIP vs the model on the zero-shot classes it held out")
    model_arg(e, required=True)
    device_arg(e)
    e.add_argument("--data", required=True, help="the dataset root the model was trained from")
    e.add_argument("--query-domain", action="append", help="query domain (repeatable; default: every non-gallery domain)")
    e.add_argument("--k", type=int_range(1, 1_000_000), default=200, help="cut-off of mAP@k and P@k")
    e.add_argument("--report", default=None, metavar="DIR", help="also write a self-contained HTML report to DIR")
    e.add_argument("--samples", type=int_range(0, 1000), default=6, help="sample queries per domain shown in the report")
    e.add_argument("--seed", type=int, default=0, help="seeds the report's choice of sample queries")
    e.add_argument("--json", action="store_true", help="print one JSON line per query domain instead of the table")
