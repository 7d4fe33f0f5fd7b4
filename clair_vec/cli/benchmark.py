"""``clair-vec benchmark list|run`` and ``clair-vec report``: the paper's protocols in one command."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from clair_vec.cli.common import Formatter
from clair_vec.errors import DatasetError


def cmd_list(a: argparse.Namespace) -> None:
    from clair_vec.evaluation.benchmark import protocol_rows

    rows = protocol_rows()
    if a.json:
        for row in rows:
            print(json.dumps(row))
        return
    for r in rows:
        counts = " / ".join(f"{n} {part}" for part, n in r["classes"].items())
        print(f"{r['name']:<15} {counts:<30} {'+'.join(r['queries'])} → {r['gallery']}  {', '.join(r['metrics'])}")
        print(f"{'':<15} {r['title']}")


def cmd_run(a: argparse.Namespace) -> None:
    from clair_vec.cli.train import _train_config
    from clair_vec.evaluation.benchmark import benchmark_table, run_benchmark
    from clair_vec.method.config import TRAINING_FLAGS

    a.pivot = "photo"  # replaced by the protocol's gallery domain
    flags = {**TRAINING_FLAGS, "pivot_domain": "the protocol's gallery domain (clair-vec benchmark list names it)"}
    result = run_benchmark(a.name, a.data, _train_config(a, flags), out=a.out, val_fraction=a.val_fraction, cache_dir=a.cache_dir,
                           progress=not a.json, device=a.device)  # fmt: skip
    if a.json:
        print(json.dumps({"protocol": result["protocol"], "rows": result["rows"], "shipped": result["record"].get("shipped")}))
    else:
        print(benchmark_table(result))
        print(f"model and results in {a.out}; `clair-vec report {Path(a.out) / 'results.json'} --out DIR` draws them")


def cmd_report(a: argparse.Namespace) -> None:
    from clair_vec.evaluation.benchmark import read_results
    from clair_vec.evaluation.report import write_report
    from clair_vec.extras import require

    require("report", "matplotlib", needed_for="clair-vec report")
    result = read_results(a.results)
    # drawn into its own folder, the results.json it was drawn from stays as it is (with its training record)
    beside = Path(a.out, "results.json").resolve() == Path(a.results).resolve()
    try:
        out = write_report(result, a.out, write_results=not beside)
    except (KeyError, TypeError, ValueError, OverflowError, AttributeError, IndexError) as exc:
        # read_results checks what every report needs; an edited file can still hold what drawing chokes on
        raise DatasetError(f"{a.results} is not a results file ({type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}); "
                           "give the results.json that `clair-vec benchmark run` wrote") from None  # fmt: skip
    print(f"report written to {out}", file=sys.stderr)


def add_commands(add) -> None:
    from clair_vec.cli.train import training_args

    b = add("benchmark", None, "the zero-shot protocols of the paper and its peers: list them, or run one")
    sub = b.add_subparsers(dest="benchmark_command", required=True, metavar="ACTION")
    ls = sub.add_parser("list", help="each protocol with its class counts", formatter_class=Formatter)
    ls.set_defaults(func=cmd_list)
    ls.add_argument("--json", action="store_true", help="one JSON object a protocol")
    r = sub.add_parser("run", help="train on a protocol's seen classes, score raw CLIP and CLAIR on its unseen ones",
                       formatter_class=Formatter)  # fmt: skip
    r.set_defaults(func=cmd_run)
    r.add_argument("name", help="sketchy-split1, sketchy-split2, tuberlin, quickdraw or domainnet")
    r.add_argument("--data", required=True, help="the dataset as ROOT/<domain>/<class>/<image> (clair-vec benchmark list "
                                                 "names each protocol's domains)")  # fmt: skip
    r.add_argument("--out", required=True, help="folder for the model and results.json")
    training_args(r, clip_model="ViT-B-32", clip_pretrained="openai", epochs=60, batch_size=256)
    r.add_argument("--val-fraction", type=float, default=0.3, help="share of seen classes each selection fold holds out")
    r.add_argument("--cache-dir", default=None, help="reuse CLIP features across runs")
    r.add_argument("--set", action="append", metavar="FIELD=VALUE", help="any ClairConfig field")
    r.add_argument("--json", action="store_true", help="print the result as one JSON object")

    rep = add("report", cmd_report, "draw a benchmark's results.json as an HTML report with its charts")
    rep.add_argument("results", help="results.json written by clair-vec benchmark run")
    rep.add_argument("--out", required=True, help="folder for index.html and its images")
