"""``m2det export``: its options, and the one library call it makes."""

from __future__ import annotations

import argparse

from m2det_impl.cli.common import (
    DEFAULT_CALIBRATION_IMAGES,
    add_calibration_options,
    add_model_options,
    add_output_option,
    config_from,
    int_list,
    positive_int,
    refuse_unused_options,
)
from m2det_impl.errors import UsageError
from m2det_impl.exit_codes import EXIT_OK

HELP = "checkpoint -> ONNX (opset 11) plus the atc commands to build .om files"


def configure(p: argparse.ArgumentParser) -> None:
    """The options of ``m2det export``."""
    add_model_options(p, backends=False)
    p.add_argument("--batch", type=positive_int, action="append",
                   help="static batch size, repeatable (one file each, for atc); omit for one dynamic-batch file")
    p.add_argument("--dynamic-batch-sizes", type=int_list, metavar="B,B,...",
                   help="with no --batch: the dynamic-batch file, and in atc_build.sh one dynamic-batch .om built "
                        "for these batches (atc --dynamic_batch_size); run it with --backend om --batch-size B")
    add_output_option(p, "folder for m2det512[_bsB].onnx and atc_build.sh (default .)", default=".",
                      old_names=("--out-dir",))
    p.add_argument("--opset", type=int, default=11, help="ONNX opset (default 11, what CANN's atc takes)")
    p.add_argument("--soc-version", default="Ascend310P3", help="atc --soc_version in atc_build.sh (default Ascend310P3)")
    g = p.add_argument_group("int8 (ONNX Runtime on the CPU)")
    g.add_argument("--int8", action="store_true", help="write m2det512_int8.onnx instead: static QDQ int8, "
                                                        "per-channel weights, opset 13, calibrated on --calib")
    add_calibration_options(g)


#: Options only another mode reads (refuse_unused_options): (dest, option, unused here, why, what to do).
UNUSED_OPTIONS = tuple(
    (dest, option, lambda a: not a.int8, "only --int8 reads calibration images (its quantization); the float32 "
     "export takes none", f"add --int8, or drop {option}")
    for dest, option in (("calib", "--calib"), ("calib_images", "--calib-images")))


def run(args) -> int:
    from m2det_impl.workflows.files import export, export_int8

    refuse_unused_options(args, UNUSED_OPTIONS)
    cfg = config_from(args)
    if args.int8:
        if args.batch:
            raise UsageError("--int8 makes one dynamic-batch QDQ model for ONNX Runtime; atc does not take it "
                             "(Ascend quantizes with its own AMCT tool): drop --batch")
        export_int8(cfg, args.output, weights=args.weights, calib=args.calib,
                    calib_images=args.calib_images or DEFAULT_CALIBRATION_IMAGES,
                    progress=not args.quiet)
    else:
        export(cfg, args.output, weights=args.weights, batches=args.batch or (), opset=args.opset,
               soc_version=args.soc_version, dynamic_batches=args.dynamic_batch_sizes or ())
    return EXIT_OK
