"""``nn.MultiheadAttention`` as two plain ``nn.Linear`` projections around
``scaled_dot_product_attention``: the same function, in a form two speed options need.

- int8 (:mod:`~clair_vec.method.int8_encoder`): PyTorch's dynamic quantisation quantises
  ``nn.Linear`` modules only, and MultiheadAttention keeps its query/key/value projection as a
  bare parameter.
- bf16 on a CPU: under autocast, MultiheadAttention projects its (sequence-first, so strided)
  input through a batched matmul that copies for every call. ViT-B-32 at 2 to 32 images a batch
  ran 2x to 15x *slower* than fp32 that way; rewritten, bf16 runs faster than fp32 at every batch
  size (see :meth:`~clair_vec.method.foundation.FoundationModel.cpu_bf16_visual`).

A rewritten attention shares its parameters with the original: nothing is copied.
"""

from __future__ import annotations

import copy
import itertools

import torch
import torch.nn.functional as F
from torch import nn


class LinearAttention(nn.Module):
    """``nn.MultiheadAttention``'s forward (eval mode) with both projections as ``nn.Linear``."""

    def __init__(self, mha: nn.MultiheadAttention) -> None:
        super().__init__()
        d = mha.embed_dim
        self.num_heads, self.batch_first = mha.num_heads, mha.batch_first
        # the attention's own parameters, shared, not copied: made on the meta device, the Linears
        # allocate nothing before they take them
        self.in_proj = nn.Linear(d, 3 * d, bias=mha.in_proj_bias is not None, device="meta")
        self.out_proj = nn.Linear(d, d, bias=mha.out_proj.bias is not None, device="meta")
        self.in_proj.weight, self.out_proj.weight = mha.in_proj_weight, mha.out_proj.weight
        if mha.in_proj_bias is not None:
            self.in_proj.bias = mha.in_proj_bias
        if mha.out_proj.bias is not None:
            self.out_proj.bias = mha.out_proj.bias

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = False,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,  # a hint about attn_mask, which carries the causal mask itself
    ) -> tuple[torch.Tensor, None]:
        if key_padding_mask is not None or need_weights or (is_causal and attn_mask is None):
            raise NotImplementedError("LinearAttention computes outputs only, without padding or implicit causal masks")
        q, k, v = (t if self.batch_first else t.transpose(0, 1) for t in (query, key, value))
        n, length, d = q.shape
        heads = self.num_heads

        def split(x: torch.Tensor) -> torch.Tensor:
            return x.reshape(x.shape[0], x.shape[1], heads, d // heads).transpose(1, 2)

        if key is query and value is query:  # self-attention: one projection GEMM for all three
            q, k, v = self.in_proj(q).chunk(3, dim=-1)
        else:  # cross-attention: each input through its third of the projection
            q, k, v = (
                self.in_proj(q).chunk(3, dim=-1)[0],
                self.in_proj(k).chunk(3, dim=-1)[1],
                self.in_proj(v).chunk(3, dim=-1)[2],
            )
        if attn_mask is not None and attn_mask.dtype == torch.bool:
            attn_mask = ~attn_mask  # MultiheadAttention masks out True; scaled_dot_product_attention keeps True
        if attn_mask is not None and attn_mask.dim() == 3:  # (N * heads, L, S), as MultiheadAttention takes it
            attn_mask = attn_mask.view(n, heads, *attn_mask.shape[1:])
        out = F.scaled_dot_product_attention(split(q), split(k), split(v), attn_mask=attn_mask)
        out = self.out_proj(out.transpose(1, 2).reshape(n, length, d))
        return (out if self.batch_first else out.transpose(0, 1)), None


def _rewritable(mha: nn.Module) -> bool:
    """A MultiheadAttention whose function LinearAttention reproduces: one width for query, key and
    value, and no learned key/value bias rows or zero attention (which open_clip never sets)."""
    return (isinstance(mha, nn.MultiheadAttention) and mha._qkv_same_embed_dim
            and mha.bias_k is None and mha.bias_v is None and not mha.add_zero_attn)  # fmt: skip


def attention_as_linears(module: nn.Module) -> int:
    """Swap, in place, each rewritable MultiheadAttention for a LinearAttention; how many."""
    swapped = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if _rewritable(child):
                setattr(parent, name, LinearAttention(child))
                swapped += 1
    return swapped


def attention_view(module: nn.Module) -> tuple[nn.Module, int]:
    """A copy of ``module``'s structure with each rewritable attention as a LinearAttention, sharing
    every parameter and buffer with ``module`` (no second copy of the weights); and how many were
    rewritten. With none, ``module`` itself."""
    memo = {id(t): t for t in itertools.chain(module.parameters(), module.buffers())}
    view = copy.deepcopy(module, memo)
    swapped = attention_as_linears(view)
    return (view, swapped) if swapped else (module, 0)
