"""Tell a store whose last write never finished, and probe it before opening it in-process.

An engine that dies of a signal mid-write (Qdrant Edge gets SIGBUS when its memory-mapped log
cannot grow on a full disk) can leave a store that crashes every process that opens it, the
same way, with no message. So a write runs inside :class:`WriteMarker`: a small file present
only while a write is in flight. A marker found when the store is opened (its holder's lock is
free, so that process is gone) means the last write never finished: the opener loads the
store once in a child process first (:func:`probe`), and only if that child survives loads it
itself. The normal path costs a file create and unlink per write batch, and no probe.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

MARKER = ".clair_vec.writing"


class WriteMarker:
    """Re-entrant, thread-safe: the file exists while at least one write of this handle runs."""

    def __init__(self, directory: str | os.PathLike) -> None:
        self.path = Path(directory) / MARKER
        self._depth = 0
        self._lock = threading.Lock()

    def __enter__(self) -> WriteMarker:
        with self._lock:
            if self._depth == 0:
                self.path.write_text(
                    f"pid {os.getpid()} started a write at {time.strftime('%Y-%m-%d %H:%M:%S')}. clair_vec removes this "
                    "file when the write finishes; if it is still here, that write never finished, and the next open "
                    "checks the store in a separate process first.\n"
                )
            self._depth += 1
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        with self._lock:
            self._depth -= 1
            if self._depth == 0:
                self.path.unlink(missing_ok=True)

    def stale(self) -> str | None:
        """The marker left by a write that never finished, if any (call with the store's lock held)."""
        try:
            return self.path.read_text().strip() or "(empty marker)"
        except FileNotFoundError:
            return None

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


def probe(code: str, *args: str, timeout: float = 300) -> str | None:
    """Run ``code`` in a fresh interpreter; None if it exited normally, else how it died, in
    words (``killed by SIGBUS``, ``exit status 1: <last line of stderr>``)."""
    try:
        out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"still loading after {timeout:.0f} s"
    if out.returncode == 0:
        return None
    if out.returncode < 0:
        try:
            return f"killed by {signal.Signals(-out.returncode).name}"
        except ValueError:
            return f"killed by signal {-out.returncode}"
    tail = (out.stderr.strip().splitlines() or ["no message"])[-1]
    return f"exit status {out.returncode}: {tail[:300]}"
