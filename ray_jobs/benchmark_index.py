"""Indexing speed: one process (``clair_vec.index``) against Ray with 1 and 2 encoding actors.

    python ray_jobs/benchmark_index.py --clip-model ViT-B-32 --images 2000 --actors 1 2
    python ray_jobs/benchmark_index.py --model clair_demo/model --images 10000 --actors 2 --skip-single

Without ``--model`` a mapping-only model on randomly initialised CLIP weights of ``--clip-model``
is made (no weights needed; a real architecture's compute per image). Each configuration runs in
its own process on a fresh embedded store (Milvus Lite) over the same generated photos, so peak
memory is that run's own. Reported per run:

- ``cold_images_per_s``: from an unloaded model to the last write (single process: model loading
  included; Ray: actor start-up and model loading included, ``ray.init`` excluded);
- ``steady_images_per_s``: between the first and the last written batch, once models are loaded;
- ``ray_startup_s``; ``cpu_s_per_image``: the whole machine's busy time from /proc/stat over the
  run, so Ray's own processes count (run it on an idle machine); the 1-minute load average at the
  end; the driver's peak RSS. One torch thread per Ray actor.

Speed only: no test asserts on these numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def busy_seconds() -> float:
    """CPU seconds spent by every process on the machine so far (user + nice + system)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    return (int(fields[0]) + int(fields[1]) + int(fields[2])) / os.sysconf("SC_CLK_TCK")


class Marks:
    """Images written so far, with the time: the steady rate is taken between first and last batch."""

    def __init__(self) -> None:
        self.points: list[tuple[float, int]] = []

    def __call__(self, summary) -> None:
        self.points.append((time.perf_counter(), summary.indexed + summary.already_present + len(summary.skipped)))

    def steady(self) -> float:
        if len(self.points) < 2:
            return float("nan")
        (t0, n0), (t1, n1) = self.points[0], self.points[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else float("nan")


def one(mode: str, actors: int, model: str, gallery: str, store: str, batch_size: int) -> dict:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["CLAIR_VEC_PROGRESS"] = "0"
    startup, marks = 0.0, Marks()
    if mode == "single":
        from clair_vec import indexing
        from clair_vec.retrieval.retriever import Retriever

        original = indexing.log.info

        def mark(*args, **kwargs):  # index_sources logs one line per batch
            marks.points.append((time.perf_counter(), int(args[2])))
            original(*args, **kwargs)

        indexing.log.info = mark
        if actors:  # the same CPU budget as that many one-thread actors
            import torch

            torch.set_num_threads(actors)
        cpu0, t0 = busy_seconds(), time.perf_counter()
        r = Retriever(model, uri=store)
        s = r.index("bench", [gallery], batch_size=batch_size, progress=False)
        r.close()
    else:
        import ray

        from clair_vec.retrieval.bulk_index import ray_index

        t0 = time.perf_counter()
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        startup = time.perf_counter() - t0
        cpu0, t0 = busy_seconds(), time.perf_counter()
        s = ray_index("bench", [gallery], model_dir=model, uri=store, actors=actors, gpus="no", batch_size=batch_size,
                      progress=False, on_batch=marks)  # fmt: skip
        ray.shutdown()
    wall = time.perf_counter() - t0
    cpu = busy_seconds() - cpu0
    n = s.indexed
    return {"mode": mode, "actors": actors if mode == "ray" else "-",
            "torch_threads_each": 1 if mode == "ray" else (actors or os.cpu_count()), "images": n, "cold_images_per_s": round(n / wall, 1),
            "steady_images_per_s": round(marks.steady(), 1), "wall_s": round(wall, 1), "ray_startup_s": round(startup, 1),
            "cpu_s_per_image": round(cpu / max(n, 1), 4), "load_avg_1m": round(os.getloadavg()[0], 2),
            "driver_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="checkpoint directory (default: a random-weight --clip-model)")
    p.add_argument("--clip-model", default="ViT-B-32", help="architecture of the random-weight model")
    p.add_argument("--images", type=int, default=2000, help="generated photos to index")
    p.add_argument("--actors", type=int, nargs="*", default=[1, 2], help="Ray actor counts to run (none: no Ray run)")
    p.add_argument("--batch-size", type=int, default=64, help="images per encode-and-write batch")
    p.add_argument("--skip-single", action="store_true", help="only the Ray runs")
    p.add_argument("--single-threads", type=int, nargs="+", default=[0, 1],
                   help="torch threads of the single-process runs (0: torch's default, one per core)")
    p.add_argument("--one", nargs=4, metavar=("MODE", "ACTORS", "GALLERY", "STORE"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.one:
        mode, actors, gallery, store = a.one
        print(json.dumps(one(mode, int(actors), a.model, gallery, store, a.batch_size)), flush=True)
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from clair_vec.datasets.shapes import make_shapes_dataset

    work = Path(tempfile.mkdtemp(prefix="clair-index-bench-"))
    try:
        from clair_vec.benchmarks.models import random_model

        model = a.model or random_model(a.clip_model, work / "model")
        gallery = make_shapes_dataset(work / "data", per_class=-(-a.images // 12), domains=("photo",), seed=7) / "photo"
        for f in sorted(gallery.rglob("*.png"))[a.images :]:
            f.unlink()
        runs = ([("single", t) for t in a.single_threads] if not a.skip_single else []) + [("ray", n) for n in a.actors]
        for mode, n in runs:
            store = work / f"{mode}{n}.db"
            out = subprocess.run([sys.executable, __file__, "--model", model, "--batch-size", str(a.batch_size), "--one", mode,
                                  str(n), str(gallery), str(store)], capture_output=True, text=True)  # fmt: skip
            if out.returncode != 0:
                raise SystemExit(out.stderr[-3000:])
            print(out.stdout.strip().splitlines()[-1], flush=True)
            shutil.rmtree(store, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
