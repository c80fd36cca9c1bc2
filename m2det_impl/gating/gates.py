"""One-sided gates on a measured figure; a gate whose figure was not measured fails.

A release gate that passes because nothing was measured is worse than none:
every gate here takes the figure as ``Optional`` and turns ``None`` into a
failure that says why.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional

from m2det_impl.exit_codes import EXIT_GATE_FAILED, EXIT_OK

__all__ = ["GateVerdict", "min_ap_gate", "max_ap_drop_gate", "throughput_gate", "min_throughput_gate"]


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


def throughput_gate(figure: Mapping[str, object], published: Mapping[str, object],
                    relative_tolerance: float, require_runtime_clock: bool = True) -> GateVerdict:
    """Pure-inference images/s (``gating.bench.measure_inference``'s ``images_per_second``,
    ``1000 * batch / mean(execute ms)``) at least the published figure of its batch size
    minus ``relative_tolerance``. ``published`` is ``gating.bench.published_record``'s
    record; its name and source are in every message. Fails, never passes or skips,
    when the batch size has no published figure, when the figure was not measured,
    or (``require_runtime_clock``) when it was timed by the wall clock instead of the
    runtime's own execute time."""
    batch = int(figure["batch_size"])  # type: ignore[call-overload]
    label = f"batch {batch}, published table {published['name']!r} ({published['source']})"
    table = published["table"]
    if not isinstance(table, Mapping):
        return GateVerdict(EXIT_GATE_FAILED, f"gate FAILED: {label}: the published table is not a mapping of "
                                             f"batch size to images/s (got {type(table).__name__})")
    value = table.get(str(batch))
    if value is None:
        keys = [str(k) for k in table]
        listed = sorted((k for k in keys if k.isdigit()), key=int) + sorted(k for k in keys if not k.isdigit())
        return GateVerdict(EXIT_GATE_FAILED, f"gate FAILED: {label}: no published figure for batch {batch} "
                                             f"(it has {', '.join(listed) or 'none'})")
    rate = figure.get("images_per_second")
    if rate is None:
        return GateVerdict(EXIT_GATE_FAILED, f"gate FAILED: {label}: the throughput was not measured "
                                             f"(no execute time from {figure.get('execute_clock', '?')})")
    if require_runtime_clock and not figure.get("runtime_timed"):
        return GateVerdict(EXIT_GATE_FAILED, f"gate FAILED: {label}: timed by {figure.get('execute_clock', '?')}, "
                                             "not the runtime's own execute time: not measured as ais_bench does")
    wall = figure.get("wall_clock_images_per_second")
    clock = f"1000 * batch / mean execute ms; {figure.get('execute_clock', '?')}" + (
        f"; wall clock {float(wall):.3f} img/s" if wall is not None else "")  # type: ignore[arg-type]
    return min_throughput_gate(float(rate), float(value), relative_tolerance,  # type: ignore[arg-type]
                               what=f"{label} ({clock})")


def min_throughput_gate(images_per_second: Optional[float], published: float, relative_tolerance: float,
                        what: str = "throughput", why_unmeasured: str = "no figure was measured") -> GateVerdict:
    """Images/s must be at least ``published * (1 - relative_tolerance)``
    (``m2det_impl/data/gates.json``); an unmeasured or non-finite figure fails."""
    import math

    floor = published * (1.0 - relative_tolerance)
    if images_per_second is None or not math.isfinite(images_per_second):
        return GateVerdict(EXIT_GATE_FAILED, f"gate FAILED: {what}: {why_unmeasured} (floor {floor:.3f} img/s)")
    line = (f"{what}: {images_per_second:.3f} img/s, published {published:.3f}, floor {floor:.3f} "
            f"(-{relative_tolerance:.0%})")
    if images_per_second >= floor:
        return GateVerdict(EXIT_OK, f"gate passed: {line}")
    return GateVerdict(EXIT_GATE_FAILED, f"gate FAILED: {line}")
