"""How the library speaks: the standard ``logging`` module, one logger per module
under ``m2det_impl``, and one extra level for a job's results.

The library never prints. A job's results ("24 images -> results.json",
"AP 0.312") are records at :data:`RESULT`, between INFO and WARNING;
progress and notes are INFO; warnings (golden weights, a resumed run from
another machine) are WARNING. The package's root logger has a
:class:`logging.NullHandler`, so a Python caller sees nothing until it
configures logging (``logging.basicConfig(level=logging.INFO)`` shows all of
it). The ``m2det`` command installs the handlers: results to stdout,
everything else to stderr, ``--quiet`` and ``-v`` set the level.
"""

from __future__ import annotations

import logging

__all__ = ["RESULT", "ROOT", "get_logger"]

#: A line of a job's results (what the command prints on stdout).
RESULT = 25
logging.addLevelName(RESULT, "RESULT")

#: The package's logger: every module's logger is a child of it.
ROOT = logging.getLogger("m2det_impl")
if not any(isinstance(h, logging.NullHandler) for h in ROOT.handlers):
    ROOT.addHandler(logging.NullHandler())


def get_logger(name: str) -> logging.Logger:
    """The logger of module ``name`` (``__name__``); the same as :func:`logging.getLogger`, named here so
    that every module importing it also registers :data:`RESULT` and the package's null handler."""
    return logging.getLogger(name)
