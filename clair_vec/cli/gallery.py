"""``clair-vec index`` and ``search``: writing a gallery and querying it."""

from __future__ import annotations

import argparse
import json

from clair_vec.cli.common import MAX_TOP_K, backend_args, filters, int_range, model_arg
from clair_vec.retrieval.indexing import BATCH_SIZES


def cmd_index(a: argparse.Namespace) -> None:
    from clair_vec.retrieval.retriever import Retriever

    with Retriever(a.model, backend=a.backend, uri=a.uri) as r:
        s = r.index(a.collection, a.images, domain=a.domain, label_from_folder=a.label_from_folder, labels=a.labels,
                    prune_missing=a.prune, batch_size=a.batch_size)  # fmt: skip
    print(json.dumps(s.as_dict()))


def cmd_search(a: argparse.Namespace) -> None:
    from clair_vec.retrieval.retriever import Retriever

    with Retriever(a.model, backend=a.backend, uri=a.uri) as r:
        hits = r.search(a.collection, a.images, domain=a.domain, top_k=a.top_k, filter=filters(a.filter))
    for query, row in zip(a.images, hits, strict=True):
        print(json.dumps({"query": query, "hits": [{"id": h.id, "score": round(h.score, 5), **h.payload} for h in row]}))


def add_commands(add) -> None:
    ix = add("index", cmd_index, "embed images into a collection (creating it), skipping what is stored")
    model_arg(ix)
    ix.add_argument("--collection", required=True, help="collection name: letters, digits, underscores")
    ix.add_argument("--domain", default=None, help="domain of the images (None: the model's gallery domain)")
    ix.add_argument("images", nargs="+", help="image files or folders (searched recursively)")
    backend_args(ix)
    ix.add_argument("--label-from-folder", action="store_true", help="store each image's folder name as its label")
    ix.add_argument("--labels", default=None, metavar="FILE",
                    help="label vocabulary, one a line: tag each image zero-shot over it (None: store no tag)")
    ix.add_argument("--prune", action="store_true", help="then remove records of files under these folders that no longer exist")
    ix.add_argument("--batch-size", type=int_range(*BATCH_SIZES), default=64, help="images per write")

    s = add("search", cmd_search, "query a collection with images of any domain; prints one JSON line per query")
    model_arg(s)
    s.add_argument("--collection", required=True, help="collection to search")
    s.add_argument("--domain", required=True, help="domain of the query images (e.g. sketch)")
    s.add_argument("images", nargs="+", help="query image files")
    backend_args(s)
    s.add_argument("--top-k", type=int_range(1, MAX_TOP_K), default=10, help="hits per query")
    s.add_argument("--filter", action="append", metavar="KEY=VALUE",
                   help="domain/label/path/pseudo_label=VALUE; repeat a key for OR, different keys AND")
