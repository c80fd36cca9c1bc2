"""The ``m2det`` command line (parsing and printing only)."""

from m2det_impl.cli.app import build_parser, main

__all__ = ["build_parser", "main"]
