"""What ``m2det regress`` shows: the comparison of :mod:`m2det_impl.gating.regress`
as a plain-text table (the nightly log), a markdown report, JSON, and the
warning banner for figures from another machine or workload.

Presentation only: every verdict, allowance and message is decided in
:mod:`m2det_impl.gating.regress`; this module formats them.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path
from typing import List, Optional, Tuple

from m2det_impl._io import PathLike, atomic_write_json, atomic_write_text
from m2det_impl.gating.regress_types import Comparison, Row
from m2det_impl.logs import RESULT, get_logger

__all__ = ["HEADERS", "text_table", "markdown_report", "report_json", "write_report", "announce"]

logger = get_logger(__name__)


def _fmt(value: Optional[float]) -> str:
    if value is None:
        return "-"
    if value == 0:
        return "0"
    if not math.isfinite(value):
        return str(value)
    magnitude = abs(value)
    if 1e-3 <= magnitude < 1e5:
        return f"{value:.4f}".rstrip("0").rstrip(".") if magnitude < 1 else f"{value:.3f}".rstrip("0").rstrip(".")
    return f"{value:.3g}"



def _delta_text(row: Row) -> str:
    if row.delta is None:
        return "-"
    text = ("+" if row.delta >= 0 else "-") + _fmt(abs(row.delta))
    if row.delta_percent is not None:
        text += f" ({row.delta_percent:+.1f}%)"
    return text


def _cells(cmp: Comparison) -> List[List[str]]:
    return [[r.kind, r.name, _fmt(r.baseline), _fmt(r.current), _delta_text(r), r.rule, cmp.shown_verdict(r)]
            for r in cmp.rows]


HEADERS = ["kind", "figure", "baseline", "current", "delta", "allowed", "verdict"]


def text_table(cmp: Comparison) -> str:
    """The comparison as an aligned plain-text table (what the nightly log shows)."""
    cells = [HEADERS] + _cells(cmp)
    widths = [max(len(row[i]) for row in cells) for i in range(len(HEADERS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _banner(cmp: Comparison) -> List[str]:
    lines = []
    for m in cmp.mismatches:
        allowed = m not in cmp.blocking
        lines.append(f"{m.section} {m.key}: baseline {m.baseline!r}, current {m.current!r}"
                     + (" (allowed: gated anyway)" if allowed else ""))
    return lines


def _own_baseline_hint(cmp: Comparison) -> str:
    """How to gate a machine the baseline was not measured on: a shipped baseline
    (measured on one CPU model) cannot gate another, so the user records their own once."""
    if not any(m.section == "machine" for m in cmp.blocking):
        return ""
    return ("To gate this machine, record its own baseline once, review it and keep it: "
            f"m2det regress --baseline MY_MACHINE.json --current {cmp.current_path} --update")


def markdown_report(cmp: Comparison) -> str:
    lines = [f"# m2det regress: {cmp.platform}", "",
             f"- baseline: `{cmp.baseline_path}`", f"- current: `{cmp.current_path}`",
             f"- result: **{cmp.status}**", ""]
    if cmp.mismatches:
        head = ("> **WARNING: measured on another machine or workload; NOTHING WAS GATED.**" if not cmp.gated
                else "> **WARNING: machine or workload differs; gated anyway as asked.**")
        lines += [head, ">"] + [f"> - {line}" for line in _banner(cmp)]
        hint = _own_baseline_hint(cmp)
        if hint:
            lines += [">", f"> {hint}"]
        lines.append("")
    for note in cmp.notes:
        lines.append(f"> {note}")
    if cmp.notes:
        lines.append("")
    lines += ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in _cells(cmp)]
    failing = [r.message for r in cmp.rows if r.failed or r.verdict == "new"]
    if failing:
        lines += ["", "## Details", ""] + [f"- {m}" for m in failing]
    if cmp.environment_changes:
        lines += ["", "## Environment changes since the baseline (not gating)", ""]
        lines += [f"- {k}: {a!r} -> {b!r}" for k, a, b in cmp.environment_changes]
    unstated = {k: v for k, v in cmp.unstated.items() if v}
    if unstated:
        lines += ["", "Not stated by the baseline, so not compared: "
                  + "; ".join(f"{s} {', '.join(v)}" for s, v in unstated.items())]
    return "\n".join(lines) + "\n"


def report_json(cmp: Comparison) -> dict:
    return {
        "baseline": cmp.baseline_path, "current": cmp.current_path, "platform": cmp.platform,
        "gated": cmp.gated, "status": cmp.status, "exit_code": cmp.exit_code,
        "mismatches": [asdict(m) for m in cmp.mismatches],
        "blocking": [asdict(m) for m in cmp.blocking],
        "unstated": cmp.unstated,
        "environment_changes": [{"key": k, "baseline": a, "current": b} for k, a, b in cmp.environment_changes],
        "notes": list(cmp.notes),
        "rows": [r.as_dict() for r in cmp.rows],
        "regressions": [r.message for r in cmp.regressions],
    }


def write_report(cmp: Comparison, folder: PathLike) -> Tuple[Path, Path]:
    """``regress.json`` and ``regress.md`` in ``folder`` (atomically)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return (atomic_write_json(folder / "regress.json", report_json(cmp), indent=2),
            atomic_write_text(folder / "regress.md", markdown_report(cmp)))


def announce(cmp: Comparison) -> None:
    """``m2det regress``'s console output, logged: the mismatch banner as warnings,
    then the notes, the table, the failing rows and environment changes as results."""
    if cmp.mismatches:
        bar = "!" * 78
        logger.warning(bar)
        logger.warning("!!! WARNING: the current results come from another " +
            " and ".join(sorted({m.section for m in cmp.mismatches})) + " than the baseline")
        for line in _banner(cmp):
            logger.warning("!!!   " + line)
        logger.warning("!!! " + ("NOTHING IS GATED: figures from different machines or workloads are not comparable. "
                      "Pass --allow-other-machine / --allow-other-workload to gate anyway."
                      if not cmp.gated else "gating anyway, as asked"))
        hint = _own_baseline_hint(cmp)
        if hint:
            logger.warning("!!! " + hint)
        logger.warning(bar)
    for note in cmp.notes:
        logger.log(RESULT, f"note: {note}")
    logger.log(RESULT, text_table(cmp))
    for row in cmp.rows if cmp.gated else ():
        if row.failed:
            logger.log(RESULT, "  " + row.message)
    if cmp.environment_changes:
        logger.log(RESULT, "environment changes since the baseline (not gating): "
              + ", ".join(f"{k} {a} -> {b}" for k, a, b in cmp.environment_changes))
