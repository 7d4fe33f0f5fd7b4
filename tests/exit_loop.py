"""Run pytest on the given arguments several times, each in a fresh process, and fail on any
non-zero exit status: a crash at interpreter exit (after every test passed) is intermittent, so
the teardown-heavy tests run more than once. ``make test`` runs it after the suite.

    python tests/exit_loop.py --runs 3 -- -q tests/test_exit.py tests/test_service.py
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=3, help="how many times to run pytest")
    p.add_argument("pytest_args", nargs=argparse.REMAINDER, help="arguments for pytest, after --")
    a = p.parse_args(argv)
    args = [x for x in a.pytest_args if x != "--"] if a.pytest_args[:1] == ["--"] else a.pytest_args
    for n in range(1, a.runs + 1):
        t0 = time.monotonic()
        out = subprocess.run([sys.executable, "-X", "faulthandler", "-m", "pytest", *args], capture_output=True, text=True)
        last = (out.stdout.strip().splitlines() or [""])[-1]
        print(f"exit_loop.py: run {n} of {a.runs} exited with status {out.returncode} in {time.monotonic() - t0:.0f} s: {last}",
              flush=True)  # fmt: skip
        if out.returncode != 0:
            print(out.stdout[-6000:] + out.stderr[-6000:], flush=True)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
