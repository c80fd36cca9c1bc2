"""The exit codes of every ``m2det`` command and of the nightly gate, defined once.

| code | meaning |
|---|---|
| 0 | success: the work is done and every gate that was asked for passed |
| 1 | a gate failed, or a gate could not measure its figure (a gate never passes unmeasured) |
| 2 | bad input or usage: a file, option or value the user can fix (one line on stderr) |
| 3 | internal error: a bug (one line on stderr; ``M2DET_DEBUG=1`` shows the traceback) |
| 4 | not gated: ``m2det regress`` compared figures from another machine or workload and judged nothing |
| 130 | interrupted (Ctrl-C); partial results are kept and the same command resumes |
"""

from __future__ import annotations

__all__ = ["EXIT_OK", "EXIT_GATE_FAILED", "EXIT_BAD_INPUT", "EXIT_INTERNAL", "EXIT_NOT_GATED", "EXIT_INTERRUPTED",
           "EXIT_CODES"]

EXIT_OK = 0
EXIT_GATE_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERNAL = 3
EXIT_NOT_GATED = 4
EXIT_INTERRUPTED = 130

#: code -> one-line meaning, for help texts and docs.
EXIT_CODES = {
    EXIT_OK: "success",
    EXIT_GATE_FAILED: "a gate failed or could not measure its figure",
    EXIT_BAD_INPUT: "bad input or usage",
    EXIT_INTERNAL: "internal error (a bug)",
    EXIT_NOT_GATED: "not gated: another machine or workload",
    EXIT_INTERRUPTED: "interrupted; run the same command again to resume",
}
