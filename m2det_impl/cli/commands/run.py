"""``m2det run``: its options, and the one library call it makes."""

from __future__ import annotations

import argparse

from m2det_impl.cli.common import (
    add_dataset_options,
    add_host_option,
    add_model_options,
    add_output_option,
    config_from,
    dataset_from,
    device_ids_from,
    model_from,
    positive_int,
)

#: An interrupted run resumes where it stopped (its journal): the interruption message says so.
RESUMES = True

HELP = "the whole pipeline in memory: images -> detections -> results JSON, AP and a report"


def configure(p: argparse.ArgumentParser) -> None:
    """The options of ``m2det run``."""
    add_dataset_options(p)
    add_model_options(p)
    add_output_option(p, "output folder (default ./m2det-run)", default="m2det-run", old_names=("--out",))
    p.add_argument("--shard", help="I/N: process every N-th image from I, shards counting from 0 (two shards: "
                                   "0/2 and 1/2); combine with m2det merge")
    p.add_argument("--fresh", action="store_true", help="ignore partial results from an interrupted run")
    p.add_argument("--skip-bad", action="store_true", help="record unreadable images and go on")
    p.add_argument("--loader-threads", type=positive_int, default=2, help="image decoding threads (default 2)")
    add_host_option(p)
    p.add_argument("--no-report", action="store_true", help="skip the markdown/JSON/PNG report")
    p.add_argument("--min-ap", type=float, help="exit 1 when AP@[.50:.95] is below this (or was not measured)")


def run(args) -> int:
    from m2det_impl.workflows.run import run

    return run(dataset_from(args), config_from(args), model_from(args), args.output, batch_size=args.batch_size,
               shard=args.shard, fresh=args.fresh, skip_bad=args.skip_bad, loader_threads=args.loader_threads,
               host=args.host, report=not args.no_report, min_ap=args.min_ap, progress=not args.quiet,
               device_ids=device_ids_from(args))
