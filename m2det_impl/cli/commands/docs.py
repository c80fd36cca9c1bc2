"""``m2det docs``: its options, and the one library call it makes."""

from __future__ import annotations

import argparse

HELP = "list the project's documents (the reference, the Ascend runtime notes, testing, drift), or print one"


def configure(p: argparse.ArgumentParser) -> None:
    """The options of ``m2det docs``."""
    p.add_argument("name", nargs="?", help="the document to print (e.g. reference, for docs/reference.md); "
                                           "without it, the list")


def run(args) -> int:
    from m2det_impl.workflows.docs import show_docs

    return show_docs(args.name)
