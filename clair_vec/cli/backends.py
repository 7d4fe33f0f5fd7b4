"""``clair-vec backends``: the installed backend plugins, and the ones that failed to load."""

from __future__ import annotations

import argparse
import json


def cmd_backends(a: argparse.Namespace) -> None:
    from clair_vec.store.plugins import plugins

    found = plugins()
    if a.json:
        print(json.dumps([vars(p) for p in found], indent=2))
        return
    rows = [("BACKEND", "PLUGIN", "DISTRIBUTION", "VERSION", "HOOKS")]
    for p in found:
        if p.loaded:
            for name in p.backends or ["-"]:
                rows.append((name, p.name, p.distribution or f"({p.source})", p.version or "-", ", ".join(p.hooks)))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:4], widths, strict=True)) + "  " + r[4])
    broken = [p for p in found if not p.loaded]
    if broken:
        print("\nplugins that failed to load (their backends are unavailable; the others work):")
        for p in broken:
            where = f"{p.distribution} {p.version}" if p.distribution else p.source
            print(f"  {p.name} ({where}): {p.error}")


def add_commands(add) -> None:
    b = add("backends", cmd_backends, "list backend plugins: distribution, version, hooks, and any that failed to load")
    b.add_argument("--json", action="store_true", help="print JSON instead of a table")
