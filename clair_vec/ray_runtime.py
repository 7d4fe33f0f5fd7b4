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


def _causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and what it wraps, outermost first: Ray's task and actor errors carry the worker's
    exception as ``cause``, Ray Train's as ``worker_failures`` or ``controller_failure``, Ray
    Data's user-code error as ``__cause__``."""
    chain: list[BaseException] = []
    while exc is not None and all(exc is not seen for seen in chain):
        chain.append(exc)
        failures = getattr(exc, "worker_failures", None)
        inner = (getattr(exc, "cause", None) or getattr(exc, "controller_failure", None)
                 or (next(iter(failures.values()), None) if isinstance(failures, dict) else None))  # fmt: skip
        if not isinstance(inner, BaseException):
            inner = exc.__cause__  # never __context__: an error raised while another was handled is not caused by it
        exc = inner
    return chain


def job_failure(exc: BaseException, command: str) -> tuple[str, int]:
    """One line for a Ray job that failed, and its exit status, its secrets scrubbed. The reason is
    a worker's own error, not the pages of Ray's wrappers around it: the outermost error of ours
    (bad input, an unreachable or refused store; exit 2), else the innermost cause (exit 1).
    130 for an interrupt (Ctrl-C, or the SIGTERM of ``ray job stop``)."""
    from clair_vec.errors import ClairVecError
    from clair_vec.store.redaction import scrub

    chain = _causes(exc)
    if any(isinstance(e, KeyboardInterrupt) for e in chain):
        return (f"{command}: interrupted; what was written is kept: run the same command again to resume", 130)
    root = chain[-1]
    # the outermost error of ours: it says more than the OS error it wraps (a missing weights file)
    user = next((e for e in chain if isinstance(e, (ClairVecError, ValueError, FileNotFoundError))
                 and not type(e).__name__.startswith("RayTaskError")), None)  # fmt: skip
    shown = user or root
    text = next((line.strip() for line in str(shown).splitlines() if line.strip()), "")
    what = text if user is not None else f"{type(root).__name__}: {text}" if text else type(root).__name__
    return f"{command}: error: {scrub(what)}", 2 if user is not None else 1


def report_job_failure(exc: BaseException, command: str, verbose: bool) -> int:
    """Print a failed Ray job's line (:func:`job_failure`) to stderr, after its scrubbed traceback
    with ``verbose`` (Ray's wrappers carry the worker's in their text); returns the exit status."""
    import traceback

    from clair_vec.store.redaction import scrub

    line, code = job_failure(exc, command)
    if verbose and code != 130:
        print(scrub("".join(traceback.format_exception(exc))), file=sys.stderr, end="")
    elif code == 1:  # not a user error: where it happened matters
        line += " (run with -v for the traceback)"
    print(line, file=sys.stderr)
    return code

