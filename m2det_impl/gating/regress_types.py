"""The regression gate's vocabulary: one figure's row and verdict, a mismatch of
machine or workload, and a whole comparison with its status and exit code.

Its own module so that the verdict code (:mod:`.regress`) and its rendering
(:mod:`.regress_report`) both import it and neither imports the other.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from m2det_impl.exit_codes import EXIT_GATE_FAILED, EXIT_NOT_GATED, EXIT_OK

__all__ = ["Row", "Mismatch", "Comparison", "EXIT_REGRESSED"]

EXIT_REGRESSED = EXIT_GATE_FAILED  # a regression is a failed gate


@dataclass(frozen=True)
class Row:
    """One figure: its values, the change, the allowance and the verdict.

    Verdicts: ``ok``, ``improved`` (better by more than the allowance),
    ``REGRESSED``, ``MISSING`` (in the baseline, not measured now) and ``new``
    (measured now, not in the baseline; not gated).
    """

    kind: str
    name: str
    baseline: Optional[float]
    current: Optional[float]
    rule: str
    allowance: Optional[float]
    verdict: str
    message: str = ""

    @property
    def delta(self) -> Optional[float]:
        if self.baseline is None or self.current is None:
            return None
        return self.current - self.baseline

    @property
    def delta_percent(self) -> Optional[float]:
        if self.delta is None or self.baseline == 0:
            return None
        return 100.0 * self.delta / abs(self.baseline)

    @property
    def failed(self) -> bool:
        return self.verdict in ("REGRESSED", "MISSING")

    def as_dict(self) -> dict:
        """JSON-ready: a non-finite value (JSON has none) becomes its string, ``"nan"``."""
        d = asdict(self)
        d.update(delta=self.delta, delta_percent=self.delta_percent)
        return {k: str(v) if isinstance(v, float) and not math.isfinite(v) else v for k, v in d.items()}


@dataclass(frozen=True)
class Mismatch:
    """A machine or workload key on which the baseline and the current results differ."""

    section: str
    key: str
    baseline: object
    current: object


@dataclass
class Comparison:
    baseline_path: str
    current_path: str
    platform: str
    rows: List[Row]
    mismatches: List[Mismatch]
    unstated: Dict[str, List[str]]
    environment_changes: List[Tuple[str, object, object]]
    allow_other_machine: bool = False
    allow_other_workload: bool = False
    notes: Sequence[str] = ()

    @property
    def blocking(self) -> List[Mismatch]:
        """Mismatches that stop the gate (those not explicitly allowed)."""
        allowed = {"machine": self.allow_other_machine, "workload": self.allow_other_workload}
        return [m for m in self.mismatches if not allowed[m.section]]

    @property
    def gated(self) -> bool:
        return not self.blocking

    @property
    def regressions(self) -> List[Row]:
        return [r for r in self.rows if r.failed]

    @property
    def exit_code(self) -> int:
        if not self.gated:
            return EXIT_NOT_GATED
        return EXIT_REGRESSED if self.regressions else EXIT_OK

    @property
    def status(self) -> str:
        if not self.gated:
            return "NOT GATED: " + "; ".join(f"{m.section} {m.key} differs" for m in self.blocking)
        if self.regressions:
            return f"REGRESSED: {len(self.regressions)} of {len(self.rows)} figures"
        return f"passed: {len(self.rows)} figures within their rules"

    def shown_verdict(self, row: Row) -> str:
        """A row's verdict as the table shows it: marked ``not gated`` when the comparison does not gate."""
        if self.gated or row.verdict == "new":
            return row.verdict
        return f"not gated ({row.verdict})"
