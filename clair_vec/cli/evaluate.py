"""``clair-vec evaluate``: how good a model is on the classes it never saw."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from clair_vec.cli.common import model_arg


def cmd_evaluate(a: argparse.Namespace) -> None:
    from clair_vec.evaluation.zero_shot import evaluate

    result = evaluate(a.model, a.data, query_domains=a.query_domain, k=a.k, report_dir=a.report, samples=a.samples, seed=a.seed)
    for row in result["rows"]:
        print(json.dumps(row))
    if a.report:
        print(f"report written to {Path(a.report) / 'index.html'}", file=sys.stderr)


def add_commands(add) -> None:
    e = add("evaluate", cmd_evaluate, "mAP/Prec of raw CLIP vs the model on the zero-shot classes it held out")
    model_arg(e, required=True)
    e.add_argument("--data", required=True, help="the dataset root the model was trained from")
    e.add_argument("--query-domain", action="append", help="query domain (repeatable; None: every non-gallery domain)")
    e.add_argument("--k", type=int, default=200, help="cut-off of mAP@k and P@k")
    e.add_argument("--report", default=None, metavar="DIR", help="also write a self-contained HTML report to DIR")
    e.add_argument("--samples", type=int, default=6, help="sample queries per domain shown in the report")
    e.add_argument("--seed", type=int, default=0, help="seeds the report's choice of sample queries")
