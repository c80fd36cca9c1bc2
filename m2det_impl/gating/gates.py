"""One-sided gates on a measured figure; a gate whose figure was not measured fails.

A release gate that passes because nothing was measured is worse than none:
every gate here takes the figure as ``Optional`` and turns ``None`` into a
failure that says why.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from m2det_impl.exit_codes import EXIT_GATE_FAILED, EXIT_OK

__all__ = ["GateVerdict", "min_ap_gate", "max_ap_drop_gate"]


@dataclass(frozen=True)
class GateVerdict:
    """The exit code and the line that explains it (empty when no gate was asked for)."""

    code: int
    message: str

    @property
    def passed(self) -> bool:
        return self.code == EXIT_OK


def min_ap_gate(ap: Optional[float], min_ap: Optional[float], why_unmeasured: str = "no AP was measured"
                ) -> GateVerdict:
    """``--min-ap``: AP@[.50:.95] must be at least ``min_ap``."""
    if min_ap is None:
        return GateVerdict(EXIT_OK, "")
    if ap is None:
        return GateVerdict(EXIT_GATE_FAILED, f"gate FAILED: --min-ap {min_ap}: {why_unmeasured}")
    if ap >= min_ap:
        return GateVerdict(EXIT_OK, f"gate passed: AP {ap:.4f} >= {min_ap}")
    return GateVerdict(EXIT_GATE_FAILED, f"gate FAILED: AP {ap:.4f} < {min_ap}")


def max_ap_drop_gate(change: Optional[float], max_drop: Optional[float],
                     why_unmeasured: str = "the AP of both runs was not measured (no annotations)") -> GateVerdict:
    """``--max-ap-drop``: the candidate's AP may fall at most ``max_drop`` below the reference's."""
    if max_drop is None:
        return GateVerdict(EXIT_OK, "")
    if change is None:
        return GateVerdict(EXIT_GATE_FAILED, f"gate FAILED: --max-ap-drop {max_drop}: {why_unmeasured}")
    drop = -change
    if drop <= max_drop:
        return GateVerdict(EXIT_OK, f"gate passed: AP drop {drop * 100:.2f} points <= {max_drop * 100:.2f}")
    return GateVerdict(EXIT_GATE_FAILED, f"gate FAILED: AP drop {drop * 100:.2f} points > {max_drop * 100:.2f}")
