"""Make ``import torchvision`` work beside a torch build it was not compiled against.

PyPI's torchvision 0.28 wheel ships a C++ extension that fails to load beside the CPU torch 2.13
wheel; its Python part then dies registering fake kernels for ``torchvision::nms``/``qnms``,
ops that only the extension would have defined. open_clip imports torchvision for its image
transforms, which are pure Python, so declaring those op schemas (with no kernel) is enough.
The shim runs only when the plain import fails, so a matching torch/torchvision pair is untouched.
"""

from __future__ import annotations

import sys

_MISSING_OPS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_library = None  # kept alive: dropping the Library object would unregister the schemas


def ensure_torchvision() -> None:
    """Import torchvision, declaring the op schemas it expects if the plain import fails."""
    global _library
    try:
        import torchvision  # noqa: F401

        return
    except RuntimeError as exc:
        if "torchvision::" not in str(exc):
            raise
        first_error = exc
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
    import torch

    _library = torch.library.Library("torchvision", "FRAGMENT")
    for op, schema in _MISSING_OPS.items():
        if not hasattr(torch.ops.torchvision, op) or not _has_schema(op):
            _library.define(schema)
    try:
        import torchvision  # noqa: F401
    except RuntimeError as exc:  # pragma: no cover - only on a new, unknown incompatibility
        raise RuntimeError(
            f"torchvision could not be imported even after declaring {sorted(_MISSING_OPS)}: {exc}. "
            "Install a torchvision built for this torch (see pyproject.toml pins)."
        ) from first_error


def _has_schema(op: str) -> bool:
    import torch

    try:
        getattr(torch.ops.torchvision, op).default  # noqa: B018
        return True
    except (AttributeError, RuntimeError):
        return False
