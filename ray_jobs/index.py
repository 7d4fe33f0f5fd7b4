"""Bulk indexing on Ray Data: ``ray job submit -- python ray_jobs/index.py --model runs/clair --collection C DIR...``.

Hashes images on tasks, skips what the collection already holds (a re-run resumes), encodes the
rest on an actor pool of CLAIR models, and writes batches through the backend plugin.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", required=True, help="checkpoint directory from ray_jobs/train.py")
    p.add_argument("--collection", required=True)
    p.add_argument("--domain", default=None, help="domain of the images (default: the model's gallery domain)")
    p.add_argument("--backend", default=None)
    p.add_argument("--uri", default=None)
    p.add_argument("--actors", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--label-from-folder", action="store_true")
    p.add_argument("images", nargs="+", help="image files or folders")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from clair_vec.data import image_files
    from clair_vec.distributed import ray_index
    from clair_vec.errors import ClairVecError

    paths: list[str] = []
    for item in args.images:
        p_ = Path(item)
        if p_.is_dir():
            paths += [str(f) for f in image_files(p_)]
        else:
            paths.append(str(p_))
    try:
        s = ray_index(args.collection, paths, model_dir=args.model, domain=args.domain, backend=args.backend, uri=args.uri,
                      actors=args.actors, batch_size=args.batch_size, label_from_folder=args.label_from_folder)  # fmt: skip
    except (ClairVecError, ValueError) as exc:
        print(f"index.py: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"collection": s.collection, "backend": s.backend, "indexed": s.indexed,
                      "already_present": s.already_present, "skipped": s.skipped}))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
