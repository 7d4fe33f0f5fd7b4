"""Per-domain centring: the label-free alignment of domains that this project adds to CLAIR.

A visual domain moves every CLIP feature of its images by much the same offset: sketches share
their sketchiness, photos their photo-ness, whatever they show. Subtracting each domain's mean
embedding (over that domain's training images, which need no labels) and renormalising,
``e = normalize(z - c_d)``, removes that shared offset from queries and gallery alike, so what
is left to compare is mostly what the image shows. It is the mean-only form of domain-specific
batch normalisation. Training centres each domain's slice of a batch the same way, so the head
learns in the space it is searched in.

The centres are part of the model (``clair.pt`` ``centers``) and of its id: a gallery embedded
with them is searched only by queries embedded with them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F


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
