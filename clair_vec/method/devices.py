"""One device rule for every entry point: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.

``auto`` takes CUDA when PyTorch sees a GPU and the CPU otherwise. A device that is not there is
one clear error naming what is there, never a CUDA stack trace from deep inside a forward pass.
Models and collections stay device-free: weights are saved from and loaded onto the CPU, and the
model moves what it embeds to its own device (:meth:`clair_vec.method.model.ClairModel.to`).
"""

from __future__ import annotations

import re

import torch

from clair_vec.errors import ClairVecError

CHOICES = "auto, cpu, cuda or cuda:N"
_PATTERN = re.compile(r"^(auto|cpu|cuda|cuda:\d+|meta)$")


class DeviceError(ClairVecError, ValueError):
    """A device that does not exist here, or is not one of :data:`CHOICES`."""


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """The ``torch.device`` for ``spec``; ``None`` and ``"auto"`` mean CUDA when available, else the CPU.

    ``meta`` is accepted for tests that check device hand-offs without a GPU."""
    if isinstance(spec, torch.device):
        spec = str(spec)
    text = (spec or "auto").strip().lower()
    if not _PATTERN.match(text):
        raise DeviceError(f"--device {spec!r} is not a device; use {CHOICES}")
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text.startswith("cuda"):
        if not torch.cuda.is_available():
            build = "a CPU-only build of PyTorch" if torch.version.cuda is None else "no GPU visible to this process"
            raise DeviceError(f"--device {text}: CUDA is not available here ({build}); use --device cpu or auto")
        index = int(text.split(":")[1]) if ":" in text else 0
        count = torch.cuda.device_count()
        if index >= count:
            raise DeviceError(f"--device {text}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    return torch.device(text)


def set_cpu_threads(threads: int | None) -> None:
    """Run this process's CPU forwards on ``threads`` torch threads (None: leave torch's choice)."""
    if threads is None:
        return
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a whole number of at least 1, got {threads!r}")
    torch.set_num_threads(threads)


def cpu_threads() -> int:
    """The torch threads this process's CPU forwards run on."""
    return torch.get_num_threads()


def module_device(module: torch.nn.Module) -> torch.device:
    """Where ``module``'s parameters live (the CPU for a module without any)."""
    return next((p.device for p in module.parameters()), torch.device("cpu"))
