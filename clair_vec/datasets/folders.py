"""Multi-domain image folders ``root/<domain>/<class>/<image>`` and zero-shot class splits.

This is the layout of PACS, DomainNet, Sketchy, TU-Berlin and QuickDraw exports. Zero-shot hygiene
(spec §8.1): unseen-class images never reach training; :func:`zero_shot_split` is the one place
that decides which images are which.
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from clair_vec.datasets.images import IMAGE_SUFFIXES
from clair_vec.errors import DatasetError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageItem:
    path: str
    domain: str
    label: str


@dataclass
class MultiDomainDataset:
    items: list[ImageItem]
    root: str = ""
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)

    @property
    def domains(self) -> list[str]:
        return sorted({i.domain for i in self.items})

    @property
    def classes(self) -> list[str]:
        return sorted({i.label for i in self.items})

    def by_domain(self, domain: str) -> list[ImageItem]:
        return [i for i in self.items if i.domain == domain]

    def subset(self, *, classes: Iterable[str] | None = None, domains: Iterable[str] | None = None) -> MultiDomainDataset:
        keep_c = set(classes) if classes is not None else None
        keep_d = set(domains) if domains is not None else None
        items = [
            i for i in self.items if (keep_c is None or i.label in keep_c) and (keep_d is None or i.domain in keep_d)
        ]
        return MultiDomainDataset(items, self.root, list(self.skipped))

    def __len__(self) -> int:
        return len(self.items)


def refuse_url(root: str | Path, what: str = "dataset folder") -> None:
    """A DatasetError when ``root``, no folder here, was typed as a URL (``pathlib`` turns
    ``http://`` into ``http:/``): said as the URL it is, not as a folder that does not exist."""
    if Path(root).exists() or re.match(r"[A-Za-z][A-Za-z0-9+.-]+:/", str(root)) is None:
        return
    url = re.sub(r"^([A-Za-z][A-Za-z0-9+.-]+:)/(?!/)", r"\1//", str(root))  # as typed, before pathlib ate a slash
    raise DatasetError(f"{what} {url!r} is a URL, and this command reads a local folder: download the images "
                       "into root/<domain>/<class>/<image> first (index and search take URLs)")  # fmt: skip


def scan_folder(root: str | Path, domains: Sequence[str] | None = None, *, what: str = "dataset folder") -> MultiDomainDataset:
    """Index ``root/<domain>/<class>/<image>``; files with non-image suffixes are ignored.
    ``what`` names the folder in errors (e.g. "--validation folder")."""
    root = Path(root)
    if not root.is_dir():
        refuse_url(root, what)
        raise DatasetError(
            f"{what} {str(root)!r} does not exist; expected root/<domain>/<class>/<image> "
            "(e.g. PACS or DomainNet unpacked), or run `clair-vec demo` to generate one."
        )
    wanted = set(domains) if domains else None
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if wanted and not wanted <= set(found):
        raise DatasetError(f"domains {sorted(wanted - set(found))} not found under {root}; it has {found}")
    items, loose = [], []
    for domain in found:
        if wanted and domain not in wanted:
            continue
        for entry in sorted((root / domain).iterdir()):
            if entry.is_dir():
                items += [ImageItem(str(f), domain, entry.name) for f in sorted(entry.iterdir())
                          if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()]  # fmt: skip
            elif entry.suffix.lower() in IMAGE_SUFFIXES:
                loose.append((str(entry), "an image directly in its domain folder, so of no class (class folders "
                                          "root/<domain>/<class>/<image> label images; --classes FILE trains without them)"))  # fmt: skip
    if not items:
        hint = ""
        if loose:
            hint = f"; {len(loose)} images sit directly in the domain folders, of no class"
            if what == "dataset folder":
                hint += ": pass --classes FILE (one class name a line) to train from unlabeled images"
        raise DatasetError(f"no images found in class folders of the {what} {root}; expected root/<domain>/<class>/<image>{hint}")
    return MultiDomainDataset(items, str(root), loose)


def read_class_list(path: str | Path, *, what: str = "class split file", comments: str = "anywhere") -> list[str]:
    """One class name a line; blank lines and ``#`` comments ignored: a ``#`` that starts a line or
    follows a space begins a comment, so a class named ``c#`` stays itself (``comments="line"``:
    only lines that start with ``#``)."""
    path = Path(path)
    if path.is_dir():
        raise DatasetError(f"{what} {str(path)!r} is a folder; give a text file with one class name a line")
    if not path.is_file():
        raise DatasetError(f"{what} {str(path)!r} does not exist")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise DatasetError(f"{what} {str(path)!r} is not UTF-8 text; give a text file with one class name a line") from None
    if comments == "line":
        names = [ln.strip() for ln in lines if not ln.lstrip().startswith("#")]
    else:
        names = [re.split(r"(?:^|\s)#", ln, maxsplit=1)[0].strip() for ln in lines]
    return [n for n in names if n]


def zero_shot_split(
    dataset: MultiDomainDataset,
    *,
    unseen: Sequence[str] | None = None,
    seen: Sequence[str] | None = None,
    unseen_fraction: float = 0.25,
    seed: int = 0,
) -> tuple[MultiDomainDataset, MultiDomainDataset]:
    """Split by class into (seen, unseen) datasets; classes never straddle the two.

    ``unseen``/``seen`` name the classes (from split files); otherwise a seeded random
    ``unseen_fraction`` of the classes is held out.
    """
    classes = dataset.classes
    if unseen is None and seen is None:
        rng = random.Random(seed)
        n_unseen = max(1, round(len(classes) * unseen_fraction))
        unseen = sorted(rng.sample(classes, n_unseen))
    if unseen is None:
        unseen = [c for c in classes if c not in set(seen)]
    if seen is None:
        seen = [c for c in classes if c not in set(unseen)]
    overlap = set(seen) & set(unseen)
    if overlap:
        raise DatasetError(f"classes {sorted(overlap)} are listed both as seen and unseen")
    missing = (set(seen) | set(unseen)) - set(classes)
    if missing:
        raise DatasetError(f"split names classes with no images: {sorted(missing)}")
    return dataset.subset(classes=seen), dataset.subset(classes=unseen)


def hold_out_classes(
    dataset: MultiDomainDataset, fraction: float = 0.1, *, min_classes: int = 2, seed: int = 0
) -> tuple[MultiDomainDataset, MultiDomainDataset | None]:
    """(train, validation) by class: a seeded ``fraction`` of the classes, at least ``min_classes``
    (fewer would make retrieval trivially correct), or no validation set where too few remain."""
    classes = dataset.classes
    n = max(min_classes, round(len(classes) * fraction))
    if fraction <= 0 or len(classes) - n < 2:
        return dataset, None
    return zero_shot_split(dataset, unseen=sorted(random.Random(seed).sample(classes, n)))


def split_dataset(root: str | Path, seed: int = 0) -> tuple[MultiDomainDataset, MultiDomainDataset]:
    """Split by ``root/{seen,unseen}_classes.txt`` when present, else hold out a seeded 25% of classes."""
    root = Path(root)
    ds = scan_folder(root)
    if (root / "unseen_classes.txt").is_file():
        return zero_shot_split(ds, unseen=read_class_list(root / "unseen_classes.txt"))
    if (root / "seen_classes.txt").is_file():
        return zero_shot_split(ds, seen=read_class_list(root / "seen_classes.txt"))
    return zero_shot_split(ds, seed=seed)


@dataclass
class Split:
    """Who sees what: training classes, held-out seen classes for model selection, and the
    zero-shot classes that only evaluation ever touches.

    ``vocabulary`` is set for weakly supervised data (:mod:`clair_vec.datasets.unlabeled`): the
    class names CLIP labels with, where the training images need not carry labels at all."""

    train: MultiDomainDataset
    validation: MultiDomainDataset | None
    unseen: MultiDomainDataset
    seed: int
    vocabulary: list[str] | None = None

    @property
    def classes(self) -> list[str]:
        """The class names training knows: the vocabulary, or the seen classes' folders."""
        if self.vocabulary is not None:
            return list(self.vocabulary)
        return sorted(set(self.train.classes) | set(self.validation.classes if self.validation else []))

    def record(self) -> dict:
        out = {"seen_classes": self.classes if self.vocabulary is not None else self.train.classes,
               "validation_classes": self.validation.classes if self.validation else [],
               "unseen_classes": self.unseen.classes, "split_seed": self.seed}  # fmt: skip
        if self.vocabulary is not None:
            out["supervision"] = "class names only"
        return out


def plan_split(root: str | Path, seed: int = 0, val_fraction: float = 0.1) -> Split:
    """The one place training decides its classes: split files or a seeded hold-out, then a
    seeded validation share of the seen classes."""
    seen, unseen = split_dataset(root, seed)
    train, val = hold_out_classes(seen, val_fraction, seed=seed)
    return Split(train, val, unseen, seed)
