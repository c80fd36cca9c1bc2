"""``m2det cache``: its options, and the one library call it makes."""

from __future__ import annotations

import argparse

from m2det_impl.cli.common import non_negative_float

HELP = "list the model cache (ONNX exports, int8 models: entries, sizes, last use), or clean it"


def configure(p: argparse.ArgumentParser) -> None:
    """The options of ``m2det cache``."""
    p.add_argument("--clean", action="store_true", help="remove the cache's entries (those a running job "
                                                        "holds are kept)")
    p.add_argument("--older-than", type=non_negative_float, metavar="DAYS",
                   help="with --clean: only entries unused for at least DAYS days")


def run(args) -> int:
    from m2det_impl.workflows.cache import cache

    return cache(clean=args.clean, older_than_days=args.older_than)
