"""Decoding and preprocessing off the encode thread, and the precision the encoder runs at.

Worker *threads*, not DataLoader worker processes: the callers hold gRPC channels (Milvus), a
file-locked store (Milvus Lite, Qdrant Edge) or a Ray worker, none of which survive a fork, and
PIL's decoders and resizes and torch's tensor ops release the GIL, so threads decode in parallel.
Batches are prepared ahead while the model encodes the previous one.
"""

from __future__ import annotations

import itertools
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from typing import TypeVar

import torch

from clair_vec.method.precision_devices import device_refusal

K = TypeVar("K")
T = TypeVar("T")
R = TypeVar("R")

#: precision name -> autocast dtype (None: plain fp32, or int8: the vision tower's linear layers
#: quantised to int8 with dynamic activation scales, on a CPU; see FoundationModel.encode_pixels)
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16, "int8": None}
#: batches prepared ahead of the one being encoded
AHEAD = 2


def check_precision(precision: str | None) -> str:
    name = precision or "fp32"
    if name not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return name


def autocast(device: torch.device | str, precision: str | None) -> AbstractContextManager:
    """The encoder's mixed-precision context; fp32 is no context at all (bit-identical to before)."""
    name = check_precision(precision)
    dtype = PRECISIONS[name]
    kind = torch.device(device).type
    refusal = device_refusal(name, gpu=kind != "cpu")
    if refusal is not None:
        problem, fix = refusal
        raise ValueError(f"{problem}; on a {'CPU' if kind == 'cpu' else 'GPU'} {fix}")
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=kind, dtype=dtype)


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, which containers and ``taskset`` narrow)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def loader_threads() -> int:
    """Decode threads: every core this process may use but one, which the encoder keeps; at most 16
    (past that, PIL decoding of one batch is no longer the bottleneck)."""
    env = os.environ.get("CLAIR_VEC_LOADER_THREADS")
    if env and env.isdigit() and int(env) > 0:
        return int(env)
    return max(1, min(16, usable_cores() - 1))


def default_batch_size(device: torch.device | str) -> int:
    """Images per encoder call: a GPU is starved by CPU-sized batches."""
    return 256 if torch.device(device).type == "cuda" else 64


def prepared_batches(
    batches: Iterable[tuple[K, Sequence[T]]],
    prepare: Callable[[T], R],
    *,
    workers: int | None = None,
    capture: tuple[type[BaseException], ...] = (),
) -> Iterator[tuple[K, list[R | BaseException]]]:
    """``(key, [prepare(item) ...])`` for each ``(key, items)`` batch, in order, prepared by worker
    threads while the caller works on the batch before. ``batches`` is drawn lazily, at most
    :data:`AHEAD` batches ahead of the caller. An exception of a ``capture`` type is returned in
    its item's place (one bad image does not fail its batch); any other is raised to the caller."""
    source = iter(batches)
    with ThreadPoolExecutor(max_workers=workers or loader_threads(), thread_name_prefix="clair-decode") as pool:
        pending: deque[tuple[K, list[Future]]] = deque()

        def submit() -> None:
            for key, items in itertools.islice(source, 1):
                pending.append((key, [pool.submit(prepare, it) for it in items]))

        try:
            for _ in range(AHEAD):
                submit()
            while pending:
                key, futures = pending.popleft()
                submit()
                out: list[R | BaseException] = []
                for f in futures:
                    exc = f.exception()
                    if exc is None:
                        out.append(f.result())
                    elif capture and isinstance(exc, capture):
                        out.append(exc)
                    else:
                        raise exc
                yield key, out
        finally:
            # an error or an abandoned generator: queued work is dropped, not decoded for nobody
            for _, futures in pending:
                for f in futures:
                    f.cancel()


def to_device(pixels: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """A batch onto the encoder's device: through pinned memory, without blocking, to a GPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return pixels.pin_memory().to(device, non_blocking=True)
    return pixels.to(device)
