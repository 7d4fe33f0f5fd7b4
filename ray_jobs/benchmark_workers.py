"""Training throughput (samples/s) of 1 vs N Ray Train workers on the same data and config.

    python ray_jobs/benchmark_workers.py --data clair_demo/data --clip-model clair-tiny \
        --clip-pretrained clair_demo/foundation/clair-tiny-bootstrap.pt --workers 1 2

Samples/s counts the images each epoch trains on (all workers together) over the epoch's
training time; the first epoch is reported separately (warm-up). Speed only: no test asserts it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--clip-model", default="clair-tiny")
    p.add_argument("--clip-pretrained", default="none")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=128)
    a = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("CLAIR_VEC_PROGRESS", "0")
    from clair_vec.method.config import ClairConfig
    from clair_vec.training.ray_train import run_training

    cfg = ClairConfig(clip_model=a.clip_model, clip_pretrained=None if a.clip_pretrained == "none" else a.clip_pretrained,
                      epochs=a.epochs, batch_size=a.batch_size)  # fmt: skip
    with tempfile.TemporaryDirectory() as store:
        for n in a.workers:
            t0 = time.perf_counter()
            r = run_training(a.data, out=f"{store}/m{n}", config=cfg, storage_path=store, name=f"bench{n}", workers=n,
                             gpus="no", val_fraction=0.0)  # fmt: skip
            wall = time.perf_counter() - t0
            per_epoch = [h["seconds"] for h in r.history]
            samples = r.metrics["samples_per_s"] * per_epoch[-1]  # images per epoch, all workers
            steady = [samples / s for s in per_epoch[1:]] or [samples / per_epoch[0]]
            print(json.dumps({"workers": n, "samples_per_epoch": round(samples), "first_epoch_samples_per_s": round(samples / per_epoch[0], 1),
                              "samples_per_s": round(statistics.median(steady), 1), "wall_s_incl_startup": round(wall, 1)}), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
