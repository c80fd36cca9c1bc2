"""``m2det preprocess``: its options, and the one library call it makes."""

from __future__ import annotations

import argparse

from m2det_impl.cli.common import add_dataset_options, dataset_from, positive_int

HELP = "images -> .bin inputs and the guide's bin/jpg info files"


def configure(p: argparse.ArgumentParser) -> None:
    """The options of ``m2det preprocess``."""
    add_dataset_options(p)
    p.add_argument("--size", type=int, default=512, help="input size preset (default 512)")
    p.add_argument("--skip-bad", action="store_true",
                   help="leave unreadable images out (named on stderr, absent from the info files) and go on; "
                        "without it, one unreadable image stops the job and no .bin of this run is left behind")
    p.add_argument("--output", required=True, help="folder for the .bin files and info files")
    p.add_argument("--info-name", default="m2det", help="info files are NAME_bin.info and NAME_jpg.info")
    p.add_argument("--workers", type=positive_int, default=2, help="decoding threads (default 2)")


def run(args) -> int:
    from m2det_impl.network.config import get_config
    from m2det_impl.workflows.files import preprocess

    return preprocess(dataset_from(args), get_config(args.size), args.output, info_name=args.info_name, skip_bad=args.skip_bad,
                      workers=args.workers, progress=not args.quiet)
