"""The vision tower at int8, for a CPU: the matrix multiplies of a ViT as dynamically quantised
Linears (weights quantised once, per output channel; activations per batch).

PyTorch's ``quantize_dynamic`` only quantises ``nn.Linear`` modules. ``nn.MultiheadAttention``
keeps its query/key/value projection as a bare parameter and its output projection as a Linear
subclass the quantiser skips, so a ViT quantised as it is keeps a third of its work (the
attention projections) in fp32. Each attention is first rewritten as two plain Linears around
``scaled_dot_product_attention``: the same function in fp32, and then every projection quantises.
(A tower built on open_clip's own ``Attention``, or on timm's, keeps its attention projections in
fp32: they are not modules the quantiser can see.)
"""

from __future__ import annotations

import copy
import warnings

import torch
import torch.nn.functional as F
from torch import nn


class LinearAttention(nn.Module):
    """``nn.MultiheadAttention``'s forward (eval mode) with both projections as ``nn.Linear``."""

    def __init__(self, mha: nn.MultiheadAttention) -> None:
        super().__init__()
        d = mha.embed_dim
        self.num_heads, self.batch_first = mha.num_heads, mha.batch_first
        self.in_proj = nn.Linear(d, 3 * d, bias=mha.in_proj_bias is not None)
        self.out_proj = nn.Linear(d, d, bias=mha.out_proj.bias is not None)
        with torch.no_grad():
            self.in_proj.weight.copy_(mha.in_proj_weight)
            self.out_proj.weight.copy_(mha.out_proj.weight)
            if mha.in_proj_bias is not None:
                self.in_proj.bias.copy_(mha.in_proj_bias)
            if mha.out_proj.bias is not None:
                self.out_proj.bias.copy_(mha.out_proj.bias)

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
            raise NotImplementedError("int8 attention computes outputs only, without padding or implicit causal masks")
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


def quantisable_linears(visual: nn.Module) -> set[str]:
    """The Linear layers that run as modules: an attention pool (ResNet CLIPs) reads its
    projections' ``.weight`` directly, which a quantised layer no longer has."""
    pools = [
        name
        for name, m in visual.named_modules()
        if "AttentionPool" in type(m).__name__ or "AttentionalPooler" in type(m).__name__
    ]
    return {name for name, m in visual.named_modules()
            if type(m) is nn.Linear and not any(name.startswith(p + ".") for p in pools)}  # fmt: skip


def int8_vision_tower(visual: nn.Module, arch: str, image_size: int) -> nn.Module:
    """A quantised copy of ``visual``, tried on one blank image; the original is untouched. Raises
    ValueError for a tower with nothing to quantise (a ResNet CLIP), where int8 would be fp32 under
    another name, and for one whose code cannot run quantised layers (timm's EVA reads
    ``.weight`` of its projections), so the refusal comes before a run, not inside it."""
    if not quantisable_linears(visual):
        raise ValueError(f"precision int8 quantises a vision transformer's linear layers, and {arch}'s "
                         f"vision tower ({type(visual).__name__}) has none: use fp32 (or bf16)")  # fmt: skip
    tower = copy.deepcopy(visual).float().eval()
    attention_as_linears(tower)
    with warnings.catch_warnings():
        # torch.ao's eager quantisation warns of its future removal on every call; it works in the
        # torch versions this package declares, and the notice is for us, not for someone indexing
        warnings.filterwarnings(
            "ignore", message=r".*torch\.ao\.quantization is deprecated", category=DeprecationWarning
        )
        warnings.filterwarnings(
            "ignore", message=r".*quantized tensor creation functions .* are deprecated", category=UserWarning
        )
        try:
            from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic
        except ImportError as exc:  # announced for removal from torch; torchao is its successor
            raise ValueError(f"precision int8 uses PyTorch's dynamic quantisation (torch.ao.quantization), which "
                             f"torch {torch.__version__} does not have: use fp32 (or bf16)") from exc  # fmt: skip
        # per output channel: a trained fused q/k/v weight holds three ranges, one scale would fit the widest
        spec = dict.fromkeys(quantisable_linears(tower), per_channel_dynamic_qconfig)
        tower = quantize_dynamic(tower, spec, dtype=torch.qint8)
    try:
        with torch.no_grad():
            tower(torch.zeros(1, 3, image_size, image_size))
    except Exception as exc:  # noqa: BLE001 - any failure of the tower's own code means the same thing
        raise ValueError(f"precision int8: {arch}'s vision tower ({type(visual).__name__}) does not run with its "
                         f"linear layers quantised ({type(exc).__name__}: {exc}): use fp32 (or bf16)") from exc  # fmt: skip
    return tower
