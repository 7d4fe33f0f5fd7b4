"""The CLAIR encoder head over frozen CLIP features (spec §3.1, design R).

``z = normalize(v + alpha * MLP(v))`` stays in CLIP's joint space, so the text-derived mapping
W and text prototypes keep their meaning for head outputs.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "none": nn.Identity}


class ClairHead(nn.Module):
    """``z = normalize(v + alpha * (MLP(v) - c))``; ``c = 0`` unless ``center``.

    ``activation="none"`` makes the MLP linear (``W2 W1 v + b``): the head is then a linear map of
    ``v``, and what it learns depends far less on the first layer's random draw. The layers keep
    their names and shapes, so checkpoints of either kind load through one code path.

    ``zero_init`` starts the MLP's last layer at zero, so the head starts as the identity.

    With ``center`` the residual is centred: on the batch's mean while training (tracked as a
    running mean, as BatchNorm tracks its statistics) and on that running mean afterwards. An
    uncentred residual carries one offset shared by every input, which pulls all embeddings,
    unseen classes' included, towards one direction.
    """

    def __init__(self, dim: int, hidden: int | None = None, alpha_init: float = 0.1, *, center: bool = False,
                 center_momentum: float = 0.99, zero_init: bool = False, activation: str = "relu") -> None:  # fmt: skip
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"head activation {activation!r} is not one of {sorted(ACTIVATIONS)}")
        hidden = hidden or dim
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), ACTIVATIONS[activation](), nn.Linear(hidden, dim))
        self.activation = activation
        if zero_init:  # start as the identity (raw CLIP); the first layer still learns through the second
            nn.init.zeros_(self.mlp[2].weight)
            nn.init.zeros_(self.mlp[2].bias)
        self.alpha = nn.Parameter(torch.tensor(float(alpha_init)))
        self.dim = dim
        self.center, self.center_momentum = center, center_momentum
        if center:
            self.register_buffer("offset", torch.zeros(dim))

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        r = self.mlp(v)
        if self.center:
            if self.training and len(r) > 1:
                mean = r.mean(0)
                with torch.no_grad():
                    self.offset.lerp_(mean.detach(), 1.0 - self.center_momentum)
                r = r - mean
            else:
                r = r - self.offset
        return F.normalize(v + self.alpha * r, dim=-1)

    @classmethod
    @torch.no_grad()
    def average(cls, heads: Sequence[ClairHead]) -> ClairHead:
        """One head whose residual is the mean of ``heads``' residuals (each with its ``alpha`` and,
        centred, its offset): their hidden units side by side, the second layer scaled by
        ``alpha / len(heads)``. Exact, since a sum of one-hidden-layer MLPs is one wider MLP; so it
        saves, loads and validates as any head does."""
        heads = list(heads)
        if not heads:
            raise ValueError("ClairHead.average needs at least one head")
        first = heads[0]
        if len(heads) == 1:
            return first
        kinds = {(h.dim, h.activation, h.center) for h in heads}
        if len(kinds) > 1:
            raise ValueError(f"ClairHead.average needs heads of one width, activation and centring, got {sorted(kinds)}")
        k = len(heads)
        out = cls(first.dim, sum(h.mlp[0].out_features for h in heads), 1.0, center=first.center,
                  activation=first.activation).to(first.alpha.device)  # fmt: skip
        out.mlp[0].weight.copy_(torch.cat([h.mlp[0].weight for h in heads]))
        out.mlp[0].bias.copy_(torch.cat([h.mlp[0].bias for h in heads]))
        out.mlp[2].weight.copy_(torch.cat([h.alpha * h.mlp[2].weight for h in heads], dim=1) / k)
        out.mlp[2].bias.copy_(sum(h.alpha * (h.mlp[2].bias - (h.offset if h.center else 0.0)) for h in heads) / k)
        return out.eval()  # a centred head's offset stays zero: each one's is in the bias

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
