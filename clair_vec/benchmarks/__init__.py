"""Speed and memory measurements, run as scripts, never as timed tests: backends (embedded or a
server URI) against exact search, and the service under load. Numbers are reported as ratios
against a baseline measured in the same run.

May import anything below it. Nothing imports it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import NoReturn


def run_script(main: Callable[[], int | None]) -> NoReturn:
    """A benchmark's ``python -m`` entry: a bad option or input (an architecture with nothing to
    quantise, a folder that is not there) is one line and exit 2, as ``clair-vec`` reports it,
    not a traceback; Ctrl-C is exit 130."""
    from clair_vec.errors import ClairVecError
    from clair_vec.store.redaction import scrub

    try:
        code = main() or 0
    except (ClairVecError, ValueError, FileNotFoundError) as exc:
        name = sys.argv[0].rsplit("/", 1)[-1].removesuffix(".py")
        print(f"benchmark {name}: error: {scrub(str(exc))}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        code = 130
    raise SystemExit(code)
