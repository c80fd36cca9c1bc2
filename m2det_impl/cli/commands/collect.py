"""``m2det collect``: its options, and the one library call it makes."""

from __future__ import annotations

import argparse

from m2det_impl.cli.common import add_output_option, echo
from m2det_impl.errors import UsageError
from m2det_impl.exit_codes import EXIT_OK

HELP = ("gather run summaries, bench.json and saved runs into the results file "
        "m2det regress reads")


def configure(p: argparse.ArgumentParser) -> None:
    """The options of ``m2det collect``."""
    p.add_argument("--run", action="append", help="folder written by m2det run (its summary.json); repeatable")
    p.add_argument("--ap", action="append", metavar="NAME=SUMMARY",
                   help="figure ap/NAME from an m2det evaluate summary on the same images; repeatable")
    p.add_argument("--bench", action="append", help="bench.json written by m2det bench; repeatable")
    p.add_argument("--saved-runs", help="folder of runs saved by pytest --save-outputs (tolerance statistics)")
    p.add_argument("--annotations", help="the runs' COCO annotation file (identifies the dataset); 'bundled': the "
                                         "bundled mini COCO set's")
    p.add_argument("--precision", help="fp32, fp16, int8 (default: fp16 for om runs, else fp32)")
    p.add_argument("--platform", help="platform name (default: from this machine, e.g. cpu-x86_64-2core)")
    p.add_argument("--note", action="append", help="a line to carry into the regression report; repeatable")
    p.add_argument("--no-detections", action="store_true", help="raw-output statistics only")
    p.add_argument("--golden-forward", help="the reference's outputs for saved runs of the golden images "
                                            "(fixtures/golden/forward_m2det512.npz in a source checkout)")
    add_output_option(p, "results file to write (default results.json)", default="results.json", old_names=("--out",))


def run(args) -> int:
    from m2det_impl._io import atomic_write_json, output_files
    from m2det_impl.gating.collect import collect_results
    from m2det_impl.resources import resolve_annotations

    scored = []
    for item in args.ap or []:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise UsageError(f"--ap wants NAME=SUMMARY.json, got {item!r}")
        scored.append((name, path))
    with output_files(args.output) as (out,):  # checked writable first; no new empty folder if reading fails
        data = collect_results(args.run or [], args.bench or [], args.saved_runs, resolve_annotations(args.annotations),
                               scored=scored, precision=args.precision, platform=args.platform, notes=args.note or [],
                               detections=not args.no_detections, golden_forward=args.golden_forward)
        path = atomic_write_json(out, data, indent=2)
    count = sum(len(v) for v in data["figures"].values())
    echo(f"{count} figures of platform {data['platform']} -> {path}")
    return EXIT_OK
