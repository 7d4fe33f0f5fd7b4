"""A gallery that outlives its model: ``clair-vec reindex`` (re-embed a collection with a new
model), ``compare`` (the gate before the switch) and ``alias`` (the switch: atomic, the service
follows it)."""

from __future__ import annotations

import argparse
import json
import sys

from clair_vec.cli.common import backend_args, backend_option_arg, backend_options, device_arg, int_range, require_model


def cmd_reindex(a: argparse.Namespace) -> None:
    require_model(a)
    from clair_vec.retrieval.reindex import reindex
    from clair_vec.retrieval.retriever import Retriever

    with Retriever(a.model, backend=a.backend, uri=a.uri, device=a.device, backend_options=backend_options(a)) as r:
        s = reindex(r.backend, a.source, r, a.target, labels=a.labels, batch_size=a.batch_size, precision=a.precision)
    print(json.dumps(s.as_dict()))


def cmd_compare(a: argparse.Namespace) -> None:
    from clair_vec.retrieval.compare import compare, format_table
    from clair_vec.store.plugins import get_backend

    with get_backend(a.backend, a.uri) as be:
        result = compare(be, a.old, a.new, a.queries, domain=a.domain, k=a.k, old_model=a.old_model, new_model=a.new_model,
                         fail_if_worse=a.fail_if_worse, device=a.device)  # fmt: skip
    print(json.dumps(result) if a.json else format_table(result))
    if result.get("verdict") == "worse":
        print(f"clair-vec: the new collection is worse ({result['reason']}): do not move the alias", file=sys.stderr)
        raise SystemExit(1)
    if result.get("verdict") == "not worse":
        print(f"clair-vec: the new collection is not worse ({result['reason']})", file=sys.stderr)


def cmd_alias(a: argparse.Namespace) -> None:
    from clair_vec.store.plugins import get_backend

    if a.action in ("set", "drop") and not a.name:
        raise ValueError(f"alias {a.action} needs the alias name: clair-vec alias {a.action} NAME" + (" COLLECTION" if a.action == "set" else ""))
    with get_backend(a.backend, a.uri) as be:
        if a.action == "set":
            if not a.collection:
                raise ValueError("alias set NAME COLLECTION: give the collection the alias should point to")
            before = be.aliases().get(a.name)
            be.set_alias(a.name, a.collection)
            print(f"alias {a.name!r} -> {a.collection!r}" + (f" (was {before!r})" if before else " (new)"))
        elif a.action == "drop":
            print(f"alias {a.name!r} dropped" if be.drop_alias(a.name) else f"no alias {a.name!r}")
        else:
            aliases = be.aliases()
            if a.json:
                print(json.dumps(aliases))
            for alias, collection in aliases.items() if not a.json else ():
                print(f"{alias} -> {collection}")


def add_commands(add) -> None:
    r = add("reindex", cmd_reindex, "re-embed every record of a collection with a new model into a new collection "
            "(resumable; the files are read again)")  # fmt: skip
    r.add_argument("--from", dest="source", required=True, metavar="OLD", help="collection (or alias) to read")
    r.add_argument("--to", dest="target", required=True, metavar="NEW", help="collection to write (created; resumed if it exists)")
    r.add_argument("--model", default=None, help="the new model's checkpoint directory (default: $CLAIR_VEC_MODEL)")
    device_arg(r)
    backend_args(r)
    backend_option_arg(r, "e.g. index_type=HNSW: the new collection is built with that index")
    r.add_argument("--labels", default=None, metavar="FILE", help="re-tag zero-shot over this vocabulary (default: no tags)")
    r.add_argument("--batch-size", type=int_range(1, 4096), default=None,
                   help="images per encode and write (default: 256 on a GPU, 64 on a CPU)")
    r.add_argument("--precision", choices=["fp32", "bf16", "fp16", "int8"], default=None,
                   help="precision of the CLIP forward for the new collection (default fp32; bf16/fp16 for speed on a GPU; int8, or bf16 where the CPU has it natively, on a CPU)")

    c = add("compare", cmd_compare, "the same queries against two collections, each with its own model: overlap, mAP, P")
    c.add_argument("old", help="the collection (or alias) serving now")
    c.add_argument("new", help="the candidate collection")
    c.add_argument("--queries", required=True, metavar="DIR", help="query images; DIR/<class>/<image> adds mAP@k and P@k")
    c.add_argument("--domain", required=True, help="domain of the query images (e.g. sketch)")
    c.add_argument("--k", type=int_range(1, 1000), default=10, help="cut-off of overlap, mAP and P")
    device_arg(c)
    backend_args(c)
    c.add_argument("--old-model", default=None, help="model of OLD (default: the one the collection recorded)")
    c.add_argument("--new-model", default=None, help="model of NEW (default: the one the collection recorded)")
    c.add_argument("--fail-if-worse", type=float, default=None, metavar="DELTA",
                   help="exit 1 when NEW's mAP@k is below OLD's by more than DELTA")  # fmt: skip
    c.add_argument("--json", action="store_true", help="print JSON instead of a table")

    al = add("alias", cmd_alias, "point a name at a collection (atomically), list or drop aliases")
    al.add_argument("action", choices=["set", "list", "drop"], help="set NAME COLLECTION | list | drop NAME")
    al.add_argument("name", nargs="?", default=None, help="the alias")
    al.add_argument("collection", nargs="?", default=None, help="the collection it points to (set)")
    backend_args(al)
    al.add_argument("--json", action="store_true", help="list as JSON")
