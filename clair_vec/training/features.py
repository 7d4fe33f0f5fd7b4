"""Frozen-CLIP features of a multi-domain dataset: one clean view and ``n_views`` augmented views.

With a frozen backbone the features of fixed augmented views can be computed once and cached
(spec §4); training then touches only the small head, which is what makes CPU training and
Ray's one-off feature pass possible.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from clair_vec.datasets.folders import MultiDomainDataset
from clair_vec.datasets.images import load_images
from clair_vec.method.foundation import FoundationModel
from clair_vec.method.tensor_files import load_tensor_file, save_tensor_file

log = logging.getLogger(__name__)
SKETCH_LIKE = frozenset({"sketch", "quickdraw"})
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class DomainFeatures:
    clean: torch.Tensor  # (N, D) CLIP eval-preprocessing features
    views: torch.Tensor  # (N, V, D) features of V augmented views
    labels: list[str]  # ground-truth class names; evaluation and monitoring only, never a training signal
    paths: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)


def train_transform(image_size: int, domain: str):
    """MoCo-v2 style augmentation (spec §4), minus colour jitter for sketch-like domains."""
    from torchvision import transforms as T

    ops = [T.RandomResizedCrop(image_size, scale=(0.2, 1.0), interpolation=T.InterpolationMode.BICUBIC)]
    if domain not in SKETCH_LIKE:
        ops.append(T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8))
    ops += [T.RandomGrayscale(p=0.2), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(CLIP_MEAN, CLIP_STD)]
    return T.Compose(ops)


def view_seed(seed: int, key: str, view: int) -> int:
    """The RNG seed of one augmented view of one image: stable across processes and partitions."""
    digest = hashlib.sha256(f"{seed}|{view}|{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def view_key(path: str, root: str) -> str:
    """What seeds an image's augmented views: its path under the dataset's root, so the same
    dataset in another folder (another demo work directory, another node's mount) gets the same
    views; an image outside the root (a --validation folder) keys by its own path."""
    if root:
        rel = os.path.relpath(path, root)
        if not rel.startswith(os.pardir):
            return Path(rel).as_posix()
    return path


def encode_domain_images(
    foundation: FoundationModel,
    images: Sequence[Image.Image],
    keys: Sequence[str],
    domain: str,
    *,
    n_views: int,
    seed: int,
    batch_size: int = 64,
    progress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(clean, views) features of decoded images of one domain; ``keys`` (see :func:`view_key`) seed the views.

    Seeding each view by (seed, view, key) makes the features identical whether one process
    computes them all or Ray Data actors compute them in arbitrary batches.
    """
    clean = foundation.encode_images(images, batch_size=batch_size, progress=progress and f"CLIP {domain}")
    aug = train_transform(foundation.image_size, domain)
    views = [
        foundation.encode_images(images, transform=aug, seeds=[view_seed(seed, k, v) for k in keys],
                                 batch_size=batch_size, progress=progress and f"CLIP {domain} view {v + 1}")  # fmt: skip
        for v in range(n_views)
    ]
    if not views:
        return clean, clean.new_empty(len(images), 0, clean.shape[1])
    return clean, torch.stack(views, dim=1)


def _cache_key(foundation: FoundationModel, dataset: MultiDomainDataset, n_views: int, seed: int) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([foundation.arch, foundation.pretrained, n_views, seed]).encode())
    for item in dataset.items:
        st = os.stat(item.path)
        h.update(f"{item.path}|{item.domain}|{item.label}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    if foundation.pretrained is None:  # random weights: the weights themselves identify the model
        for t in foundation.state_dict().values():
            h.update(t.detach().cpu().numpy().tobytes()[:4096])
    return h.hexdigest()[:24]


def extract_features(
    foundation: FoundationModel,
    dataset: MultiDomainDataset,
    *,
    n_views: int = 2,
    seed: int = 0,
    batch_size: int = 64,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    compute: Callable[[], dict[str, DomainFeatures]] | None = None,
) -> dict[str, DomainFeatures]:
    """Features of every readable image, per domain; unreadable images are logged and skipped.

    ``compute`` replaces the in-process pass (Ray Data actors use it); the cache is shared.
    """
    cache_file = None
    if cache_dir is not None:
        cache_file = Path(cache_dir) / f"features-{_cache_key(foundation, dataset, n_views, seed)}.pt"
        if cache_file.exists():
            log.info("reusing cached CLIP features %s", cache_file)
            return {d: DomainFeatures(**v) for d, v in load_tensor_file(cache_file, what="feature cache").items()}
    out = compute() if compute is not None else _local_features(foundation, dataset, n_views, seed, batch_size, progress)
    if cache_file is not None:
        try:
            save_tensor_file({d: vars(f) for d, f in out.items()}, cache_file)
        except OSError as exc:  # a cache saves time; a full disk under it is no reason to stop training
            log.warning("the feature cache %s was not written (%s); training goes on without it", cache_file,
                        exc.strerror or exc)  # fmt: skip
    return out


def _local_features(
    foundation: FoundationModel, dataset: MultiDomainDataset, n_views: int, seed: int, batch_size: int, progress: bool
) -> dict[str, DomainFeatures]:
    out: dict[str, DomainFeatures] = {}
    for domain in dataset.domains:
        items = dataset.by_domain(domain)
        images, ok, skipped = load_images([i.path for i in items])
        kept = [items[i] for i in ok]
        clean, views = encode_domain_images(
            foundation, images, [view_key(i.path, dataset.root) for i in kept], domain, n_views=n_views, seed=seed, batch_size=batch_size,
            progress=progress,
        )
        out[domain] = DomainFeatures(clean, views, [i.label for i in kept], [i.path for i in kept], skipped)
    return out
