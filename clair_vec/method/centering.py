"""Per-domain centring: the label-free alignment of domains that this project adds to CLAIR.

A visual domain moves every CLIP feature of its images by much the same offset: sketches share
their sketchiness, photos their photo-ness, whatever they show. Subtracting each domain's mean
embedding (over that domain's training images, which need no labels) and renormalising,
``e = normalize(z - c_d)``, removes that shared offset from queries and gallery alike, so what
is left to compare is mostly what the image shows. It is the mean-only form of domain-specific
batch normalisation. Training centres each domain's slice of a batch the same way, so the head
learns in the space it is searched in.

Centring assumes the domains differ in style. Where they are photo collections that differ in
which classes they hold (VLCS: Caltech, LabelMe, SUN), a domain's mean is partly its classes, and
subtracting it takes content away. The two cases differ in how much of the features' variance
lies between the domain means (:func:`domain_share`, which needs no label), so the method centres
only above ``ClairConfig.domain_center_min_share`` (:func:`decide_centring`).

The centres are part of the model (``clair.pt`` ``centers``) and of its id: a gallery embedded
with them is searched only by queries embedded with them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from clair_vec.method.config import ClairConfig

log = logging.getLogger(__name__)


def center_batch(z: torch.Tensor) -> torch.Tensor:
    """``normalize(z - mean(z))`` of one domain's rows; the mean carries gradient, as in BatchNorm."""
    if len(z) < 2:
        return z
    return F.normalize(z - z.mean(0, keepdim=True), dim=-1)


class DomainCenters:
    """One mean vector per domain; domains without one pass through unchanged."""

    def __init__(self, centers: Mapping[str, torch.Tensor] | None = None) -> None:
        self.centers = {d: c.detach().float().cpu() for d, c in (centers or {}).items()}

    @classmethod
    @torch.no_grad()
    def fit(cls, features: Mapping[str, torch.Tensor], embed: Callable[[torch.Tensor, str], torch.Tensor]) -> DomainCenters:
        """The mean of ``embed(features[d], d)`` for every domain ``d`` (CLIP features of its
        training images), computed in chunks so a large domain never embeds at once."""
        out = {}
        for d, feats in features.items():
            total, n = None, 0
            for start in range(0, len(feats), 4096):
                z = embed(feats[start : start + 4096], d).float().cpu()
                total = z.sum(0) if total is None else total + z.sum(0)
                n += len(z)
            if n:
                out[d] = total / n
        return cls(out)

    def __bool__(self) -> bool:
        return bool(self.centers)

    def apply(self, z: torch.Tensor, domain: str) -> torch.Tensor:
        c = self.centers.get(domain)
        if c is None:
            return z
        return F.normalize(z - c.to(z), dim=-1)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.centers)


@torch.no_grad()
def domain_share(features: Mapping[str, torch.Tensor]) -> float:
    """The share of the variance of the L2-normalised ``features`` (domain -> rows) that lies
    between the domain means: 0 where the domains overlap, 1 where each domain is one point.

    Every domain weighs the same, however many images it has: a style held by a small domain (a
    few hundred sketches beside a photo collection) is as much a style as a large one. The sums run
    in chunks, in float64, so a large domain never normalises at once. Fewer than two domains with
    images give NaN: there is nothing to compare."""
    means, within = [], []
    for d, feats in features.items():
        total, squares, n = torch.zeros(feats.shape[-1], dtype=torch.float64), 0.0, 0
        for start in range(0, len(feats), 4096):
            z = F.normalize(feats[start : start + 4096].double().cpu(), dim=-1)
            total += z.sum(0)
            squares += float((z * z).sum())
            n += len(z)
        if not n:
            continue
        if not torch.isfinite(total).all():
            raise ValueError(f"the image features of domain {d!r} hold NaN or infinite values: the CLIP forward "
                             "overflowed (fp16?) or an image decoded to garbage; re-extract them in fp32")  # fmt: skip
        mean = total / n
        means.append(mean)
        within.append(squares / n - float(mean @ mean))
    if len(means) < 2:
        return float("nan")
    grand = torch.stack(means).mean(0)
    between = sum(float(((m - grand) ** 2).sum()) for m in means) / len(means)
    spread = between + sum(within) / len(within)
    return between / spread if spread > 1e-12 else 0.0


def decide_centring(config: ClairConfig, features: Mapping[str, torch.Tensor]) -> tuple[ClairConfig, dict[str, Any]]:
    """The config training runs with, and what was decided: per-domain centring stays on only where
    the domains hold at least ``domain_center_min_share`` of the features' variance. Decided once, on
    every seen image, before the folds, so the folds and the final model centre alike."""
    if not config.domain_center:
        return config, {"domain_center": False, "reason": "off in the config"}
    share = domain_share(features)
    if share != share:  # NaN: one domain; centring it alone is what it always was
        return config, {"domain_center": True, "reason": "one domain: nothing to compare"}
    record = {"domain_share": round(share, 4), "min_share": config.domain_center_min_share}
    if share >= config.domain_center_min_share:
        return config, {"domain_center": True, **record}
    log.warning("per-domain centring is off for this data: the domain means hold %.3f of the image features' variance, "
                "below domain_center_min_share %.3f, so the domains differ more in what they show than in style. "
                "To centre anyway: --set domain_center_min_share=0 (ClairConfig(domain_center_min_share=0) in Python)",
                share, config.domain_center_min_share)  # fmt: skip
    return config.replace(domain_center=False), {"domain_center": False, **record}
