"""Bulk indexing on Ray Data: ``ray job submit -- python ray_jobs/index.py --model runs/clair --collection C DIR...``.

Streams end to end: files are listed and hashed on Ray tasks (no torch there), stored images are
skipped (a re-run after a crash resumes and never duplicates), and an actor pool of CLAIR models
encodes the rest. With a server --uri each actor writes its own batches; with an embedded store
one writer actor holds it. Progress goes to stderr (add -v for a line per batch).
"""

from __future__ import annotations

import argparse
import json
import logging
import os


def main(argv: list[str] | None = None) -> int:
    from clair_vec.cli.common import int_range
    from clair_vec.retrieval.indexing import BATCH_SIZES

    fmt = argparse.ArgumentDefaultsHelpFormatter
    p = argparse.ArgumentParser(description=__doc__, formatter_class=fmt)
    p.add_argument("--model", required=True, help="checkpoint directory from ray_jobs/train.py or clair-vec train")
    p.add_argument("--collection", required=True, help="collection to create or extend")
    p.add_argument("--domain", default=None, help="domain of the images (None: the model's gallery domain)")
    p.add_argument("--backend", default=None, help="milvus, qdrant or a plugin's name (None: milvus)")
    p.add_argument("--uri", default=None, help="server URL (parallel writers), or an embedded store path (one writer)")
    p.add_argument("--actors", type=int_range(1, 1024), default=1, help="encoding actors (one CPU or GPU each)")
    p.add_argument("--gpus", choices=["auto", "yes", "no"], default="auto", help="auto: one GPU per actor if the cluster has them")
    p.add_argument("--threads-per-actor", type=int_range(1, 256), default=1, help="torch threads in each actor")
    p.add_argument("--batch-size", type=int_range(*BATCH_SIZES), default=64, help="images per encode-and-write batch")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16", "int8"], default=None,
                   help="precision of the CLIP forward, recorded with the collection (None: the collection's, else fp32)")
    p.add_argument("--label-from-folder", action="store_true", help="store each image's folder name as its label")
    p.add_argument("--labels", default=None, metavar="FILE", help="label vocabulary file: tag each image zero-shot over it")
    p.add_argument("-v", "--verbose", action="store_true", help="log a progress line per batch")
    p.add_argument("--from-collection", default=None, metavar="OLD",
                   help="re-embed the files this collection's records name (their labels kept) instead of folders")
    p.add_argument("images", nargs="*", help="image files or folders; http(s):// URLs, s3://bucket/prefix, webdataset shards "
                                             "(shard-{0000..0099}.tar, local or remote), parquet files of images")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from clair_vec.retrieval.bulk_index import ray_index
    from clair_vec.retrieval.vocabulary import read_labels

    try:
        labels = read_labels(args.labels) if args.labels else None
        s = ray_index(args.collection, args.images, model_dir=args.model, domain=args.domain, backend=args.backend,
                      uri=args.uri, actors=args.actors, batch_size=args.batch_size, label_from_folder=args.label_from_folder,
                      labels=labels, gpus=args.gpus, threads_per_actor=args.threads_per_actor,
                      from_collection=args.from_collection, precision=args.precision)  # fmt: skip
    except (Exception, KeyboardInterrupt) as exc:  # noqa: BLE001 - Ray wraps a worker's error in pages of its own
        from clair_vec.ray_runtime import report_job_failure

        return report_job_failure(exc, "index.py", args.verbose)
    print(json.dumps(s.as_dict()))
    return 0


if __name__ == "__main__":
    from clair_vec.ray_runtime import exit_process, leave_through_exit_process

    leave_through_exit_process()
    exit_process(main())  # a Ray driver ran here: see clair_vec.ray_runtime
