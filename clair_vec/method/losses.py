"""CLAIR's contrastive losses over per-domain memory banks (spec §3.4-3.7).

All functions take L2-normalised features. ``weights`` are the refined pseudo-label confidences
``w~`` (0 = filtered): label-dependent losses are weighted means over kept anchors, and return an
exact zero (still attached to the graph) when no anchor is kept.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_NEG = -1e9  # masks logits; finite so that 0 * masked never produces NaN


def weighted_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Without a host sync (no ``if`` on a device value): all-zero weights give an exact, attached zero."""
    weights = weights.to(values.dtype)
    return (values * weights).sum() / weights.sum().clamp_min(torch.finfo(values.dtype).tiny)


def _mask_self(logits: torch.Tensor, self_idx: torch.Tensor | None) -> torch.Tensor:
    if self_idx is None:
        return logits
    logits = logits.clone()
    logits[torch.arange(len(self_idx), device=logits.device), self_idx] = _NEG
    return logits


def instance_discrimination_loss(
    q: torch.Tensor, k: torch.Tensor, bank: torch.Tensor, self_idx: torch.Tensor, tau: float
) -> torch.Tensor:
    """MoCo InfoNCE: positive = the other view's key, negatives = the domain bank minus the anchor."""
    pos = (q * k).sum(1, keepdim=True)
    neg = _mask_self(q @ bank.T, self_idx)
    logits = torch.cat([pos, neg], dim=1) / tau
    return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))


def _multi_positive_log_prob(
    logits: torch.Tensor, pos_mask: torch.Tensor, extra_pos: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean log-softmax over each row's positives; also returns how many positives each row has."""
    if extra_pos is not None:
        logits = torch.cat([extra_pos[:, None], logits], dim=1)
        pos_mask = torch.cat([torch.ones_like(pos_mask[:, :1]), pos_mask], dim=1)
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    n_pos = pos_mask.sum(1)
    mean_pos = (log_prob * pos_mask).sum(1) / n_pos.clamp_min(1)
    return mean_pos, n_pos


def supervised_instance_loss(
    q: torch.Tensor,
    k: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor,
    self_idx: torch.Tensor,
    bank: torch.Tensor,
    bank_labels: torch.Tensor,
    bank_kept: torch.Tensor,
    tau: float,
) -> torch.Tensor:
    """Inter-instance loss: positives = own key + kept same-pseudo-label bank entries (not self).

    The denominator runs over the own key and the whole bank minus the anchor, as in the lineage's
    ``cluster_contrastive_loss`` with CLIP pseudo-labels in place of k-means clusters.
    """
    logits = _mask_self(q @ bank.T, self_idx) / tau
    pos_mask = (labels[:, None] == bank_labels[None, :]) & bank_kept[None, :]
    pos_mask[torch.arange(len(q), device=pos_mask.device), self_idx] = False
    mean_pos, _ = _multi_positive_log_prob(logits, pos_mask.float(), (q * k).sum(1) / tau)
    return weighted_mean(-mean_pos, weights)


def class_prototypes(
    feats: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor, n_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Confidence-weighted class centroids ``mu_c = normalize(sum w~_j m_j)`` and a presence mask."""
    sums = torch.zeros(n_classes, feats.shape[1], dtype=feats.dtype, device=feats.device)
    sums.index_add_(0, labels, feats * weights[:, None])
    mass = torch.zeros(n_classes, device=feats.device).index_add_(0, labels, weights.float())
    return F.normalize(sums, dim=1), mass > 0


def prototype_loss(
    q: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor,
    prototypes: torch.Tensor,
    present: torch.Tensor,
    tau: float,
) -> torch.Tensor:
    """Cross-entropy of each anchor against class prototypes (ProtoNCE).

    Used as the inter-cluster loss (prototypes of the anchor's own domain) and as the prototype
    variant of the inter-domain loss (prototypes of another domain). Anchors whose class has no
    prototype are skipped; absent classes are masked out of the softmax.
    """
    logits = (q @ prototypes.T / tau).masked_fill(~present[None, :], _NEG)
    has_proto = present[labels]
    ce = F.cross_entropy(logits, labels, reduction="none")
    return weighted_mean(ce, weights * has_proto)


def inter_domain_loss(
    q: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor,
    other_bank: torch.Tensor,
    other_labels: torch.Tensor,
    other_kept: torch.Tensor,
    tau: float,
) -> torch.Tensor:
    """Cross-domain supervised contrast ``l(A->B)``: positives = kept bank entries of the other
    domain with the same pseudo-label, denominator = the other domain's whole bank.
    Anchors with no positive in the other domain are skipped."""
    logits = q @ other_bank.T / tau
    pos_mask = ((labels[:, None] == other_labels[None, :]) & other_kept[None, :]).float()
    mean_pos, n_pos = _multi_positive_log_prob(logits, pos_mask)
    return weighted_mean(-mean_pos, weights * (n_pos > 0))


def prompt_loss(
    image_feats: torch.Tensor, text_feats: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor, scale: float
) -> torch.Tensor:
    """Confidence-weighted image-text cross-entropy that trains the learnable prompts (§3.7)."""
    ce = F.cross_entropy(scale * image_feats @ text_feats.T, labels, reduction="none")
    return weighted_mean(ce, weights)
