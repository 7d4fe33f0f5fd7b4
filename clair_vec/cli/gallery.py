"""``clair-vec index`` and ``search``: writing a gallery and querying it."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys

from clair_vec.cli.common import (
    MAX_TOP_K,
    backend_args,
    backend_option_arg,
    backend_options,
    device_arg,
    filters,
    int_range,
    model_arg,
    require_model,
)
from clair_vec.errors import ClairVecError
from clair_vec.retrieval.indexing import BATCH_SIZES
from clair_vec.store.ids import ID_PATTERN

_ID = re.compile(ID_PATTERN)


def cmd_index(a: argparse.Namespace) -> None:
    require_model(a)
    from clair_vec.retrieval.remote import read_list
    from clair_vec.retrieval.retriever import Retriever

    if a.column and not a.from_list:
        raise ClairVecError("--column names the column of a --from-list file: give --from-list FILE too")
    images = list(a.images) + [x for f in a.from_list or [] for x in read_list(f, column=a.column)]
    if not images:
        raise ClairVecError("nothing to index: give image files, folders, URLs, s3:// prefixes or shards, or --from-list FILE")
    with Retriever(a.model, backend=a.backend, uri=a.uri, device=a.device, backend_options=backend_options(a)) as r:
        s = r.index(a.collection, images, domain=a.domain, label_from_folder=a.label_from_folder, labels=a.labels,
                    prune_missing=a.prune, batch_size=a.batch_size, precision=a.precision)  # fmt: skip
    from clair_vec.store.redaction import scrub

    print(scrub(json.dumps(s.as_dict())))  # a reason may quote what a server said, a redirect's URL with it


#: queries of one ``search`` command encoded and answered together
SEARCH_SLICE = 64


def search_queries(a: argparse.Namespace) -> tuple[list, list]:
    """The queries a ``search`` command line asks for, and what to print as each one's ``query``.

    Images alone are one query each (the classic cross-domain search), a folder one per image in
    it. With ``--text``,
    ``--like`` or ``--unlike`` everything given forms one query: a sketch and a word, a liked
    hit minus an unliked one."""
    from clair_vec.retrieval.queries import Part, Query
    from clair_vec.retrieval.sources import printable

    if a.unlike and not (a.images or a.text or a.like):
        raise ClairVecError("--unlike says what to avoid: also give what to search for (images, --text or --like)")
    if not (a.images or a.text or a.like):
        raise ClairVecError("nothing to search with: give query images, --text TEXT or --like ID")
    image_unlikes = [u for u in a.unlike or [] if not _ID.fullmatch(u)]
    if (a.images or image_unlikes) and not a.domain:
        raise ClairVecError("--domain is required with query images: the domain they were drawn in (e.g. sketch)")
    options = {"top_k": a.top_k, "offset": a.offset, "min_score": a.min_score, "filter": filters(a.filter), "rerank": a.rerank}
    if not (a.text or a.like or a.unlike):
        from clair_vec.retrieval import remote
        from clair_vec.retrieval.sources import expand

        # a folder, shard or listing is one query per image in it, as the library's search takes it
        def single(arg: str) -> bool:  # one image file, as given (a local shard or parquet file is a listing)
            return os.path.isfile(arg) and not remote.is_source(arg)

        images: list = []  # (what to search with, what to print as its query)
        for arg in a.images:
            images += [(arg, printable(arg))] if single(arg) else [(s, s.name) for s in expand([arg])]
        if not images:
            raise ClairVecError(f"no query images in {', '.join(a.images)}: the folders hold no image files")
        return [Query.of(Part.image(s, a.domain), **options) for s, _ in images], [name for _, name in images]
    parts = [Part.image(i, a.domain) for i in a.images] + [Part.text(t, a.text_weight) for t in a.text or []]
    parts += [Part.like(i) for i in a.like or []]
    parts += [Part.unlike(u) if _ID.fullmatch(u) else Part.image(u, a.domain, -1.0) for u in a.unlike or []]
    shown = {k: [printable(x) for x in v] for k, v in (("images", a.images), ("text", a.text), ("like", a.like), ("unlike", a.unlike))
             if v}  # fmt: skip
    return [Query.of(*parts, **options)], [shown]


def cmd_search(a: argparse.Namespace) -> None:
    require_model(a)
    from clair_vec.retrieval.queries import empty_filter_note
    from clair_vec.retrieval.retriever import Retriever

    queries, shown = search_queries(a)
    found = False
    with Retriever(a.model, backend=a.backend, uri=a.uri, device=a.device, backend_options=backend_options(a)) as r:
        # a folder of queries runs a slice at a time, each printed as it is answered: its images are not all held at once
        for start in range(0, len(queries), SEARCH_SLICE):
            rows = r.run(a.collection, queries[start : start + SEARCH_SLICE])
            for query, row in zip(shown[start : start + SEARCH_SLICE], rows, strict=True):
                print(json.dumps({"query": query, "hits": [{"id": h.id, "score": round(h.score, 5), **h.payload} for h in row]}))
            found = found or any(rows)
        note = empty_filter_note(r, a.collection, queries[0].filter) if queries[0].filter and not found else None
    if note:
        print(f"clair-vec: note: {note}", file=sys.stderr)


def add_commands(add) -> None:
    ix = add("index", cmd_index, "embed images into a collection (creating it), skipping what is stored")
    model_arg(ix)
    device_arg(ix)
    ix.add_argument("--collection", required=True, help="collection name: letters, digits, underscores")
    ix.add_argument("--domain", default=None, help="domain of the images (default: the model's gallery domain)")
    ix.add_argument("images", nargs="*",
                    help="image files or folders (searched recursively), http(s):// URLs, s3://bucket/prefix, webdataset "
                         "shards (shard-{0000..0099}.tar, local or s3://) or parquet files of image bytes")
    ix.add_argument("--from-list", action="append", metavar="FILE",
                    help="index the URLs or paths listed in FILE: .txt one a line, .csv or .parquet by --column (repeatable)")
    ix.add_argument("--column", default=None, help="the column of a .csv/.parquet --from-list file that holds them (default: url)")
    backend_args(ix)
    backend_option_arg(ix, "e.g. index_type=HNSW for a new Milvus collection, or Qdrant Edge's index_threshold=20000")
    ix.add_argument("--label-from-folder", action="store_true", help="store each image's folder name as its label")
    ix.add_argument("--labels", default=None, metavar="FILE",
                    help="label vocabulary, one a line: tag each image zero-shot over it (default: store no tag)")
    ix.add_argument("--prune", action="store_true", help="then remove records of files under these folders that no longer exist")
    ix.add_argument("--batch-size", type=int_range(*BATCH_SIZES), default=None,
                    help="images per encode and write (default: 256 on a GPU, 64 on a CPU)")
    ix.add_argument("--precision", choices=["fp32", "bf16", "fp16", "int8"], default=None,
                    help="precision of the CLIP forward, recorded with the collection; its searches use the same "
                         "(default: the collection's, fp32 for a new one; bf16/fp16 for speed on a GPU; int8, or bf16 where the CPU has it natively, on a CPU)")

    s = add("search", cmd_search, "query a collection with images of any domain, text, or stored hits; "
            "prints one JSON line per query")  # fmt: skip
    model_arg(s)
    device_arg(s)
    s.add_argument("--collection", required=True, help="collection to search")
    s.add_argument("--domain", default=None, help="domain of the query images (e.g. sketch); required with images")
    s.add_argument("images", nargs="*", help="query image files: each its own query, or parts of one with --text/--like/--unlike")
    backend_args(s)
    backend_option_arg(s, "e.g. Milvus's search_params='{\"params\": {\"ef\": 128}}' or Qdrant Edge's hnsw_ef=128")
    s.add_argument("--text", action="append", metavar="TEXT", help="search with words too (repeatable), e.g. --text guitar")
    s.add_argument("--text-weight", type=float, default=1.0, help="weight of each --text against an image's 1")
    s.add_argument("--like", action="append", metavar="ID", help="more like this stored record (repeatable)")
    s.add_argument("--unlike", action="append", metavar="ID|IMAGE", help="less like this record or image (repeatable)")
    s.add_argument("--top-k", type=int_range(1, MAX_TOP_K), default=10, help="hits per query")
    s.add_argument("--offset", type=int_range(0, MAX_TOP_K), default=0, help="skip this many hits first (paging)")
    s.add_argument("--min-score", type=float, default=None, help="only hits with at least this cosine similarity (-1 to 1)")
    s.add_argument("--rerank", choices=["aqe"], default=None, help="re-query with the top hits (alpha query expansion)")
    s.add_argument("--filter", action="append", metavar="KEY=VALUE",
                   help="domain/label/path/pseudo_label=VALUE; repeat a key for OR, different keys AND")
