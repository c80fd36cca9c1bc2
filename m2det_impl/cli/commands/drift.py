"""``m2det drift``: its options, the one library call it makes, and the lines it prints."""

from __future__ import annotations

import argparse

from m2det_impl.cli.commands.compare import PRECISION_MODE_CHOICES
from m2det_impl.cli.common import positive_int

HELP = ("where a 310P deployment drifts: the device's dump (ais_bench --dump) against ONNX Runtime float32, "
        "node by node, bounded by the fp16 forecast; names the first node out of bounds")


def configure(p: argparse.ArgumentParser) -> None:
    """The options of ``m2det drift``."""
    p.add_argument("--onnx", required=True, metavar="MODEL", help="the ONNX model the .om was built from")
    p.add_argument("--input", required=True, metavar="X.bin", help="the input the dump was made on: float32 "
                   "1x3xSxS, as m2det preprocess writes it")
    p.add_argument("--dump", required=True, metavar="DIR", help="the dump of ONE inference: ais_bench --dump's "
                   "folder (or any folder above the dump files of one iteration)")
    p.add_argument("--om-json", metavar="X.json", help="atc --mode=1 --om=X.om --json=X.json: the fusion map, for "
                   "dumped ops whose header names no ONNX node")
    p.add_argument("--output", required=True, metavar="OUT", help="folder for drift.json, drift.md and drift.png")
    p.add_argument("--precision-mode", choices=PRECISION_MODE_CHOICES, default="force_fp16",
                   help="atc --precision_mode the .om was built with: the forecast that sets each bound "
                        "(default force_fp16, atc's default)")
    p.add_argument("--bounds", metavar="FILE", help="drift bounds file (default: the package's data/drift_bounds.json)")
    p.add_argument("--threads", type=positive_int, help="intra-op threads for onnxruntime")


def run(args) -> int:
    from m2det_impl.workflows.drift import drift

    outcome = drift(args.onnx, args.input, args.dump, args.output, om_json=args.om_json,
                    precision_mode=args.precision_mode, bounds_file=args.bounds, threads=args.threads)
    report = outcome.report
    first = report.first_divergent
    print(f"drift: {len(report.nodes)} nodes compared, {sum(not n.passed for n in report.nodes)} out of bounds, "
          f"{len(report.unmatched)} dumped outputs with no ONNX counterpart ({report.seconds:.1f} s)")
    if first is not None:
        print(f"first divergent: {first.match.node} (depth {first.depth}, dumped as {first.match.dump_op}): "
              f"rel_l2 {first.rel_l2:.4g} > bound {first.bound.value:.4g}, cosine {first.cosine:.6f}")
    elif not report.nodes:
        print("drift: nothing compared: no dumped output could be aligned with the ONNX model (see the "
              "unmatched list; --om-json gives the fusion map)")
    print(f"drift: {outcome.json_path}, {outcome.markdown_path}, {outcome.png_path}")
    return outcome.exit_code
