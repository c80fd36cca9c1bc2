"""The ``m2det`` command line: the parser, and ``main`` mapping exceptions to the exit codes.

Argument parsing and printing only: every command is one library call
(:mod:`m2det_impl.cli.commands`). Exit codes: :mod:`m2det_impl.exit_codes`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from contextlib import contextmanager
from typing import Iterator, NoReturn, Optional, Sequence

from m2det_impl import __version__
from m2det_impl.cli.commands import COMMANDS, MODULES
from m2det_impl.errors import M2DetError
from m2det_impl.exit_codes import EXIT_BAD_INPUT, EXIT_CODES, EXIT_INTERNAL, EXIT_INTERRUPTED
from m2det_impl.logs import RESULT, ROOT

__all__ = ["build_parser", "main"]

EXIT_EPILOG = "exit codes: " + "; ".join(f"{code} {meaning}" for code, meaning in EXIT_CODES.items())


class OneLineErrorParser(argparse.ArgumentParser):
    """A usage error is one line on stderr (and exit 2), not a page of usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="m2det", description="M2Det (VGG16, COCO) inference pipeline and conformance tool.", epilog=EXIT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"m2det-conformance {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineErrorParser)

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text, epilog=EXIT_EPILOG,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
        p.add_argument("--verbose", "-v", action="store_true", help="debug messages too")
        p.set_defaults(func=COMMANDS[name])
        return p

    for name, module in MODULES.items():
        module.configure(add(name, module.HELP))
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run one command; returns its exit code (never raises, bar SystemExit from argparse)."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    if args.command is None:
        # `m2det` alone is a question, not a request for a job that may export 530 MB and run for minutes
        parser.print_usage(sys.stderr)
        log("m2det: error: give a command, e.g. `m2det run` (the whole pipeline on the bundled images); "
            "`m2det --help` lists them")
        return EXIT_BAD_INPUT
    try:
        with _console_logging(verbose=getattr(args, "verbose", False)):
            return int(args.func(args) or 0)
    except KeyboardInterrupt:
        log(_interrupted(args))
        return EXIT_INTERRUPTED
    except (M2DetError, OSError) as exc:
        if os.environ.get("M2DET_DEBUG"):
            raise
        log(f"m2det {args.command}: error: {_one_line(exc)}")
        return EXIT_BAD_INPUT
    except Exception as exc:  # noqa: BLE001 - the safety net: a traceback helps no user of a release gate
        if os.environ.get("M2DET_DEBUG"):
            raise
        log(f"m2det {args.command}: internal error: {type(exc).__name__}: {_one_line(exc)} "
            "(a bug; rerun with M2DET_DEBUG=1 for the traceback)")
        return EXIT_INTERNAL


def _interrupted(args: argparse.Namespace) -> str:
    """The interruption message, true to the command: ``RESUMES`` in its module says it resumes, and its
    ``resume_refused(args)``, if it has one, why these options do not (several devices, say)."""
    module = MODULES.get(args.command)
    resumes = bool(getattr(module, "RESUMES", False))
    refused = getattr(module, "resume_refused", None)
    reason = refused(args) if resumes and refused is not None else None
    if resumes and reason is None:
        return f"\nm2det {args.command}: interrupted; partial results are kept, run the same command again to resume"
    if resumes:  # a resuming command with options that do not: its outputs so far stay, unfinished
        return (f"\nm2det {args.command}: interrupted; what was written so far is kept but incomplete (no "
                f"summary), and the same command starts over ({reason})")
    which = " and ".join(f"m2det {name}" for name, m in MODULES.items() if getattr(m, "RESUMES", False))
    return (f"\nm2det {args.command}: interrupted; nothing half-written is left (its files are written whole), "
            f"and the same command starts over (only {which} resume)")


def log(message: str) -> None:
    """A line on stderr from the command line itself (interruptions, errors)."""
    print(message, file=sys.stderr, flush=True)


class _ConsoleHandler(logging.Handler):
    """The library's log records on the console: results (:data:`RESULT`) on stdout,
    everything else on stderr, the message alone. The streams are looked up at
    each record, so a caller that swaps ``sys.stdout`` (pytest's capsys) sees them."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = sys.stdout if record.levelno == RESULT else sys.stderr
            print(self.format(record), file=stream, flush=True)
        except Exception:  # noqa: BLE001 - logging's own contract: a handler never raises
            self.handleError(record)


@contextmanager
def _console_logging(verbose: bool) -> Iterator[None]:
    """The package logger shows on the console for one command (INFO and up;
    ``--verbose``: DEBUG too), then is
    left as it was, so in-process callers (tests, notebooks) never pile up handlers."""
    handler = _ConsoleHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    level = logging.DEBUG if verbose else logging.INFO
    previous_level, previous_propagate = ROOT.level, ROOT.propagate
    ROOT.addHandler(handler)
    ROOT.setLevel(level)
    ROOT.propagate = False  # the console handler shows it; a root handler the caller set up would repeat it
    try:
        yield
    finally:
        ROOT.removeHandler(handler)
        ROOT.setLevel(previous_level)
        ROOT.propagate = previous_propagate


def _one_line(exc: BaseException) -> str:
    """The message of an error on one line; a bare OSError (a full disk, say)
    gets its file and reason rather than ``[Errno 28] ...``."""
    if isinstance(exc, OSError) and not isinstance(exc, M2DetError) and exc.strerror:
        where = f"{exc.filename}: " if exc.filename else ""
        text = f"{where}{exc.strerror}"
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
