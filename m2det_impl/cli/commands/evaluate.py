"""``m2det evaluate``: its options, and the one library call it makes."""

from __future__ import annotations

import argparse

HELP = "ais_bench / benchmark output folders (BIN, NPY, TXT) -> COCO results JSON -> AP"


def configure(p: argparse.ArgumentParser) -> None:
    """The options of ``m2det evaluate``."""
    p.add_argument("--outputs", required=True, help="folder of <stem>_0.bin/<stem>_1.bin (or _1/_2) files")
    p.add_argument("--annotations", required=True, help="COCO annotation file (instances_minival2014.json), or "
                                                         "'bundled' for the bundled mini COCO set's")
    p.add_argument("--image-info", help="the guide's jpg info file, for original image sizes")
    p.add_argument("--results", required=True, help="COCO results JSON to write")
    p.add_argument("--summary", required=True, help="summary JSON to write (ap and the 12 COCOeval stats)")
    p.add_argument("--skip-bad", action="store_true", help="record missing/truncated outputs and go on")
    p.add_argument("--size", type=int, default=512, help="input size the outputs were made at (default 512)")
    p.add_argument("--min-ap", type=float, help="exit 1 when AP@[.50:.95] is below this (or was not measured), "
                                                "when an image the info file or ais summary lists was not scored, "
                                                "or when nothing lists the inputs (no --image-info, no summary)")
    p.add_argument("--allow-partial", action="store_true",
                   help="gate --min-ap even when some listed images have no (or, with --skip-bad, unreadable) "
                        "outputs, counting them as misses, or when nothing lists the inputs; recorded in the summary")

def run(args) -> int:
    from m2det_impl.network.config import get_config
    from m2det_impl.resources import resolve_annotations
    from m2det_impl.workflows.evaluate import evaluate_outputs

    return evaluate_outputs(args.outputs, resolve_annotations(args.annotations), get_config(args.size), args.results, args.summary,
                            image_info=args.image_info, skip_bad=args.skip_bad, min_ap=args.min_ap,
                            allow_partial=args.allow_partial,
                            progress=not args.quiet)
