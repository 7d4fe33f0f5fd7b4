"""Weakly supervised training data: unlabeled images per domain, plus the names of the classes.

This is CLAIR's own input (spec §1): ``ROOT/<domain>/<image>`` with any nesting below the
domain, and a vocabulary file of class names. CLIP's zero-shot guesses replace the labels.

Where an image sits in a folder named after a class of the vocabulary
(``ROOT/<domain>/<class>/...``), that folder name is kept as its label, but only for what labels
may do in a weakly supervised run: hold classes out of the selection's folds and report how right
the pseudo-labels were. The losses never read it (``DomainFeatures.labels`` is monitoring only), so
permuting those folders changes no weight of the trained head. A separate small labeled folder
(``--validation ROOT``, laid out ``ROOT/<domain>/<class>/<image>``) serves the same purpose when
the training images have no class folders at all.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from clair_vec.datasets.folders import (
    ImageItem,
    MultiDomainDataset,
    Split,
    read_class_list,
    refuse_url,
    scan_folder,
)
from clair_vec.datasets.images import walk_images
from clair_vec.errors import DatasetError

#: the label of an image whose folders name no class of the vocabulary
UNLABELED = ""


def read_vocabulary(path: str | Path) -> list[str]:
    """The class names CLIP labels with: one a line, blank lines and ``#`` comments ignored, in
    file order, each name once."""
    names = list(dict.fromkeys(read_class_list(path, what="class-name file", comments="line")))
    if len(names) < 2:
        raise DatasetError(f"class-name file {str(path)!r} names {len(names)} class(es); CLIP's zero-shot labels need at "
                           "least 2 (one class name a line)")  # fmt: skip
    return names


def scan_unlabeled(root: str | Path, vocabulary: list[str], domains: list[str] | None = None) -> MultiDomainDataset:
    """Every image under ``root/<domain>/``, recursively; an image's label is the first folder
    below its domain when that folder names a vocabulary class, else :data:`UNLABELED`."""
    root = Path(root)
    if not root.is_dir():
        refuse_url(root)
        raise DatasetError(f"dataset folder {str(root)!r} does not exist; expected ROOT/<domain>/<image> (any folders "
                           "below the domain) with --classes naming the class vocabulary")  # fmt: skip
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if domains is not None and not set(domains) <= set(found):
        raise DatasetError(f"domains {sorted(set(domains) - set(found))} not found under {root}; it has {found}")
    known = set(vocabulary)
    items, skipped = [], []
    for domain in domains or found:
        listing = walk_images(root / domain)
        skipped += listing.ignored
        for f in listing.files:
            top = f.relative_to(root / domain).parts
            label = top[0] if len(top) > 1 and top[0] in known else UNLABELED
            items.append(ImageItem(str(f), domain, label))
    if not items:
        raise DatasetError(f"no images found under {root}; expected ROOT/<domain>/<image>, one folder per domain "
                           "(e.g. ROOT/photo/..., ROOT/sketch/...)")  # fmt: skip
    return MultiDomainDataset(items, str(root), skipped)


def labeled_classes(dataset: MultiDomainDataset) -> list[str]:
    """The classes some image is labeled with (the folds can hold these out)."""
    return sorted({i.label for i in dataset.items} - {UNLABELED})


def plan_weak_split(root: str | Path, classes: str | Path | list[str], *, validation: str | Path | None = None,
                    seed: int = 0) -> Split:  # fmt: skip
    """Every image of ``root`` trains (no class is held out: the unseen classes are whatever a
    user later searches for outside the vocabulary); ``validation``, a labeled folder, joins the
    images the selection's folds hold classes out of."""
    vocabulary = read_vocabulary(classes) if isinstance(classes, (str, Path)) else list(dict.fromkeys(classes))
    if len(vocabulary) < 2:
        raise DatasetError(f"the class vocabulary names {len(vocabulary)} class(es); CLIP's zero-shot labels need at least 2")
    train = scan_unlabeled(root, vocabulary)
    held = None
    if validation is not None:
        held = scan_folder(validation, what="--validation folder")
        missing = sorted(set(train.domains) - set(held.domains))
        if missing:
            raise DatasetError(f"validation folder {str(validation)!r} has no {missing} images; it needs every training "
                               f"domain ({train.domains}) laid out as ROOT/<domain>/<class>/<image>")  # fmt: skip
        held = held.subset(domains=train.domains)
        train = without_copies(train, held)
    return Split(train, held, MultiDomainDataset([], str(root)), seed, vocabulary=vocabulary)


def _digest(path: str) -> bytes:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.digest()


def without_copies(train: MultiDomainDataset, validation: MultiDomainDataset) -> MultiDomainDataset:
    """``train`` less the images whose bytes are a validation image's: a fold must not train on the
    very image it validates on. Only files of a validation file's size are read."""
    sizes = {os.path.getsize(i.path) for i in validation.items}
    candidates = [i for i in train.items if os.path.getsize(i.path) in sizes]
    if not candidates:
        return train
    held = {_digest(i.path) for i in validation.items}
    copies = {i.path for i in candidates if _digest(i.path) in held}
    kept = [i for i in train.items if i.path not in copies]
    if not kept:
        raise DatasetError("every training image is also in the --validation folder; give training images of their own")
    skipped = [*train.skipped, *((p, "the same bytes as a --validation image: it validates, so it does not train") for p in sorted(copies))]
    return MultiDomainDataset(kept, train.root, skipped)
