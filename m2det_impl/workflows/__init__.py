"""One function per job (run, evaluate, merge, export, preprocess, infer, bench, compare), explicit parameters."""

from typing import Callable

#: Where a job writes a line for its user: results to ``echo``, progress and failures to ``log``.
Echo = Callable[[str], None]
