"""The ``m2det`` command line: the parser, and ``main`` mapping exceptions to the exit codes.

Argument parsing and printing only: every command is one library call
(:mod:`m2det_impl.cli.commands`). Exit codes: :mod:`m2det_impl.exit_codes`.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import NoReturn, Optional, Sequence

from m2det_impl import __version__
from m2det_impl.backends.registry import backend_names
from m2det_impl.cli.commands import COMMANDS
from m2det_impl.cli.common import (
    add_calibration_options,
    add_dataset_options,
    add_host_option,
    add_model_options,
    int_list,
    log,
    positive_int,
)
from m2det_impl.errors import M2DetError
from m2det_impl.exit_codes import EXIT_BAD_INPUT, EXIT_CODES, EXIT_INTERNAL, EXIT_INTERRUPTED
from m2det_impl.pipeline.ais_files import OUTPUT_FORMATS
from m2det_impl.published import DEFAULT_PUBLISHED, published_names

__all__ = ["build_parser", "main"]

# atc --precision_mode values the fp16 forecast emulates (m2det_impl.precision.fp16.PRECISION_MODES; kept here so
# that building the parser does not import onnx; a test holds the two equal)
PRECISION_MODE_CHOICES = ("force_fp16", "allow_mix_precision", "must_keep_origin_dtype")
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
        p.add_argument("--quiet", action="store_true", help="no progress bars")
        p.set_defaults(func=COMMANDS[name])
        return p

    p = add("run", "the whole pipeline in memory: images -> detections -> results JSON, AP and a report")
    add_dataset_options(p)
    add_model_options(p)
    p.add_argument("--out", default="m2det-run", help="output folder (default ./m2det-run)")
    p.add_argument("--shard", help="I/N: process every N-th image from I; combine with m2det merge")
    p.add_argument("--fresh", action="store_true", help="ignore partial results from an interrupted run")
    p.add_argument("--skip-bad", action="store_true", help="record unreadable images and go on")
    p.add_argument("--loader-threads", type=positive_int, default=2, help="image decoding threads (default 2)")
    add_host_option(p)
    p.add_argument("--no-report", action="store_true", help="skip the markdown/JSON/PNG report")
    p.add_argument("--min-ap", type=float, help="exit 1 when AP@[.50:.95] is below this (or was not measured)")

    p = add("evaluate", "ais_infer/benchmark output files -> COCO results JSON -> AP")
    p.add_argument("--outputs", required=True, help="folder of <stem>_0.bin/<stem>_1.bin (or _1/_2) files")
    p.add_argument("--annotations", required=True, help="COCO annotation file (instances_minival2014.json)")
    p.add_argument("--image-info", help="the guide's jpg info file, for original image sizes")
    p.add_argument("--results", required=True, help="COCO results JSON to write")
    p.add_argument("--summary", required=True, help="summary JSON to write (ap and the 12 COCOeval stats)")
    p.add_argument("--skip-bad", action="store_true", help="record missing/truncated outputs and go on")
    p.add_argument("--size", type=int, default=512, help="input size the outputs were made at (default 512)")
    p.add_argument("--min-ap", type=float, help="exit 1 when AP@[.50:.95] is below this (or was not measured)")

    p = add("merge", "combine the results of m2det run --shard I/N and score them")
    p.add_argument("shards", nargs="+", help="shard result files, or folders holding them")
    p.add_argument("--annotations", help="COCO annotation file; checks every image is covered and scores")
    p.add_argument("--limit", type=positive_int, help="the shards ran with --limit N")
    p.add_argument("--partial", action="store_true", help="allow images no shard covered")
    p.add_argument("--results", default="results.json", help="merged COCO results JSON to write (default results.json)")
    p.add_argument("--summary", default="summary.json", help="summary JSON to write (default summary.json)")
    p.add_argument("--min-ap", type=float, help="exit 1 when AP@[.50:.95] is below this (or was not measured)")

    p = add("export", "checkpoint -> ONNX (opset 11) plus the atc commands to build .om files")
    add_model_options(p, backends=False)
    p.add_argument("--batch", type=positive_int, action="append",
                   help="static batch size, repeatable (one file each, for atc); omit for one dynamic-batch file")
    p.add_argument("--out-dir", default=".", help="folder for m2det512[_bsB].onnx and atc_build.sh (default .)")
    p.add_argument("--opset", type=int, default=11, help="ONNX opset (default 11, what CANN's atc takes)")
    p.add_argument("--soc-version", default="Ascend310P3", help="atc --soc_version in atc_build.sh (default Ascend310P3)")
    g = p.add_argument_group("int8 (ONNX Runtime on the CPU)")
    g.add_argument("--int8", action="store_true", help="write m2det512_int8.onnx instead: static QDQ int8, "
                                                        "per-channel weights, opset 13, calibrated on --calib")
    add_calibration_options(g)

    p = add("preprocess", "images -> .bin inputs and the guide's bin/jpg info files")
    add_dataset_options(p)
    p.add_argument("--size", type=int, default=512, help="input size preset (default 512)")
    p.add_argument("--output", required=True, help="folder for the .bin files and info files")
    p.add_argument("--info-name", default="m2det", help="info files are NAME_bin.info and NAME_jpg.info")
    p.add_argument("--workers", type=positive_int, default=2, help="decoding threads (default 2)")

    p = add("infer", "run a backend over .bin files or images, writing ais_infer-style outputs")
    add_model_options(p)
    p.add_argument("--inputs", required=True, help="folder of .bin inputs (or images)")
    p.add_argument("--output", required=True, help="folder for <stem>_0.bin (scores) and <stem>_1.bin (loc)")
    p.add_argument("--naming", choices=("ais", "benchmark"), default="ais",
                   help="ais: ais_bench's layout (time-stamped sub-folder, <stem>_0/_1, <name>_summary.json beside "
                        "it); benchmark: flat _1/_2 .bin files (the older tool)")
    p.add_argument("--output-dirname", help="ais layout: sub-folder name instead of the time stamp (ais_bench's "
                                            "--output_dirname)")
    p.add_argument("--outfmt", choices=OUTPUT_FORMATS, default="BIN", help="ais layout: BIN, NPY or TXT "
                                                                            "(ais_bench's --outfmt; default BIN)")

    p = add("bench", "throughput per batch size: pure inference and end to end, with medians")
    add_dataset_options(p)
    add_model_options(p, batch=False)
    p.add_argument("--batch-sizes", type=int_list, default=[1], help="batch sizes to measure, comma separated "
                                                                     "(default 1)")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls before measuring, per batch size (default 1)")
    p.add_argument("--repeats", type=positive_int, default=3, help="timed repeats; the median is reported (default 3)")
    p.add_argument("--host-images", type=positive_int, default=200, help="images for the host-side figure")
    p.add_argument("--no-end-to-end", action="store_true", help="pure inference only")
    p.add_argument("--loader-threads", type=positive_int, default=2, help="image decoding threads (default 2)")
    add_host_option(p)
    p.add_argument("--output", default="m2det-bench", help="folder for bench.json and bench.md")
    p.add_argument("--versus", choices=backend_names(),
                   help="also measure this backend's pure inference side by side (repeats alternating) and print "
                        "the speed ratio, e.g. --versus onnxruntime-int8")
    p.add_argument("--versus-onnx", metavar="PATH", help="ONNX model for --versus (default: cached, as --onnx)")
    p.add_argument("--published", choices=published_names(), default=DEFAULT_PUBLISHED,
                   help=f"published throughput table shown beside the figures and recorded in bench.json "
                        f"(default {DEFAULT_PUBLISHED}, the guide's)")

    p = add("report", "conformance report of a run folder, side by side with the guide's figures")
    p.add_argument("runs", nargs="+", help="folders written by m2det run (one per backend/batch size)")
    p.add_argument("--bench", help="bench.json from m2det bench")
    p.add_argument("--compare", action="append", metavar="JSON",
                   help="compare.json from m2det compare (--emulate fp16, --int8), repeatable: precision variants")
    p.add_argument("--output", help="folder for the report (default: the run folder)")

    p = add("compare", "compare two runs, or forecast a precision variant against float32: "
                                     "--emulate fp16 (the 310P's drift, per output and per layer) or --int8")
    p.add_argument("runs", nargs="*", metavar="RUN", help="CANDIDATE REFERENCE: two saved runs (.npz from "
                   "--save-outputs, held to the tolerance file) or two m2det run folders (detections, AP)")
    p.add_argument("--emulate", choices=("fp16",), help="forecast the .om's fp16 drift with an fp16-emulating "
                                                        "ONNX model on the CPU")
    p.add_argument("--precision-mode", choices=PRECISION_MODE_CHOICES, default="force_fp16",
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
    g.add_argument("--threads", type=int, help="intra-op threads for onnxruntime")
    add_calibration_options(g)
    g = p.add_argument_group("saved runs")
    g.add_argument("--pair", help="tolerance key, default '<candidate backend>/<reference backend>'")
    g.add_argument("--tolerances", help="tolerance file (default: the package's data/tolerances.json)")
    g.add_argument("--no-detections", action="store_true", help="raw outputs only")
    p.add_argument("--out", help="folder for compare.json, compare.md and keep_dtype.cfg (default ./m2det-compare; "
                                 "for two run folders: only when given)")
    p.add_argument("--max-ap-drop", type=float, metavar="X", help="exit 1 when the candidate's AP@[.50:.95] is "
                                                                  "more than X below the reference's (0.01 = 1 point)")

    p = add("collect", "gather run summaries, bench.json and saved runs into the results file "
                                    "m2det regress reads")
    p.add_argument("--run", action="append", help="folder written by m2det run (its summary.json); repeatable")
    p.add_argument("--ap", action="append", metavar="NAME=SUMMARY",
                   help="figure ap/NAME from an m2det evaluate summary on the same images; repeatable")
    p.add_argument("--bench", action="append", help="bench.json written by m2det bench; repeatable")
    p.add_argument("--saved-runs", help="folder of runs saved by pytest --save-outputs (tolerance statistics)")
    p.add_argument("--annotations", help="the runs' COCO annotation file (identifies the dataset)")
    p.add_argument("--precision", help="fp32, fp16, int8 (default: fp16 for om runs, else fp32)")
    p.add_argument("--platform", help="platform name (default: from this machine, e.g. cpu-x86_64-2core)")
    p.add_argument("--note", action="append", help="a line to carry into the regression report; repeatable")
    p.add_argument("--no-detections", action="store_true", help="raw-output statistics only")
    p.add_argument("--golden-forward", help="the reference's outputs for saved runs of the golden images "
                                            "(fixtures/golden/forward_m2det512.npz in a source checkout)")
    p.add_argument("--out", default="results.json", help="results file to write (default results.json)")

    p = add("regress", "compare current results with a baseline under the baseline's one-sided rules; "
                                    "exit 1 on a regression, 4 when machine or workload differ (not gated)")
    p.add_argument("--baseline", required=True, help="baseline file (the package's data/baselines/<platform>.json)")
    p.add_argument("--current", required=True, help="results file written by m2det collect")
    p.add_argument("--out", help="folder for regress.json and regress.md (default: the current file's folder)")
    p.add_argument("--allow-other-machine", action="store_true",
                   help="gate even though the baseline was measured on another machine (still warns)")
    p.add_argument("--allow-other-workload", action="store_true",
                   help="gate even though size, weights, images or precision differ (still warns)")
    p.add_argument("--update", action="store_true",
                   help="deliberately rewrite the baseline from the current results (atomic; creates it if absent)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run one command; returns its exit code (never raises, bar SystemExit from argparse)."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    if args.command is None:
        # `m2det` alone: the main job on the embedded default.
        args = parser.parse_args(["run", *argv])
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        log("\nm2det: interrupted; partial results are kept, run the same command again to resume")
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
