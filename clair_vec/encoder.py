"""The CLAIR encoder head over frozen CLIP features (spec §3.1, design R).

``z = normalize(v + alpha * MLP(v))`` stays in CLIP's joint space, so the text-derived mapping
W and text prototypes keep their meaning for head outputs.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F


class ClairHead(nn.Module):
    def __init__(self, dim: int, hidden: int | None = None, alpha_init: float = 0.1) -> None:
        super().__init__()
        hidden = hidden or dim
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, dim))
        self.alpha = nn.Parameter(torch.tensor(float(alpha_init)))
        self.dim = dim

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return F.normalize(v + self.alpha * self.mlp(v), dim=-1)

    @classmethod
    def identity(cls, dim: int, hidden: int | None = None) -> ClairHead:
        """A head that returns its (normalised) input: raw CLIP features, for the mapping-only model."""
        head = cls(dim, hidden, 0.0)
        with torch.no_grad():
            for p in head.parameters():
                p.zero_()
        return head


def momentum_copy(module: nn.Module) -> nn.Module:
    """A frozen copy to be updated by EMA (the MoCo key encoder)."""
    target = copy.deepcopy(module)
    for p in target.parameters():
        p.requires_grad_(False)
    return target


@torch.no_grad()
def momentum_update(target: nn.Module, source: nn.Module, m: float) -> None:
    """``theta_k <- m theta_k + (1 - m) theta_q``."""
    for pt, ps in zip(target.parameters(), source.parameters(), strict=True):
        pt.mul_(m).add_(ps.detach(), alpha=1.0 - m)
