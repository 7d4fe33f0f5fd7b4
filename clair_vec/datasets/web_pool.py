"""The "web" pool a stand-in CLIP pretrains on, kept apart from everything CLAIR touches.

CLAIR's premise is a CLIP pretrained on web data: it has seen every category, the ones CLAIR later
holds out as unseen included, mostly in photos and rarely as sketches or cliparts, so it is good
on photos and weak on the other domains. Where no CLIP weights can be had, ``clair-vec
bootstrap-clip`` trains a small stand-in on such a pool. Two things keep that faithful:

- the pool covers every class, and its domain mix is that of web data (:data:`WEB_MIX`: 80 %
  photos, the rest shared by the other domains; an option of ``bootstrap-clip``, the demo and the
  real-image layouts), applied when sampling training batches;
- the pool's images are never CLAIR's training, validation or evaluation images: the demo draws
  the pool from a random stream of its own, and :func:`carve_web_pool` splits a real dataset's
  images into two disjoint sets by content (byte-identical copies go to the same side).

Torch-free.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping, Sequence
from pathlib import Path

from clair_vec.datasets.folders import MultiDomainDataset
from clair_vec.errors import DatasetError

#: the share of photos in the pool; the other domains share the rest equally
WEB_MIX: dict[str, float] = {"photo": 0.8}
#: domains that are photos under another name, for the default mix
PHOTO_LIKE = ("photo", "real")


def parse_mix(text: str) -> dict[str, float]:
    """``"photo=0.8,sketch=0.1"`` as ``{"photo": 0.8, "sketch": 0.1}``; shares in [0, 1] summing to at most 1."""
    mix: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        try:
            share = float(value)
        except ValueError:
            share = -1.0
        if not sep or not name.strip() or not 0.0 <= share <= 1.0:
            raise DatasetError(f"--mix {text!r}: expected DOMAIN=SHARE pairs with shares in [0, 1], e.g. photo=0.8,sketch=0.1")
        mix[name.strip()] = share
    if sum(mix.values()) > 1.0 + 1e-9:
        raise DatasetError(f"--mix {text!r}: the shares add up to {sum(mix.values()):g}, more than 1")
    return mix


def domain_weights(domains: Sequence[str], mix: Mapping[str, float] | None = None) -> dict[str, float]:
    """The share of each of ``domains`` in the pool: named domains get their share, the others
    split what is left equally (with no photo domain named or present, every domain weighs the
    same). Shares are renormalised over the domains present."""
    domains = sorted(domains)
    if mix is None:
        photo = next((d for d in PHOTO_LIKE if d in domains), None)
        mix = {photo: WEB_MIX["photo"]} if photo else {}
    named = {d: float(mix[d]) for d in domains if d in mix}
    others = [d for d in domains if d not in named]
    left = max(0.0, 1.0 - sum(named.values()))
    weights = {**named, **{d: left / len(others) for d in others}} if others else named
    total = sum(weights.values())
    if total <= 0:
        raise DatasetError(f"the domain mix {dict(mix)} gives no weight to any domain present ({domains})")
    return {d: w / total for d, w in weights.items()}


def content_hash(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def carve_web_pool(dataset: MultiDomainDataset, share: float, *, mix: Mapping[str, float] | None = None,
                   seed: int = 0) -> tuple[MultiDomainDataset, MultiDomainDataset]:  # fmt: skip
    """Split ``dataset`` into (pool, rest): the pool takes about ``share`` of the images, drawn per
    domain by the web mix (at most half of a domain's images), every class included; the rest is
    what CLAIR may train and be evaluated on. Images with the same content always land on the
    same side, so no pool image reaches CLAIR under another name."""
    if not 0.0 < share < 1.0:
        raise DatasetError(f"the web pool's share of the images must lie in (0, 1), got {share!r}")
    weights = domain_weights(dataset.domains, mix)
    target = share * len(dataset)
    rng = random.Random(seed)
    content_hash_of = {item.path: content_hash(item.path) for item in dataset.items}
    by_hash: dict[str, list] = {}
    for item in dataset.items:
        by_hash.setdefault(content_hash_of[item.path], []).append(item)
    pool_hashes: set[str] = set()
    for d in dataset.domains:
        groups = sorted(h for h, items in by_hash.items() if items[0].domain == d)
        rng.shuffle(groups)
        # at most half of a domain: CLAIR keeps images of every domain, the gallery's above all
        want = min(len(groups) // 2, round(target * weights.get(d, 0.0)))
        pool_hashes.update(groups[:want])
    pool = [i for i in dataset.items if content_hash_of[i.path] in pool_hashes]
    rest = [i for i in dataset.items if content_hash_of[i.path] not in pool_hashes]
    return MultiDomainDataset(pool, dataset.root), MultiDomainDataset(rest, dataset.root, list(dataset.skipped))
