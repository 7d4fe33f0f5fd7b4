"""``clair-vec backends``: the installed backend plugins, and the ones that failed to load;
``clair-vec backends --check NAME --uri URI``: the backend conformance suite against a deployment."""

from __future__ import annotations

import argparse
import json
import sys

from clair_vec.errors import ClairVecError
from clair_vec.extras import require


def cmd_backends(a: argparse.Namespace) -> int:
    if a.check:
        return cmd_check(a)
    if a.uri or a.option or a.wrong_credential or a.promises:
        raise ClairVecError("--uri, --option, --wrong-credential and -k go with --check NAME")
    from clair_vec.store.plugins import plugins

    found = plugins()
    if a.json:
        print(json.dumps([{k: v for k, v in vars(p).items() if k != "key"} for p in found], indent=2))
        return
    rows = [("BACKEND", "PLUGIN", "DISTRIBUTION", "VERSION", "HOOKS")]
    for p in found:
        if p.loaded:
            for name in p.backends or ["-"]:
                rows.append((name, p.name, p.distribution or f"({p.source})", p.version or "-", ", ".join(p.hooks)))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:4], widths, strict=True)) + "  " + r[4])
    from clair_vec.store.plugins import clashes

    for name, who in clashes().items():
        print(f"\nbackend {name!r} is unavailable: {' and '.join(who)} both register it; uninstall one")
    broken = [p for p in found if not p.loaded]
    if broken:
        print("\nplugins that failed to load (their backends are unavailable; the others work):")
        for p in broken:
            where = f"{p.distribution} {p.version}" if p.distribution else p.source
            print(f"  {p.name} ({where}): {p.error}")
    return 0


def cmd_check(a: argparse.Namespace) -> int:
    """Exit 0 when every promise holds, 1 with the broken ones listed, 2 (an error) on bad arguments
    or a deployment that cannot even be opened."""
    require("test", "pytest", needed_for="clair-vec backends --check")
    from clair_vec.store.deployment_check import Target, format_report, parse_options, run_check

    if not a.uri:
        raise ClairVecError("--check needs --uri: the server URL, or the path of an embedded store, to check")
    target = Target(a.check, a.uri, parse_options(a.option),
                    parse_options(a.wrong_credential) if a.wrong_credential else None,
                    fresh_options=parse_options(a.fresh_option) if a.fresh_option else None,
                    unreachable_uri=a.unreachable_uri)  # fmt: skip
    print(f"checking backend {a.check!r} against the conformance suite (collections named conformance_*; all dropped "
          "afterwards)...", file=sys.stderr, flush=True)  # fmt: skip
    report = run_check(target, select=a.promises)
    print(format_report(report))
    return 0 if report.ok else 1


def add_commands(add) -> None:
    b = add("backends", cmd_backends, "list backend plugins (distribution, version, hooks, and any that failed to load), or "
            "check a deployment against the backend contract with --check")  # fmt: skip
    b.add_argument("--json", action="store_true", help="print JSON instead of a table")
    b.add_argument("--check", metavar="NAME", help="run the backend conformance suite against plugin NAME at --uri (a live "
                   "server or an embedded store path): exit 0 when every promise holds, 1 listing the broken ones; "
                   "it creates collections named conformance_* and drops them all")  # fmt: skip
    b.add_argument("--uri", help="with --check: the server URL or store path to check")
    b.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="with --check: a backend option (repeatable), e.g. timeout=5 or db_name=staging; credentials "
                   "come from the environment as usual (e.g. MILVUS_TOKEN), which keeps them out of the process list")  # fmt: skip
    b.add_argument("--wrong-credential", action="append", default=[], metavar="KEY=VALUE",
                   help="with --check: options with credentials the server must refuse (e.g. token=nobody:wrong), to "
                   "check that refused credentials fail at once and say so")  # fmt: skip
    b.add_argument("--fresh-option", action="append", default=[], metavar="KEY=VALUE",
                   help="with --check: options that open an EMPTY namespace you made for the check (e.g. "
                   "db_name=check_empty), to check that opening the backend creates nothing there")  # fmt: skip
    b.add_argument("--unreachable-uri", metavar="URI",
                   help="with --check: a URI of this backend's kind where nothing listens, to check that a refused "
                   "connection fails at once (default: the --uri host on a free loopback port, for http(s) URIs)")  # fmt: skip
    b.add_argument("-k", dest="promises", metavar="EXPR", help="with --check: only the promises whose test name matches "
                   "this pytest -k expression (e.g. 'alias or vectors')")  # fmt: skip
