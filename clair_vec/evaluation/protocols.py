"""The zero-shot retrieval protocols the paper and its peers report, as data.

Each protocol fixes its domains (queries into a gallery), its seen / unseen (and, for DomainNet,
validation) classes and its metrics. The class lists ship in ``protocol_classes/``, copied from
the code that defines them (each file's first line names its source): SAKE for Sketchy split 1
and TU-Berlin, Yelamarthi et al.'s 21 classes for Sketchy split 2, Doodle2Search for QuickDraw,
SnMpNet/UCDR for DomainNet.

The datasets spell class names their own ways (``hot-air_balloon``, ``hot air balloon``,
``hot_air_balloon``), so a listed class matches the folder whose name is the same letters and
digits, case, spaces and punctuation aside.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from clair_vec.datasets.folders import Split, read_class_list, scan_folder
from clair_vec.errors import DatasetError

SHOWN = 8  # missing names listed in an error before "and N more"


@dataclass(frozen=True)
class Protocol:
    name: str
    title: str
    gallery: str
    queries: tuple[str, ...]
    #: the metrics the protocol's papers report, in table order
    metrics: tuple[str, str]
    has_validation: bool = False

    def classes(self, part: str) -> list[str]:
        """``seen``, ``unseen`` or ``val``: the shipped class list."""
        with resources.as_file(resources.files("clair_vec.evaluation") / "protocol_classes" / f"{self.name}.{part}.txt") as path:
            return read_class_list(path)

    @property
    def domains(self) -> tuple[str, ...]:
        return (self.gallery, *self.queries)


PROTOCOLS: dict[str, Protocol] = {p.name: p for p in (
    Protocol("sketchy-split1", "Sketchy Extended, random split (Shen et al. 2018; SAKE's list)", "photo", ("sketch",),
             ("mAP@all", "P@100")),
    Protocol("sketchy-split2", "Sketchy Extended, classes not in ImageNet-1K (Yelamarthi et al. 2018)", "photo", ("sketch",),
             ("mAP@200", "P@200")),
    Protocol("tuberlin", "TU-Berlin Extended (Shen et al. 2018; SAKE's list)", "photo", ("sketch",), ("mAP@all", "P@100")),
    Protocol("quickdraw", "QuickDraw Extended (Dey et al. 2019, Doodle2Search)", "photo", ("sketch",), ("mAP@200", "P@200")),
    Protocol("domainnet", "DomainNet, zero-shot classes (Paul et al. 2021, SnMpNet/UCDR)", "real",
             ("clipart", "infograph", "painting", "quickdraw", "sketch"), ("mAP@200", "P@200"), has_validation=True),
)}  # fmt: skip


def get_protocol(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise DatasetError(f"unknown benchmark {name!r}; the protocols are {list(PROTOCOLS)} (clair-vec benchmark list)")
    return PROTOCOLS[name]


def class_key(name: str) -> str:
    """What two spellings of one class share: its letters and digits, lower-cased."""
    return re.sub(r"[^0-9a-z]+", "", name.lower())


def _shown(names: list[str]) -> str:
    more = f" and {len(names) - SHOWN} more" if len(names) > SHOWN else ""
    return f"{names[:SHOWN]}{more}"


def protocol_split(protocol: Protocol, root: str | Path, seed: int = 0) -> Split:
    """The protocol's classes found as folders under ``root/<domain>/<class>/``: the seen classes
    train (the folds validate on some of them), the unseen ones are evaluated, and validation
    classes (DomainNet) are left out of training as the protocol leaves them."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"benchmark data folder {str(root)!r} does not exist; lay {protocol.name} out as "
                           f"ROOT/<domain>/<class>/<image> with domains {list(protocol.domains)}")  # fmt: skip
    present = sorted(p.name for p in root.iterdir() if p.is_dir())
    missing_domains = [d for d in protocol.domains if d not in present]
    if missing_domains:
        raise DatasetError(f"{protocol.name} needs the domain folders {list(protocol.domains)} under {root}; missing "
                           f"{missing_domains} (it has {present})")  # fmt: skip
    ds = scan_folder(root, list(protocol.domains))
    spellings: dict[str, dict[str, set[str]]] = {d: {} for d in protocol.domains}  # domain -> key -> folder names
    for item in ds.items:
        spellings[item.domain].setdefault(class_key(item.label), set()).add(item.label)
    for d, keys in spellings.items():
        twice = sorted(sorted(names) for names in keys.values() if len(names) > 1)
        if twice:  # which one holds the class? merging them silently could mix two classes
            raise DatasetError(f"{protocol.name}: {len(twice)} class(es) have more than one folder under {root / d}, e.g. "
                               f"{twice[0]}; keep one folder a class")  # fmt: skip
    folders = {d: {k: next(iter(v)) for k, v in keys.items()} for d, keys in spellings.items()}
    parts = ["seen", "unseen", *(["val"] if protocol.has_validation else [])]
    named: dict[str, list[str]] = {}
    for part in parts:
        listed = protocol.classes(part)
        for d in protocol.domains:
            lacking = [c for c in listed if class_key(c) not in folders[d]]
            if lacking:
                raise DatasetError(f"{protocol.name}: {len(lacking)} of its {len(listed)} {part} classes "
                                   f"{'has' if len(lacking) == 1 else 'have'} no folder "
                                   f"with images under {root / d}: {_shown(lacking)}")  # fmt: skip
        named[part] = [folders[protocol.gallery][class_key(c)] for c in listed]
        for d in protocol.queries:  # a label is a folder name, so a class must be spelt alike in every domain
            differ = [(folders[d][class_key(c)], c) for c in named[part] if folders[d][class_key(c)] != c]
            if differ:
                raise DatasetError(f"{protocol.name}: class folders are spelt differently under {d} and {protocol.gallery}, "
                                   f"e.g. {differ[0][0]!r} and {differ[0][1]!r}; rename them alike")  # fmt: skip
    return Split(ds.subset(classes=named["seen"]), None, ds.subset(classes=named["unseen"]), seed)
