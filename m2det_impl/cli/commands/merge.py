"""``m2det merge``: its options, and the one library call it makes."""

from __future__ import annotations

import argparse

from m2det_impl.cli.common import positive_int

HELP = "combine the results of m2det run --shard I/N and score them"


def configure(p: argparse.ArgumentParser) -> None:
    """The options of ``m2det merge``."""
    p.add_argument("shards", nargs="+", help="shard result files, or folders holding them")
    p.add_argument("--annotations", help="COCO annotation file, or 'bundled' for the bundled mini COCO set's; "
                                         "checks every image is covered and scores")
    p.add_argument("--limit", type=positive_int, help="the shards ran with --limit N")
    p.add_argument("--partial", action="store_true", help="allow images no shard covered")
    p.add_argument("--results", default="results.json", help="merged COCO results JSON to write (default results.json)")
    p.add_argument("--summary", default="summary.json", help="summary JSON to write (default summary.json)")
    p.add_argument("--min-ap", type=float, help="exit 1 when AP@[.50:.95] is below this (or was not measured)")


def run(args) -> int:
    from m2det_impl.resources import resolve_annotations
    from m2det_impl.workflows.evaluate import merge_shards

    return merge_shards(args.shards, args.results, args.summary, annotations=resolve_annotations(args.annotations), limit=args.limit,
                        partial=args.partial, min_ap=args.min_ap)
