"""``m2det regress``: its options, and the one library call it makes."""

from __future__ import annotations

import argparse

from m2det_impl.cli.common import add_output_option

HELP = ("compare current results with a baseline under the baseline's one-sided rules; "
        "exit 1 on a regression, 4 when machine or workload differ (not gated)")


def configure(p: argparse.ArgumentParser) -> None:
    """The options of ``m2det regress``."""
    p.add_argument("--baseline", required=True, help="baseline file, or the name of one the package ships (data/baselines/<name>.json, "
                        "e.g. cpu-x86_64-2core)")
    p.add_argument("--current", required=True, help="results file written by m2det collect")
    add_output_option(p, "folder for regress.json and regress.md (default: the current file's folder)",
                      old_names=("--out",))
    p.add_argument("--allow-other-machine", action="store_true",
                   help="gate even though the baseline was measured on another machine (still warns)")
    p.add_argument("--allow-other-workload", action="store_true",
                   help="gate even though size, weights, images or precision differ (still warns)")
    p.add_argument("--update", action="store_true",
                   help="deliberately rewrite the baseline from the current results (atomic; creates it if absent)")


def run(args) -> int:
    from m2det_impl.gating.regress import run_regress
    from m2det_impl.resources import resolve_baseline

    return run_regress(resolve_baseline(args.baseline), args.current, args.output, allow_other_machine=args.allow_other_machine,
                       allow_other_workload=args.allow_other_workload, update=args.update)
