"""``m2det compare``: its options, and the one library call it makes."""

from __future__ import annotations

import argparse

from m2det_impl.backends.registry import DEFAULT_RUNTIME
from m2det_impl.cli.common import (
    add_calibration_options,
    add_dataset_options,
    add_model_options,
    add_output_option,
    config_from,
    dataset_from,
    model_from,
    positive_int,
    refuse_unused_options,
)
from m2det_impl.errors import UsageError

# atc --precision_mode values the fp16 forecast emulates (m2det_impl.precision.fp16.PRECISION_MODES; kept here so
# that building the parser does not import onnx; a test holds the two equal)
PRECISION_MODE_CHOICES = ("force_fp16", "allow_mix_precision", "must_keep_origin_dtype")
HELP = ("compare two runs, or forecast a precision variant against float32: "
        "--emulate fp16 (the 310P's drift, per output and per layer) or --int8")


def configure(p: argparse.ArgumentParser) -> None:
    """The options of ``m2det compare``."""
    p.add_argument("runs", nargs="*", metavar="RUN", help="CANDIDATE REFERENCE: two saved runs (.npz from "
                   "--save-outputs, held to the tolerance file) or two m2det run folders (detections, AP)")
    p.add_argument("--emulate", choices=("fp16",), help="forecast the .om's fp16 drift with an fp16-emulating "
                                                        "ONNX model on the CPU")
    p.add_argument("--precision-mode", choices=PRECISION_MODE_CHOICES, default=None,
                   help="atc --precision_mode to emulate (default force_fp16, atc's default)")
    p.add_argument("--keep-fp32", action="append", metavar="NAME",
                   help="op type (Softmax) or node name kept in float32, repeatable: atc's --keep_dtype for "
                        "force_fp16, the block list for allow_mix_precision (default there: Softmax, "
                        "BatchNormalization)")
    p.add_argument("--no-layers", action="store_true", help="outputs and detections only (no per-layer drift; "
                                                            "faster, less memory)")
    p.add_argument("--first", type=positive_int, default=5, help="list this many first layers over the thresholds")
    p.add_argument("--int8", action="store_true", help="the int8 (QDQ) model against float32 ONNX Runtime: "
                                                       "drift, detection agreement, AP change, speed")
    p.add_argument("--int8-onnx", metavar="PATH", help="int8 model to compare (default: the cached quantization "
                                                       "of --weights on --calib)")
    add_dataset_options(p)
    add_model_options(p, backends=False)
    g = p.add_argument_group("models compared")
    g.add_argument("--onnx", help="float32 ONNX model (default: a cached export of --weights)")
    g.add_argument("--threads", type=int, help="intra-op threads for onnxruntime (default: $M2DET_THREADS, else all cores)")
    add_calibration_options(g)
    g = p.add_argument_group("saved runs")
    g.add_argument("--pair", help="tolerance key, default '<candidate backend>/<reference backend>'")
    g.add_argument("--tolerances", help="tolerance file (default: the package's data/tolerances.json)")
    g.add_argument("--no-detections", action="store_true", help="raw outputs only")
    add_output_option(p, old_names=("--out",), help_text="folder for compare.json, compare.md and keep_dtype.cfg (default ./m2det-compare; "
                                 "for two run folders: only when given)")
    p.add_argument("--max-ap-drop", type=float, metavar="X", help="exit 1 when the candidate's AP@[.50:.95] is "
                                                                  "more than X below the reference's (0.01 = 1 point)")


def _two_runs(args) -> bool:
    return not args.emulate and not args.int8


#: Options only another mode reads (refuse_unused_options): (dest, option, unused here, why, what to do).
UNUSED_OPTIONS = (
    ("weights", "--weights", _two_runs, "two saved runs are compared as they were saved: no model is built "
     "from --weights", "drop --weights (--emulate fp16 and --int8 read it)"),
    ("onnx", "--onnx", _two_runs, "two saved runs are compared as they were saved: no model is run",
     "drop --onnx (--emulate fp16 and --int8 read it)"),
    ("precision_mode", "--precision-mode", lambda a: not a.emulate, "only the --emulate fp16 forecast reads it",
     "add --emulate fp16, or drop --precision-mode"),
    ("keep_fp32", "--keep-fp32", lambda a: not a.emulate, "only the --emulate fp16 forecast reads it",
     "add --emulate fp16, or drop --keep-fp32"),
    ("int8_onnx", "--int8-onnx", lambda a: not a.int8, "only --int8 reads it", "add --int8, or drop --int8-onnx"),
    ("calib", "--calib", lambda a: not a.int8 or a.int8_onnx, "only --int8's quantization reads it (none when "
     "--int8-onnx gives the int8 model)", "drop --calib, or use --int8 without --int8-onnx"),
    ("calib_images", "--calib-images", lambda a: not a.int8 or a.int8_onnx, "only --int8's quantization reads "
     "it (none when --int8-onnx gives the int8 model)", "drop --calib-images, or use --int8 without --int8-onnx"),
)


def run(args) -> int:
    from m2det_impl.workflows.compare import compare_precision, compare_two_runs

    chosen = [name for name, on in (("runs", bool(args.runs)), ("--emulate", bool(args.emulate)),
                                    ("--int8", args.int8)) if on]
    if len(chosen) != 1:
        raise UsageError("give two saved runs or two m2det run folders (CANDIDATE REFERENCE), or --emulate fp16, "
                         "or --int8" + (f"; got {' and '.join(chosen)}" if chosen else ""))
    refuse_unused_options(args, UNUSED_OPTIONS)
    cfg = config_from(args)
    if args.runs:
        if len(args.runs) != 2:
            raise UsageError(f"compare takes two runs, CANDIDATE REFERENCE; got {len(args.runs)}")
        return compare_two_runs(args.runs[0], args.runs[1], cfg, out=args.output, pair=args.pair,
                                tolerances=args.tolerances, detections=not args.no_detections,
                                max_ap_drop=args.max_ap_drop)
    return compare_precision("fp16" if args.emulate else "int8", dataset_from(args), cfg,
                             model_from(args, backend=DEFAULT_RUNTIME), args.output or "m2det-compare",
                             int8_onnx=args.int8_onnx,
                             precision_mode=args.precision_mode or PRECISION_MODE_CHOICES[0], keep_fp32=args.keep_fp32,
                             layers=not args.no_layers, first=args.first, max_ap_drop=args.max_ap_drop,
                             progress=not args.quiet)
