"""How fast images become vectors, against the limits of this machine, side by side in one run.

    python -m clair_vec.benchmarks.encode                                  # ViT-B-32, random weights, auto device
    python -m clair_vec.benchmarks.encode --arch clair-tiny --n 512 --device cpu
    python -m clair_vec.benchmarks.encode --images /data/gallery --precision bf16 --json out.json

Rows, in images per second:

- the raw forward on random pixels already on the device, in fp32 and the mixed precision: what
  the accelerator can do;
- a plain PyTorch DataLoader (worker processes decode and preprocess the files, pinned memory on
  a GPU) feeding the same forward: the decode-bound limit of this machine;
- the project's index path (``index_sources``: hash, look up, decode in threads, encode, map),
  first with a store that writes nothing, then into Milvus Lite.

Each index row is also given as a ratio to the DataLoader-fed forward at the same precision.
Weights are random (no download): the compute per image is the architecture's. Speed only:
tests never assert on these numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from clair_vec.method.devices import resolve_device
from clair_vec.method.pixel_batches import default_batch_size, loader_threads, usable_cores


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {usable_cores()} cores, {torch.get_num_threads()} torch threads)"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rate(n: int, run: Callable[[], None], device: torch.device, repeats: int = 1) -> float:
    """Images per second of ``run`` (which handles ``n`` images), best of ``repeats`` after a warm-up."""
    run()
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        run()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return n / best


class _Files(torch.utils.data.Dataset):
    """Decode and preprocess one file, in a DataLoader worker process."""

    def __init__(self, paths: Sequence[Path], transform: Callable) -> None:
        self.paths, self.transform = list(paths), transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        from PIL import Image

        with Image.open(self.paths[i]) as im:
            return self.transform(im.convert("RGB"))


class _NoWrite:
    """A store that holds nothing and writes nothing: the index path without the database."""

    name = "none"

    def get(self, collection: str, ids: list[str]) -> dict:
        return {}

    def upsert(self, collection: str, records: list, *, model: str | None = None) -> int:
        return len(records)

    def records(self, collection: str, *, filter: Any = None, page_size: int = 1000) -> list:
        return []

    def delete(self, collection: str, ids: list[str]) -> int:
        return 0

    def flush(self, collection: str) -> None:
        pass


def make_images(out: Path, n: int) -> list[Path]:
    """``n`` JPEG photos of the demo's shapes at 224 px, written once into ``out``."""
    from clair_vec.datasets.shapes import SHAPES, render

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = out / f"{i:05d}.jpg"
        if not p.exists():
            render(SHAPES[i % len(SHAPES)], "photo", random.Random(i), size=224).save(p, quality=90)
        paths.append(p)
    return paths


def run(images: Sequence[Path], arch: str, device: torch.device, batch_size: int, workers: int, precision: str,
        milvus: bool = True) -> dict[str, Any]:  # fmt: skip
    from clair_vec.benchmarks.models import random_model
    from clair_vec.method.model import ClairModel
    from clair_vec.retrieval import sources
    from clair_vec.retrieval.indexing import index_sources

    n = len(images)
    with tempfile.TemporaryDirectory() as tmp:
        model = ClairModel.load(random_model(arch, Path(tmp) / "model"), device=device)
        fm = model.foundation
        rows: dict[str, float] = {}
        pixels = torch.randn(batch_size, 3, fm.image_size, fm.image_size, device=device)
        reps = max(1, n // batch_size)
        for prec in ("fp32", precision):

            def forward(prec: str = prec) -> None:
                for _ in range(reps):
                    fm.encode_pixels(pixels, precision=prec)

            rows[f"raw forward {prec}"] = rate(reps * batch_size, forward, device, repeats=2)
        loader = torch.utils.data.DataLoader(_Files(images, fm.preprocess), batch_size=batch_size, num_workers=workers,
                                             pin_memory=device.type == "cuda", persistent_workers=workers > 0)  # fmt: skip
        for prec in ("fp32", precision):

            def fed(prec: str = prec) -> None:
                for batch in loader:
                    fm.encode_pixels(batch, precision=prec)

            rows[f"DataLoader-fed forward {prec}"] = rate(n, fed, device)
        srcs = sources.expand([str(p) for p in images])
        for prec in ("fp32", precision):

            def index(prec: str = prec) -> None:
                index_sources(model, _NoWrite(), "bench", srcs, domain=model.pivot, batch_size=batch_size,  # type: ignore[arg-type]
                              progress=False, precision=prec)  # fmt: skip

            rows[f"index path, no store {prec}"] = rate(n, index, device)
        if milvus:
            from clair_vec.retrieval.retriever import Retriever

            for prec in ("fp32", precision):
                uri = str(Path(tmp) / f"bench-{prec}.db")

                def milvus_index(prec: str = prec, uri: str = uri) -> None:
                    with Retriever(model, uri=uri) as r:
                        r.index(f"bench_{len(os.listdir(tmp))}", [str(p) for p in images], batch_size=batch_size,
                                progress=False, precision=prec)  # fmt: skip

                rows[f"index into Milvus Lite {prec}"] = rate(n, milvus_index, device)
    ratios = {k: v / rows[f"DataLoader-fed forward {k.rsplit(' ', 1)[1]}"] for k, v in rows.items() if k.startswith("index")}
    return {"device": device_name(device), "arch": arch, "images": n, "batch_size": batch_size, "loader_workers": workers,
            "images_per_s": rows, "vs_dataloader": ratios}  # fmt: skip


def format_table(res: dict[str, Any]) -> str:
    lines = [f"{res['arch']} (random weights) on {res['device']}; {res['images']} JPEGs, batch {res['batch_size']}, "
             f"{res['loader_workers']} decode workers", "", "| path | images/s | vs DataLoader-fed, same precision |",
             "|---|---:|---:|"]  # fmt: skip
    for k, v in res["images_per_s"].items():
        ratio = res["vs_dataloader"].get(k)
        lines.append(f"| {k} | {v:,.0f} | {'' if ratio is None else f'{ratio:.2f}x'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", default=None, help="a folder of images (default: generate --n JPEGs of the demo's shapes)")
    p.add_argument("--n", type=int, default=None, help="images to generate (default: 2048 on a GPU, 256 on a CPU)")
    p.add_argument("--arch", default="ViT-B-32", help="open_clip architecture (random weights)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--batch-size", type=int, default=None, help="images per batch (default: 256 on a GPU, 64 on a CPU)")
    p.add_argument("--workers", type=int, default=None, help="DataLoader worker processes and decode threads (default: cores - 1)")
    p.add_argument("--precision", choices=["bf16", "fp16", "int8"], default="bf16", help="the precision set beside fp32")
    p.add_argument("--no-milvus", action="store_true", help="leave out the Milvus Lite row")
    p.add_argument("--json", default=None, help="also write the result here")
    a = p.parse_args(argv)
    device = resolve_device(a.device)
    workers = a.workers or loader_threads()
    os.environ["CLAIR_VEC_LOADER_THREADS"] = str(workers)  # the index path decodes with as many threads
    if a.images:
        from clair_vec.datasets.images import walk_images

        if not Path(a.images).is_dir():
            raise FileNotFoundError(f"--images {a.images}: no such folder")
        images = walk_images(a.images).files
        if not images:
            raise ValueError(f"--images {a.images}: no image files in it (or its subfolders)")
    else:
        n = a.n or (2048 if device.type == "cuda" else 256)
        images = make_images(Path(tempfile.gettempdir()) / "clair_vec_bench_images", n)
    res = run(images, a.arch, device, a.batch_size or default_batch_size(device), workers, a.precision, milvus=not a.no_milvus)
    print(format_table(res))
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    from clair_vec.benchmarks import run_script

    run_script(main)
