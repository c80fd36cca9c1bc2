"""``m2det report``: its options, and the one library call it makes."""

from __future__ import annotations

import argparse
from pathlib import Path

from m2det_impl.cli.common import echo
from m2det_impl.exit_codes import EXIT_OK

HELP = "conformance report of a run folder, side by side with the guide's figures"


def configure(p: argparse.ArgumentParser) -> None:
    """The options of ``m2det report``."""
    p.add_argument("runs", nargs="+", help="folders written by m2det run (one per backend/batch size)")
    p.add_argument("--bench", help="bench.json from m2det bench")
    p.add_argument("--compare", action="append", metavar="JSON",
                   help="compare.json from m2det compare (--emulate fp16, --int8), repeatable: precision variants")
    p.add_argument("--output", help="folder for the report (default: the run folder)")


def run(args) -> int:
    from m2det_impl.gating.report import write_conformance_report

    paths = write_conformance_report([Path(r) for r in args.runs], Path(args.output) if args.output else None,
                                     bench=Path(args.bench) if args.bench else None,
                                     compare=[Path(c) for c in args.compare or []])
    echo("report: " + ", ".join(str(p) for p in paths))
    return EXIT_OK
