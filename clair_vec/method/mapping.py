"""Closed-form cross-domain mapping learned from CLIP text embeddings only (spec §3.8).

For the class-paired text embeddings ``T_A`` and ``T_B`` of a source domain and the pivot
(gallery) domain, fit ``W`` with ``W t_c^A ~ t_c^B`` and apply ``f -> normalize(W f + b)`` to
image features of the source domain. Solves run in float64 with ``torch.linalg.solve``; the
ridge term is mandatory because fewer classes than dimensions make the Gram matrices singular.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

from clair_vec.errors import UnknownDomainError


def fit_mapping(
    source: torch.Tensor, target: torch.Tensor, method: str = "ridge_identity", lam: float = 1.0, eps: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fit ``(W, b)`` mapping rows of ``source`` (C, D) onto rows of ``target`` (C, D).

    ridge_identity: ``argmin ||W T_A - T_B||^2 + lam ||W - I||^2 = (T_B T_A' + lam I)(T_A T_A' + lam I)^-1``
    ridge:          ``argmin ||W T_A - T_B||^2 + lam ||W||^2``
    sylvester:      ``argmin ||T_A - W' T_B||^2 + lam ||W T_A - T_B||^2`` (SAE-style, both directions)
    translation:    ``W = I``, ``b = mean(T_B) - mean(T_A)``
    """
    if source.shape != target.shape:
        raise ValueError(f"source {tuple(source.shape)} and target {tuple(target.shape)} text embeddings differ in shape")
    a = source.double().T  # (D, C): the spec's column convention
    b = target.double().T
    d = a.shape[0]
    eye = torch.eye(d, dtype=torch.float64)
    bias = torch.zeros(d, dtype=torch.float64)
    if method == "ridge_identity":
        w = _solve_right(b @ a.T + lam * eye, a @ a.T + lam * eye)
    elif method == "ridge":
        w = _solve_right(b @ a.T, a @ a.T + lam * eye)
    elif method == "sylvester":
        w = solve_sylvester_sym(b @ b.T + eps * eye, lam * (a @ a.T) + eps * eye, (1 + lam) * (b @ a.T))
    elif method == "translation":
        w = eye
        bias = b.mean(1) - a.mean(1)
    else:
        raise ValueError(f"unknown mapping {method!r}; use ridge_identity, ridge, sylvester or translation")
    return w.float(), bias.float()


def _solve_right(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``Y X^-1`` for symmetric ``X`` without forming the inverse: ``(X^-1 Y')' = solve(X, Y')'``."""
    return torch.linalg.solve(x, y.T).T


def solve_sylvester_sym(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Solve ``A X + X B = C`` for symmetric positive-definite ``A`` and ``B`` by eigendecomposition."""
    ea, ua = torch.linalg.eigh(a)
    eb, ub = torch.linalg.eigh(b)
    return ua @ ((ua.T @ c @ ub) / (ea[:, None] + eb[None, :])) @ ub.T


class DomainMapping:
    """Per-domain maps into the pivot domain; the pivot itself maps by identity."""

    def __init__(self, pivot: str, maps: Mapping[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.pivot = pivot
        self.maps = {k: (w.float(), b.float()) for k, (w, b) in maps.items() if k != pivot}

    @classmethod
    def fit(
        cls, text_embeddings: Mapping[str, torch.Tensor], pivot: str, method: str = "ridge_identity", lam: float = 1.0,
        *, center: bool = False,
    ) -> DomainMapping:
        """Maps of every domain's class text embeddings onto the pivot's. ``center``: each domain's
        embeddings minus their mean over the classes, for image features centred per domain
        (:mod:`clair_vec.method.centering`): with the domain offset gone from both, the map fits
        how the classes are laid out in each domain instead of the offset between domains."""
        if pivot not in text_embeddings:
            raise UnknownDomainError(pivot, list(text_embeddings))
        if center:
            text_embeddings = {d: t - t.mean(0, keepdim=True) for d, t in text_embeddings.items()}
        target = text_embeddings[pivot]
        maps = {d: fit_mapping(t, target, method, lam) for d, t in text_embeddings.items() if d != pivot}
        return cls(pivot, maps)

    @property
    def domains(self) -> list[str]:
        return sorted([self.pivot, *self.maps])

    def apply(self, feats: torch.Tensor, domain: str) -> torch.Tensor:
        """Map ``(N, D)`` normalised features of ``domain`` into the pivot domain (renormalised)."""
        if domain == self.pivot:
            return feats
        if domain not in self.maps:
            raise UnknownDomainError(domain, self.domains)
        w, b = self.maps[domain]
        return F.normalize(feats @ w.T.to(feats) + b.to(feats), dim=-1)

    def state_dict(self) -> dict:
        return {"pivot": self.pivot, "maps": {d: {"W": w, "b": b} for d, (w, b) in self.maps.items()}}

    @classmethod
    def from_state_dict(cls, state: dict) -> DomainMapping:
        return cls(state["pivot"], {d: (m["W"], m["b"]) for d, m in state["maps"].items()})
