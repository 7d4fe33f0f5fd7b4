"""Does a faster precision change what a user finds? mAP@200 of a demo's model at fp32 and bf16 (or fp16, int8).

    python -m clair_vec.benchmarks.precision --workdir clair_demo [--workdir d1 ...] [--device cuda]

For each finished ``clair-vec demo`` work directory: the unseen classes' photos are the gallery,
their cliparts and sketches the queries, both encoded at each precision (as a collection indexed
with ``--precision`` and its queries are), and mAP@200 is printed per query domain with the
difference to fp32.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from clair_vec.method.metrics import retrieval_metrics
from clair_vec.method.model import ClairModel


def _images(root: Path, domain: str, classes: list[str]) -> tuple[list[Image.Image], np.ndarray]:
    ims, labels = [], []
    for c in classes:
        for p in sorted((root / domain / c).iterdir()):
            with Image.open(p) as im:
                ims.append(im.convert("RGB"))
            labels.append(c)
    return ims, np.array(labels)


def compare(workdir: str | Path, precisions: tuple[str, ...] = ("fp32", "bf16"), device: str | None = None) -> dict[str, dict[str, float]]:
    """precision -> query domain -> mAP@200 on the demo's unseen classes."""
    work = Path(workdir)
    model = ClairModel.load(work / "model", device=device or "auto")
    data = work / "data"
    unseen = (data / "unseen_classes.txt").read_text().split()
    gallery, gallery_labels = _images(data, model.pivot, unseen)
    queries = {d: _images(data, d, unseen) for d in model.domains if d != model.pivot}
    out: dict[str, dict[str, float]] = {}
    for prec in precisions:
        g = model.embed_images(gallery, model.pivot, precision=prec)
        out[prec] = {d: retrieval_metrics(model.embed_images(q, d, precision=prec), ql, g, gallery_labels)["mAP@200"]
                     for d, (q, ql) in queries.items()}  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", action="append", required=True, help="a finished `clair-vec demo` work directory")
    p.add_argument("--precision", default="bf16", choices=["bf16", "fp16", "int8"], help="the precision set beside fp32")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    a = p.parse_args(argv)
    for w in a.workdir:
        res = compare(w, ("fp32", a.precision), a.device)
        cells = [f"{d} queries: fp32 {res['fp32'][d]:.4f} {a.precision} {res[a.precision][d]:.4f} ({res[a.precision][d] - res['fp32'][d]:+.4f})"
                 for d in res["fp32"]]  # fmt: skip
        print(f"{w}: " + "; ".join(cells))
    return 0


if __name__ == "__main__":
    from clair_vec.benchmarks import run_script

    run_script(main)
