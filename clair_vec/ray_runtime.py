"""What every Ray entry point shares (training, bulk indexing, Ray Serve): the ``--gpus auto|yes|no``
rule, a Ray session that is started and stopped by whoever needs it, and leaving a process that
ran a Ray driver. No torch here: the indexing driver imports it.

Ray's C++ core worker keeps threads (``worker.io``, the GCS client's) after ``ray.shutdown()``;
one of them can run into freed memory, and the process dies of a segmentation fault after its
work succeeded: at the interpreter's teardown, and (seen in CI under ``ray job submit``) while the
command is still printing its result. Ray's own workers leave with ``os._exit`` for this reason.
So a command that runs a Ray driver declares it first (:func:`leave_through_exit_process`): its
Ray session then stays connected to the end, and :func:`exit_process` flushes, disconnects from a
Ray it started only, and leaves with ``os._exit`` in the same breath: no freed-memory window. A
cluster it joined (``RAY_ADDRESS``, as ``ray job submit`` sets it) sees the driver's exit and
cleans up after it, as for any job. The test suite never runs a Ray driver inside the pytest process.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager

GPU_CHOICES = ("auto", "yes", "no")


def check_gpu_choice(gpus: str) -> None:
    if gpus not in GPU_CHOICES:
        raise ValueError(f"gpus must be auto, yes or no, got {gpus!r}")


def gpus_each(gpus: str, count: int, noun: str) -> float:
    """1.0 when ``count`` ``noun`` (workers, actors) get a GPU each, else 0.0. ``auto`` uses GPUs
    only when the connected cluster has one for each; ``yes`` refuses a cluster with too few."""
    import ray

    check_gpu_choice(gpus)
    have = ray.cluster_resources().get("GPU", 0)
    if gpus == "yes" and have < count:
        raise ValueError(
            f"{count} GPU {noun} requested but the Ray cluster has {have:g} GPUs; lower --{noun} or pass --gpus no"
        )
    return 1.0 if gpus == "yes" or (gpus == "auto" and have >= count) else 0.0


_started_here = False
_joined = False  # the Ray this process uses was already running (RAY_ADDRESS)
_exit_owner = False  # the process leaves through exit_process, which ends the Ray session


def leave_through_exit_process() -> None:
    """Declare, before any Ray work, that this process ends with :func:`exit_process`: the Ray
    session is then ended there, right before ``os._exit``, instead of at the end of each block."""
    global _exit_owner
    _exit_owner = True


@contextmanager
def ray_session() -> Iterator[bool]:
    """Connect to the Ray of ``RAY_ADDRESS`` (``ray job submit`` sets it), or start a local one, for
    the duration of the block; yields whether this call started it. A Ray this call started is
    shut down at the end, so no worker or controller outlives the job; one it joined is left alone."""
    global _started_here, _joined
    import ray

    started = not ray.is_initialized()
    if started:
        _joined = os.environ.get("RAY_ADDRESS", "") not in ("", "local")  # "local": a new Ray of this process's own
        ray.init()
        _started_here = True
    try:
        yield started
    finally:
        if started and not _exit_owner:
            ray.shutdown()


def started_here() -> bool:
    """Whether this process started a Ray (and so must leave through :func:`exit_process`)."""
    return _started_here


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt in the block, so a service stopped by its supervisor runs
    its cleanup (Serve shutdown, ``ray.shutdown``) instead of dying with Ray's processes still up."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def exit_process(code: int) -> None:
    """End a command that ran a Ray driver in this process: flush, then leave without the
    interpreter's teardown (see the module docstring). Elsewhere an ordinary ``sys.exit``."""
    if not _started_here:
        sys.exit(code)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    from clair_vec.store.backend import close_open_handles

    close_open_handles()
    if _exit_owner and not _joined:
        import ray

        if ray.is_initialized():
            ray.shutdown()  # stops the local Ray this process started; nothing runs between it and the exit
    os._exit(code)
