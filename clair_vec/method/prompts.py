"""Domain prompt templates (hand-crafted) and learnable CoOp-style context vectors (spec §3.2, §3.7).

Text embeddings per domain are ``t_c^d``: the template-ensemble of hand-crafted prompts, plus
(when ``prompt_side='text'``) a learned embedding whose context is class-agnostic, so it
produces domain-aware text embeddings for class names never seen in training.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from clair_vec.method.foundation import FoundationModel

DEFAULT_TEMPLATES: dict[str, list[str]] = {
    "sketch": ["a sketch of a {}.", "a drawing of a {}.", "a doodle of a {}."],
    "quickdraw": ["a sketch of a {}.", "a drawing of a {}.", "a doodle of a {}."],
    "photo": ["a photo of a {}."],
    "real": ["a photo of a {}."],
    "clipart": ["a clipart of a {}."],
    "painting": ["a painting of a {}."],
    "art_painting": ["a painting of a {}."],
    "cartoon": ["a cartoon of a {}."],
    "infograph": ["an infographic of a {}."],
}


def clean_class_name(name: str) -> str:
    """``palm_tree`` -> ``palm tree``: CLIP was trained on natural text."""
    return " ".join(name.replace("_", " ").replace("-", " ").split())


def domain_templates(domain: str, overrides: Mapping[str, Sequence[str]] | None = None) -> list[str]:
    """Templates of ``domain``; an unknown domain gets ``"a <domain> of a {}."``."""
    if overrides and domain in overrides:
        return list(overrides[domain])
    if domain in DEFAULT_TEMPLATES:
        return list(DEFAULT_TEMPLATES[domain])
    # a brace in a folder name would be read as a format field: "sk{" crashed training, "sk{0}" named the class twice
    words = clean_class_name(domain).replace("{", "(").replace("}", ")")
    return [f"a {words} of a {{}}."]


@torch.no_grad()
def hand_crafted_text_embeddings(
    foundation: FoundationModel,
    classes: Sequence[str],
    domain: str,
    overrides: Mapping[str, Sequence[str]] | None = None,
) -> torch.Tensor:
    """``(C, D)`` template-ensemble embeddings: normalise each template, average, normalise."""
    templates = domain_templates(domain, overrides)
    names = [clean_class_name(c) for c in classes]
    per_template = [foundation.encode_texts([t.format(n) for n in names]) for t in templates]
    return F.normalize(torch.stack(per_template).mean(0), dim=-1)


class PromptLearner(nn.Module):
    """Per-domain learnable context ``[V_1^d] ... [V_M^d] <class tokens> .`` for a frozen text tower.

    Context vectors start from the token embeddings of the domain's first hand-crafted phrase
    ("a sketch of a"), so an untrained learner already produces sensible prompts.
    """

    def __init__(
        self,
        foundation: FoundationModel,
        domains: Sequence[str],
        n_ctx: int = 4,
        overrides: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        super().__init__()
        self.foundation = [foundation]  # a list keeps the frozen CLIP out of this module's parameters
        self.domains = list(domains)
        self.n_ctx = n_ctx
        ctx = []
        for domain in self.domains:
            phrase = domain_templates(domain, overrides)[0].split("{}")[0].strip()
            tokens = foundation.tokenize([phrase])[0]
            n_phrase = int(tokens.argmax()) - 1  # tokens between start-of-text and end-of-text
            emb = foundation.token_embeddings(tokens[1 : 1 + min(n_phrase, n_ctx)]).detach().float().cpu()
            if emb.shape[0] < n_ctx:
                extra = torch.randn(n_ctx - emb.shape[0], emb.shape[1]) * 0.02
                emb = torch.cat([emb, extra])
            ctx.append(emb)
        self.ctx = nn.Parameter(torch.stack(ctx))  # (n_domains, n_ctx, width)

    def forward(self, classes: Sequence[str], domain: str) -> torch.Tensor:
        """``(C, D)`` normalised learned-prompt embeddings of ``classes`` in ``domain``."""
        foundation = self.foundation[0]
        placeholder = " ".join(["X"] * self.n_ctx)
        tokens = foundation.tokenize([f"{placeholder} {clean_class_name(c)}." for c in classes])
        emb = foundation.token_embeddings(tokens).float()
        ctx = self.ctx[self.domains.index(domain)].to(emb.device)
        emb = torch.cat([emb[:, :1], ctx.unsqueeze(0).expand(len(classes), -1, -1), emb[:, 1 + self.n_ctx :]], dim=1)
        return foundation.encode_token_embeddings(emb, tokens)


def combine_text_embeddings(hand: torch.Tensor, learned: torch.Tensor | None) -> torch.Tensor:
    """``t = normalize(t_hand + t_learn)``: the learned prompt is *extra* to the hand-crafted one."""
    if learned is None:
        return hand
    return F.normalize(hand + learned.to(hand.device), dim=-1)
