"""Which precision runs on which kind of device, stated once: the encoder checks it before a
forward (``pixel_batches.autocast``) and the Ray driver before it starts a cluster's encoders,
which is why this module imports no torch."""

from __future__ import annotations


def device_refusal(precision: str, *, gpu: bool) -> tuple[str, str] | None:
    """``(problem, fix)`` when ``precision`` cannot run on a GPU (``gpu``) or on a CPU, else None."""
    if precision == "int8" and gpu:
        return "precision int8 runs on a CPU (PyTorch's dynamic quantisation)", "use fp16 or bf16"
    if precision == "fp16" and not gpu:
        return "precision fp16 needs a CUDA device", "use bf16 or fp32"
    return None
