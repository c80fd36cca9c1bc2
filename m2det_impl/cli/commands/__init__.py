"""One module per ``m2det`` command: ``HELP``, ``configure(parser)`` (its options) and ``run(args)``
(parse into library objects, make one library call, return its exit code).

Everything a command does is a function of :mod:`m2det_impl.workflows` (or
:mod:`m2det_impl.gating`) that a Python user can call with the same arguments.
"""

from __future__ import annotations

from types import ModuleType
from typing import Callable, Dict

from m2det_impl.cli.commands import (
    bench,
    cache,
    collect,
    compare,
    docs,
    drift,
    evaluate,
    export,
    infer,
    merge,
    preprocess,
    regress,
    report,
    run,
)

__all__ = ["MODULES", "COMMANDS"]

#: command name -> its module, in the order ``m2det --help`` lists them.
MODULES: Dict[str, ModuleType] = {m.__name__.rsplit(".", 1)[1]: m for m in (run, evaluate, merge, export, preprocess, infer, bench, report, compare, drift, collect, regress, cache, docs)}
#: command name -> the function the parser calls (looked up when the parser is built).
COMMANDS: Dict[str, Callable[..., int]] = {name: module.run for name, module in MODULES.items()}
