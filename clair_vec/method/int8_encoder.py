"""The vision tower at int8, for a CPU: the matrix multiplies of a ViT as dynamically quantised
Linears (weights quantised once, per output channel; activations per batch).

PyTorch's ``quantize_dynamic`` only quantises ``nn.Linear`` modules. ``nn.MultiheadAttention``
keeps its query/key/value projection as a bare parameter and its output projection as a Linear
subclass the quantiser skips, so a ViT quantised as it is keeps a third of its work (the
attention projections) in fp32. Each attention is first rewritten as two plain Linears around
``scaled_dot_product_attention`` (:mod:`~clair_vec.method.linear_attention`): the same function
in fp32, and then every projection quantises.
(A tower built on open_clip's own ``Attention``, or on timm's, keeps its attention projections in
fp32: they are not modules the quantiser can see.)
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from clair_vec.method.linear_attention import attention_as_linears


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
