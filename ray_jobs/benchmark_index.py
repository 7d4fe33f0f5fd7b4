"""Indexing speed: one process (``clair_vec.index``) against Ray with 1 and 2 encoding actors.

    python ray_jobs/benchmark_index.py --model clair_demo/model --images 2000 --actors 1 2
    python ray_jobs/benchmark_index.py --model clair_demo/model --images 10000 --actors 2 --skip-single

Each configuration runs in its own process on a fresh embedded store (Milvus Lite) over the same
generated photos, so peak memory is that run's own. Reported per run: images/s excluding Ray
start-up, Ray start-up seconds, CPU-seconds per image (the whole machine's busy time from
/proc/stat over the run, so Ray's worker processes count too: run it on an idle machine), the
1-minute load average at the end, and the driver's peak RSS. One torch thread per actor.
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


def one(mode: str, actors: int, model: str, gallery: str, store: str) -> dict:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["CLAIR_VEC_PROGRESS"] = "0"
    startup = 0.0
    if mode == "single":
        from clair_vec.retriever import Retriever

        r = Retriever(model, uri=store)
        r.model.foundation.encode_images([])  # CLIP is loaded by Retriever; nothing else to warm
        cpu0, t0 = busy_seconds(), time.perf_counter()
        s = r.index("bench", [gallery], progress=False)
        r.close()
    else:
        import ray

        from clair_vec.bulk_index import ray_index

        t0 = time.perf_counter()
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        startup = time.perf_counter() - t0
        cpu0, t0 = busy_seconds(), time.perf_counter()
        s = ray_index("bench", [gallery], model_dir=model, uri=store, actors=actors, gpus="no", progress=False)
        ray.shutdown()
    wall = time.perf_counter() - t0
    cpu = busy_seconds() - cpu0
    n = s.indexed
    return {"mode": mode, "actors": actors if mode == "ray" else "-", "images": n, "images_per_s": round(n / wall, 1),
            "wall_s": round(wall, 1), "ray_startup_s": round(startup, 1), "cpu_s_per_image": round(cpu / max(n, 1), 4),
            "load_avg_1m": round(os.getloadavg()[0], 2),
            "driver_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="checkpoint directory (e.g. clair_demo/model after `make demo`)")
    p.add_argument("--images", type=int, default=2000, help="generated photos to index")
    p.add_argument("--actors", type=int, nargs="+", default=[1, 2], help="Ray actor counts to run")
    p.add_argument("--skip-single", action="store_true", help="only the Ray runs")
    p.add_argument("--one", nargs=4, metavar=("MODE", "ACTORS", "GALLERY", "STORE"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.one:
        mode, actors, gallery, store = a.one
        print(json.dumps(one(mode, int(actors), a.model, gallery, store)), flush=True)
        return
    from clair_vec.synthetic import make_shapes_dataset

    work = Path(tempfile.mkdtemp(prefix="clair-index-bench-"))
    try:
        per_class = -(-a.images // 12)
        gallery = make_shapes_dataset(work / "data", per_class=per_class, domains=("photo",), seed=7) / "photo"
        extra = sorted(gallery.rglob("*.png"))[a.images :]
        for f in extra:
            f.unlink()
        runs = ([("single", 1)] if not a.skip_single else []) + [("ray", n) for n in a.actors]
        for mode, n in runs:
            store = work / f"{mode}{n}.db"
            out = subprocess.run([sys.executable, __file__, "--model", a.model, "--one", mode, str(n), str(gallery), str(store)],
                                 capture_output=True, text=True)  # fmt: skip
            if out.returncode != 0:
                raise SystemExit(out.stderr[-3000:])
            print(out.stdout.strip().splitlines()[-1], flush=True)
            shutil.rmtree(store, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
