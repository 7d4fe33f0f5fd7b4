"""``clair-vec``: train, index, search, reindex, compare, alias, evaluate, benchmark, report, serve, demo, bootstrap-clip,
backends.

One module per group of commands; each adds its subcommands to the parser with ``add_commands``.
Commands import what they need when they run, so ``clair-vec --help`` and argument errors answer
before torch or a database client is imported.

May import: every other part of clair_vec (it is the top of the layout); nothing imports it.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys

from clair_vec.cli import backends, benchmark, evaluate, gallery, lifecycle, serve, train
from clair_vec.cli.common import EPILOG, Formatter
from clair_vec.errors import ClairVecError

DESCRIPTION = ("Search photos with a sketch, a clipart, a painting or words: train a CLAIR model, index a gallery "
               "into Milvus or Qdrant, search it, serve it.")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="clair-vec", description=DESCRIPTION, epilog=EPILOG, formatter_class=Formatter)
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func, helptext: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=helptext, description=helptext, formatter_class=Formatter, epilog=EPILOG)
        sp.set_defaults(func=func)
        return sp

    for group in (train, gallery, lifecycle, evaluate, benchmark, serve, backends):
        group.add_commands(add)
    return p


def os_problem(exc: OSError) -> str:
    """What the operating system refused, where, and what to do, in one line. Errors that only
    subclass OSError (a network library's, a certificate check's) keep their own words: their
    errno, where they have one, is not the operating system's."""
    from clair_vec.store.redaction import scrub

    if type(exc).__module__ != "builtins" or not exc.strerror:
        return scrub(str(exc)) or type(exc).__name__
    where = f" ({exc.filename})" if exc.filename else " (the output)" if exc.errno == errno.ENOSPC else ""
    fixes = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "the disk quota is used up",
             errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied", errno.EPERM: "not permitted",
             errno.EFBIG: "a file reached the largest size this process may write (`ulimit -f`, or the file system's limit)"}  # fmt: skip
    what = fixes.get(exc.errno or 0, exc.strerror)
    hint = ("; free some space and run the same command again (what was written whole is kept)"
            if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "")  # fmt: skip
    return scrub(f"{what}{where}{hint}")


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's own flush at exit does not fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def _engine_traceback_off(record: logging.LogRecord) -> bool:
    """Milvus Lite logs its own traceback of a failure the command then says in one line; its
    message, often the cause (a corrupt manifest, a recovered log), stays. ``-v`` shows all."""
    if record.name.startswith("milvus_lite"):
        record.exc_info, record.exc_text, record.stack_info = None, None, None
    return True


#: what an interrupted command left, said truthfully: only the writers resume (every write is whole
#: and ids are content hashes, so the same command picks up where one stopped); training restarts
AFTER_INTERRUPT = {
    "index": "what was indexed is kept: run the same command again to resume",
    "reindex": "what was re-embedded is kept: run the same command again to resume",
    "demo": "its data and stand-in CLIP are kept: run the same command again to go on from them",
    "train": "a model is saved only once training ends, in one step, so --out holds the earlier model unless this "
             "run printed 'saved'; run it again to train anew (from cached features with --cache-dir)",
    "bootstrap-clip": "the weights are written only at the end, in one step; run it again to start over",
    "evaluate": "a report's files are moved into place only at the end; run it again to redraw it",
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        for handler in logging.getLogger().handlers:
            handler.addFilter(_engine_traceback_off)
    try:
        code = args.func(args) or 0  # a command may answer with its own exit status (backends --check: 1)
        sys.stdout.flush()  # a reader that went away shows here, not in the interpreter's last flush
    except (ClairVecError, ValueError, FileNotFoundError) as exc:
        from clair_vec.store.redaction import scrub

        print(f"clair-vec: error: {scrub(str(exc))}", file=sys.stderr)  # a URI's password never reaches a terminal
        code = 2
    except BrokenPipeError:
        # the reader went away (`clair-vec search ... | head -1`): what it wanted it got; say nothing more
        # and keep the interpreter's own flush at exit from failing again
        _quiet_stdout()
        code = 141  # 128 + SIGPIPE, what a shell reports for a command its reader closed on
    except OSError as exc:  # a full disk, a read-only folder: the machine's words, on one line
        print(f"clair-vec: error: {os_problem(exc)}", file=sys.stderr)
        try:  # what was printed before the error still reaches its reader
            sys.stdout.flush()
        except OSError:  # the output itself is what failed: keep the exit's own flush from failing again
            _quiet_stdout()
        code = 1
    except Exception as exc:  # noqa: BLE001 - a bug or a plugin's own error: one scrubbed line, never a raw traceback
        import traceback

        from clair_vec.store.redaction import scrub

        if args.verbose:
            print(scrub(traceback.format_exc()), file=sys.stderr, end="")
        print(f"clair-vec: error: {type(exc).__name__}: {scrub(str(exc))}"
              + ("" if args.verbose else " (run with -v for the traceback)"), file=sys.stderr)  # fmt: skip
        code = 1
    except KeyboardInterrupt:
        after = AFTER_INTERRUPT.get(args.command)
        print(f"\nclair-vec: interrupted{'; ' + after if after else ''}", file=sys.stderr)
        code = 130
    from clair_vec.ray_runtime import exit_process, started_here

    if started_here():  # `serve --ray` ran a Ray driver here: leave without the interpreter's teardown
        exit_process(code)
    return code
