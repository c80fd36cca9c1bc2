"""Regression gating: today's figures against a stored baseline.

The third way the suite is used (after the cpu suite and the hardware gates):
a nightly job that fails when accuracy, output tolerance or speed regress.
Baselines are data, ``m2det_impl/data/baselines/<platform>.json`` (package data), each holding the
figures that gate, the machine, workload and environment that produced them,
and the one-sided rules they are held to:

- a *higher-is-better* kind (AP, throughput) states ``max_drop`` (absolute)
  and/or ``max_drop_percent`` (of the baseline): the figure may fall by at most
  that much, and may rise by any amount;
- a *lower-is-better* kind (tolerance statistics) states ``max_growth`` and/or
  ``max_growth_percent``: the statistic may not grow by more (0 = not at all).

Figures are compared only between like and like. The baseline states the
machine (CPU model, cores, architecture, NPU SoC, CANN and driver versions,
GPU) and the workload (input size, weights, images, precision) it was measured
with; when the current results differ in any stated key the comparison warns
loudly and does not gate (exit 4) unless told to (``--allow-other-machine``,
``--allow-other-workload``). Library versions are listed when they differ but
never block: an upgrade that slows the model is exactly what the nightly is
for.

``--update`` rewrites the baseline from the current results, atomically, and
only when asked: nothing here ever writes a baseline implicitly.

Exit codes (``m2det regress``): 0 no regression, 1 a figure regressed or is
missing, 2 bad input, 4 not gated (machine or workload differs); m2det_impl/exit_codes.py.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple

from m2det_impl._io import PathLike, atomic_write_json, output_folder, read_json_object
from m2det_impl.errors import InputFileError, M2DetError
from m2det_impl.exit_codes import EXIT_OK
from m2det_impl.gating.machine import MACHINE_KEYS
from m2det_impl.gating.regress_report import _fmt, announce, write_report
from m2det_impl.gating.regress_types import Comparison, Mismatch, Row
from m2det_impl.logs import RESULT, get_logger
from m2det_impl.resources import BASELINES_DIR

__all__ = [
    "load_results",
    "BASELINE_FORMAT",
    "RESULTS_FORMAT",
    "BASELINES_DIR",
    "DEFAULT_RULES",
    "Rule",
    "Row",
    "Mismatch",
    "Comparison",
    "load_baseline",
    "compare",
    "updated_baseline",
    "run_regress",
]

logger = get_logger(__name__)

BASELINE_FORMAT = "m2det-baseline/1"
RESULTS_FORMAT = "m2det-results/1"
WORKLOAD_KEYS = ("size", "weights", "dataset", "images", "precision")

#: Rules a baseline created by ``--update`` from nothing starts with (edit them there).
DEFAULT_RULES: Dict[str, Dict[str, object]] = {
    "ap": {"max_drop": 0.0, "reason": "the same model on the same images must score the same"},
    "throughput": {"max_drop_percent": 10.0, "reason": "pure inference images/s: a few percent of run-to-run noise"},
    "end_to_end": {"max_drop_percent": 15.0, "reason": "files to results images/s: host load adds noise"},
    "host_throughput": {"max_drop_percent": 15.0, "reason": "decode + preprocess + post-process images/s"},
    "tolerance": {"max_growth_percent": 0.0, "reason": "output differences between runtimes may not grow"},
}


# ------------------------------------------------------------------ rules
@dataclass(frozen=True)
class Rule:
    """One-sided: ``better`` is ``higher`` or ``lower``; the figure may worsen by
    at most ``absolute + percent / 100 * |baseline|``."""

    kind: str
    better: str
    absolute: float
    percent: float
    reason: str

    @classmethod
    def parse(cls, kind: str, spec: Mapping, source: str) -> "Rule":
        if not isinstance(spec, Mapping):
            raise InputFileError(source, f"rule {kind!r} must be an object, got {spec!r}")
        drop = [k for k in ("max_drop", "max_drop_percent") if k in spec]
        growth = [k for k in ("max_growth", "max_growth_percent") if k in spec]
        if bool(drop) == bool(growth):
            raise InputFileError(source, f"rule {kind!r} needs max_drop[_percent] (higher is better) or "
                                         f"max_growth[_percent] (lower is better), not both or neither; got {dict(spec)}")
        if not str(spec.get("reason", "")).strip():
            raise InputFileError(source, f"rule {kind!r} needs a reason")
        prefix = "max_drop" if drop else "max_growth"
        try:
            absolute = float(spec.get(prefix, 0.0))
            percent = float(spec.get(prefix + "_percent", 0.0))
        except (TypeError, ValueError):
            raise InputFileError(source, f"rule {kind!r}: {prefix} values must be numbers, got {dict(spec)}") from None
        if absolute < 0 or percent < 0 or not (math.isfinite(absolute) and math.isfinite(percent)):
            raise InputFileError(source, f"rule {kind!r}: allowances must be finite and >= 0, got {dict(spec)}")
        return cls(kind, "higher" if drop else "lower", absolute, percent, str(spec["reason"]))

    def allowance(self, baseline: float) -> float:
        return self.absolute + self.percent / 100.0 * abs(baseline)

    def worsening(self, baseline: float, current: float) -> float:
        """How much worse ``current`` is than ``baseline`` (negative: better)."""
        return baseline - current if self.better == "higher" else current - baseline

    def describe(self) -> str:
        word = "drop" if self.better == "higher" else "growth"
        parts = ([f"{self.absolute:g}"] if self.absolute or not self.percent else []) + \
                ([f"{self.percent:g}%"] if self.percent else [])
        return f"{word} <= " + " + ".join(parts)


# ------------------------------------------------------------------ files
def _figures(data: Mapping, source: str) -> Dict[str, Dict[str, float]]:
    figures = data.get("figures")
    if not isinstance(figures, Mapping) or not figures:
        raise InputFileError(source, "no 'figures' object: {kind: {name: value}}")
    out: Dict[str, Dict[str, float]] = {}
    for kind, values in figures.items():
        if str(kind).startswith("_"):
            continue
        if not isinstance(values, Mapping):
            raise InputFileError(source, f"figures[{kind!r}] must be an object of name: number")
        out[kind] = {}
        for name, value in values.items():
            if str(name).startswith("_"):
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise InputFileError(source, f"figure {kind}/{name} must be a number, got {value!r}")
            out[kind][name] = float(value)
    return out


def _section(data: Mapping, key: str, source: str) -> Dict[str, object]:
    value = data.get(key, {})
    if not isinstance(value, Mapping):
        raise InputFileError(source, f"{key!r} must be an object")
    return dict(value)


def load_baseline(path: PathLike) -> dict:
    """A baseline file, validated: format, figures and one rule per figure kind."""
    path = Path(path)
    data = read_json_object(path, "baseline")
    source = str(path)
    if data.get("format") != BASELINE_FORMAT:
        raise InputFileError(path, f"not a baseline: 'format' is {data.get('format')!r}, expected {BASELINE_FORMAT!r}")
    data["figures"] = _figures(data, source)
    rules = _section(data, "rules", source)
    parsed = {k: Rule.parse(k, v, source) for k, v in rules.items() if not str(k).startswith("_")}
    missing = sorted(set(data["figures"]) - set(parsed))
    if missing:
        raise InputFileError(path, f"no rule for figure kind(s) {missing}: add them under 'rules'")
    data["_rules"] = parsed
    for key in ("machine", "workload", "environment"):
        data[key] = _section(data, key, source)
    return data


def load_results(path: PathLike) -> dict:
    """A current-results file (``m2det collect``), validated."""
    path = Path(path)
    data = read_json_object(path, "results file")
    if data.get("format") != RESULTS_FORMAT:
        raise InputFileError(path, f"not a results file: 'format' is {data.get('format')!r}, "
                                   f"expected {RESULTS_FORMAT!r} (write one with m2det collect)")
    data["figures"] = _figures(data, str(path))
    for key in ("machine", "workload", "environment"):
        data[key] = _section(data, key, str(path))
    return data


# ------------------------------------------------------------------ comparison
def _same(a: object, b: object) -> bool:
    if isinstance(a, str) and isinstance(b, str):
        return a.strip() == b.strip()
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return float(a) == float(b)
    return a == b


def _context(baseline: Mapping, current: Mapping) -> Tuple[List[Mismatch], Dict[str, List[str]]]:
    """Keys the baseline states are compared; keys it leaves out are unknown, not compared."""
    mismatches, unstated = [], {}
    for section, keys in (("machine", MACHINE_KEYS), ("workload", WORKLOAD_KEYS)):
        stated = {k: v for k, v in baseline[section].items() if not str(k).startswith("_")}
        for key, value in stated.items():
            now = current[section].get(key)
            if not _same(value, now):
                mismatches.append(Mismatch(section, key, value, now))
        unstated[section] = [k for k in keys if k not in stated]
    return mismatches, unstated


def _environment_changes(baseline: Mapping, current: Mapping) -> List[Tuple[str, object, object]]:
    before, after = baseline.get("environment", {}), current.get("environment", {})
    keys = sorted(k for k in set(before) | set(after) if not str(k).startswith("_"))
    return [(k, before.get(k), after.get(k)) for k in keys
            if k in before and not _same(before.get(k), after.get(k))]


def _row(kind: str, name: str, rule: Optional[Rule], base: Optional[float], now: Optional[float]) -> Row:
    label = f"{kind} {name}"
    if base is None:
        return Row(kind, name, None, now, rule.describe() if rule else "-", None, "new",
                   f"{label}: new figure {_fmt(now)} (not in the baseline; not gated)")
    assert rule is not None
    allowance = rule.allowance(base)
    if now is None:
        return Row(kind, name, base, None, rule.describe(), allowance, "MISSING",
                   f"{label}: MISSING from the current results (baseline {_fmt(base)}); "
                   "a figure that was dropped on purpose leaves the baseline only through --update")
    if not math.isfinite(now):
        return Row(kind, name, base, now, rule.describe(), allowance, "REGRESSED",
                   f"{label}: {now} is not finite (baseline {_fmt(base)})")
    worse = rule.worsening(base, now)
    word = "below" if rule.better == "higher" else "above"
    pct = f" ({100.0 * abs(now - base) / abs(base):.1f}%)" if base else ""
    if worse > allowance + 1e-12 * max(1.0, abs(base)):  # float slack: 0.378 - 0.3775 > 0.0005 in binary
        return Row(kind, name, base, now, rule.describe(), allowance, "REGRESSED",
                   f"{label}: {_fmt(now)} is {_fmt(abs(now - base))}{pct} {word} the baseline {_fmt(base)}; "
                   f"allowed {rule.describe()} = {_fmt(allowance)} ({rule.reason})")
    verdict = "improved" if -worse > allowance else "ok"
    return Row(kind, name, base, now, rule.describe(), allowance, verdict, "")


def compare(baseline: Mapping, current: Mapping, *, baseline_path: str = "baseline", current_path: str = "current",
            allow_other_machine: bool = False, allow_other_workload: bool = False) -> Comparison:
    """Every figure of either file, each held to its kind's rule from the baseline."""
    rules: Dict[str, Rule] = baseline["_rules"]
    rows: List[Row] = []
    kinds = list(baseline["figures"]) + [k for k in current["figures"] if k not in baseline["figures"]]
    for kind in kinds:
        base, now = baseline["figures"].get(kind, {}), current["figures"].get(kind, {})
        for name in list(base) + sorted(n for n in now if n not in base):
            rows.append(_row(kind, name, rules.get(kind), base.get(name), now.get(name)))
    mismatches, unstated = _context(baseline, current)
    notes = [str(n) for n in current.get("notes", [])] if isinstance(current.get("notes"), list) else []
    return Comparison(baseline_path, current_path, str(baseline.get("platform", "?")), rows, mismatches, unstated,
                      _environment_changes(baseline, current), allow_other_machine, allow_other_workload, notes)


# ------------------------------------------------------------------ update
def updated_baseline(previous: Optional[Mapping], current: Mapping, current_path: str) -> dict:
    """The baseline ``--update`` writes: the current figures, machine, workload and
    environment under the previous file's platform, description and rules
    (:data:`DEFAULT_RULES` for a new file)."""
    previous = previous or {}
    rules = previous.get("rules") or {k: v for k, v in DEFAULT_RULES.items() if k in current["figures"]}
    missing = sorted(set(current["figures"]) - {k for k in rules if not str(k).startswith("_")})
    if missing:
        rules = dict(rules)
        rules.update({k: DEFAULT_RULES[k] for k in missing if k in DEFAULT_RULES})
        unknown = [k for k in missing if k not in DEFAULT_RULES]
        if unknown:
            raise InputFileError(current_path, f"figure kind(s) {unknown} have no rule in the baseline and no default")
    data = {
        "format": BASELINE_FORMAT,
        "platform": previous.get("platform") or current.get("platform"),
        "description": previous.get("description") or f"measured on {current.get('platform')}",
        "source": {"by": "m2det regress --update", "from": current_path,
                   "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "notes": list(current.get("notes", []))},
        "machine": current["machine"],
        "workload": current["workload"],
        "environment": current.get("environment", {}),
        "rules": rules,
        "figures": current["figures"],
    }
    return data


# ------------------------------------------------------------------ command
def run_regress(baseline_path: PathLike, current_path: PathLike, out: Optional[PathLike] = None, *,
                allow_other_machine: bool = False, allow_other_workload: bool = False, update: bool = False) -> int:
    """``m2det regress``: compare, print the table, write JSON and markdown, gate.

    With ``update`` the baseline is then rewritten from the current results
    (created if absent) and the exit code is 0: the update is the decision.
    """
    baseline_path, current_path = Path(baseline_path), Path(current_path)
    current = load_results(current_path)
    if update and not baseline_path.exists():
        baseline = None
        logger.info(f"{baseline_path}: no baseline yet; --update creates it from {current_path}")
    else:
        baseline = load_baseline(baseline_path)
    if baseline is not None:
        cmp = compare(baseline, current, baseline_path=str(baseline_path), current_path=str(current_path),
                      allow_other_machine=allow_other_machine, allow_other_workload=allow_other_workload)
        # the folder is proven writable before the table is printed: an error after 45 rows is easy to miss
        with output_folder(Path(out) if out is not None else current_path.parent) as folder:
            announce(cmp)
            json_path, md_path = write_report(cmp, folder)
        logger.log(RESULT, f"regress: {cmp.status} -> {json_path}, {md_path}")
        code = cmp.exit_code
    else:
        code = EXIT_OK
    if update:
        previous = json.loads(baseline_path.read_text(encoding="utf-8")) if baseline is not None else None
        data = updated_baseline(previous, current, str(current_path))
        try:
            baseline_path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(baseline_path, data, indent=2)
        except OSError as exc:
            raise M2DetError(f"{baseline_path}: could not write the updated baseline ({exc.strerror or exc}); "
                             "the previous file is unchanged") from None
        logger.log(RESULT, f"baseline UPDATED (deliberately, --update): {baseline_path} now holds "
              f"{sum(len(v) for v in data['figures'].values())} figures of {current_path}")
        if baseline is not None:
            dropped = [f"{r.kind}/{r.name}" for r in cmp.rows if r.verdict == "MISSING"]
            if dropped:
                logger.log(RESULT, "dropped from the baseline (not in the current results): " + ", ".join(dropped))
        return EXIT_OK
    return code
