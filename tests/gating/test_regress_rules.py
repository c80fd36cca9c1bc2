"""The verdict code of m2det_impl.gating.regress, function by function: rule
parsing and its errors, the one-sided comparison at its boundaries (a figure
exactly at the allowed drop passes, a hair past it fails, for each direction),
the exact REGRESSED/MISSING/new lines a user reads, which machine and workload
keys are compared, file validation naming the file and key, and what
``--update`` writes. Every expected value is written out here by hand."""

from __future__ import annotations

import json
import math
import re

import pytest

from m2det_impl.errors import InputFileError, M2DetError
from m2det_impl.exit_codes import EXIT_GATE_FAILED, EXIT_NOT_GATED, EXIT_OK
from m2det_impl.gating import regress
from m2det_impl.gating.machine import MACHINE_KEYS
from m2det_impl.gating.regress import (
    DEFAULT_RULES,
    Comparison,
    Mismatch,
    Row,
    Rule,
    _context,
    _environment_changes,
    _row,
    _same,
    compare,
    load_baseline,
    load_results,
    run_regress,
    updated_baseline,
)

pytestmark = pytest.mark.cpu

AP = Rule("ap", "higher", 0.002, 0.0, "two thousandths")
SPEED = Rule("throughput", "higher", 1.0, 10.0, "noise")
TOL = Rule("tolerance", "lower", 0.0, 0.0, "may not grow")


# ------------------------------------------------------------------ Rule.parse
@pytest.mark.parametrize("spec, rule", [
    ({"max_drop": 0.002, "reason": "r"}, Rule("k", "higher", 0.002, 0.0, "r")),
    ({"max_drop_percent": 10, "reason": "r"}, Rule("k", "higher", 0.0, 10.0, "r")),
    ({"max_drop": "1", "max_drop_percent": 2.5, "reason": "r"}, Rule("k", "higher", 1.0, 2.5, "r")),
    ({"max_growth": 3, "reason": "r"}, Rule("k", "lower", 3.0, 0.0, "r")),
    ({"max_growth_percent": 0, "reason": "r"}, Rule("k", "lower", 0.0, 0.0, "r")),
    ({"max_growth": 0.5, "max_growth_percent": 4, "reason": 7}, Rule("k", "lower", 0.5, 4.0, "7")),
])
def test_rule_parse_reads_the_direction_and_both_allowances(spec, rule):
    parsed = Rule.parse("k", spec, "b.json")
    assert parsed == rule
    assert type(parsed.absolute) is float and type(parsed.percent) is float


@pytest.mark.parametrize("spec, problem", [
    (3, "rule 'k' must be an object, got 3"),
    ({"reason": "r"}, "rule 'k' needs max_drop[_percent] (higher is better) or max_growth[_percent] (lower is better), "
                      "not both or neither; got {'reason': 'r'}"),
    ({"max_drop": 1, "max_growth": 1, "reason": "r"},
     "rule 'k' needs max_drop[_percent] (higher is better) or max_growth[_percent] (lower is better), "
     "not both or neither; got {'max_drop': 1, 'max_growth': 1, 'reason': 'r'}"),
    ({"max_drop_percent": 1, "max_growth_percent": 1, "reason": "r"},
     "rule 'k' needs max_drop[_percent] (higher is better) or max_growth[_percent] (lower is better), "
     "not both or neither; got {'max_drop_percent': 1, 'max_growth_percent': 1, 'reason': 'r'}"),
    ({"max_drop": 1}, "rule 'k' needs a reason"),
    ({"max_drop": 1, "reason": "  "}, "rule 'k' needs a reason"),
    ({"max_drop": "a lot", "reason": "r"}, "rule 'k': max_drop values must be numbers, got "
                                           "{'max_drop': 'a lot', 'reason': 'r'}"),
    ({"max_growth_percent": None, "reason": "r"}, "rule 'k': max_growth values must be numbers, got "
                                                  "{'max_growth_percent': None, 'reason': 'r'}"),
    ({"max_drop": -0.001, "reason": "r"}, "rule 'k': allowances must be finite and >= 0, got "
                                          "{'max_drop': -0.001, 'reason': 'r'}"),
    ({"max_drop_percent": -1, "reason": "r"}, "rule 'k': allowances must be finite and >= 0, got "
                                              "{'max_drop_percent': -1, 'reason': 'r'}"),
    ({"max_growth": math.inf, "reason": "r"}, "rule 'k': allowances must be finite and >= 0, got "
                                              "{'max_growth': inf, 'reason': 'r'}"),
    ({"max_growth_percent": math.nan, "reason": "r"}, "rule 'k': allowances must be finite and >= 0, got "
                                                      "{'max_growth_percent': nan, 'reason': 'r'}"),
])
def test_rule_parse_refuses_naming_the_file_and_the_rule(spec, problem):
    with pytest.raises(InputFileError) as err:
        Rule.parse("k", spec, "b.json")
    assert str(err.value) == f"b.json: {problem}"


def test_a_zero_allowance_is_allowed():
    assert Rule.parse("k", {"max_drop": 0, "max_drop_percent": 0.0, "reason": "r"}, "b") == \
        Rule("k", "higher", 0.0, 0.0, "r")


@pytest.mark.parametrize("rule, text", [
    (Rule("k", "higher", 0.002, 0.0, "r"), "drop <= 0.002"),
    (Rule("k", "higher", 0.0, 10.0, "r"), "drop <= 10%"),
    (Rule("k", "higher", 1.0, 2.5, "r"), "drop <= 1 + 2.5%"),
    (Rule("k", "lower", 0.0, 0.0, "r"), "growth <= 0"),
    (Rule("k", "lower", 3e-7, 0.0, "r"), "growth <= 3e-07"),
    (Rule("k", "lower", 0.0, 5.0, "r"), "growth <= 5%"),
])
def test_rule_describe(rule, text):
    assert rule.describe() == text


# ------------------------------------------------------------------ _row
def test_a_drop_exactly_at_the_allowance_passes_and_one_ulp_past_fails():
    exact = Rule("ap", "higher", 0.125, 0.0, "r")  # binary-exact figures: no float slack involved
    assert _row("ap", "x", exact, 0.5, 0.375).verdict == "ok"
    assert _row("ap", "x", exact, 0.5, 0.5).verdict == "ok"
    assert _row("ap", "x", exact, 0.5, 0.625).verdict == "ok"  # better by exactly the allowance: not 'improved'
    assert _row("ap", "x", exact, 0.5, math.nextafter(0.625, 1)).verdict == "improved"
    past = 0.375 - 2e-12  # past the float slack of 1e-12 * max(1, |baseline|)
    assert _row("ap", "x", exact, 0.5, past).verdict == "REGRESSED"
    assert _row("ap", "x", exact, 0.5, 0.375 - 0.5e-12).verdict == "ok"  # within the slack


def test_growth_exactly_at_the_allowance_passes_and_past_it_fails():
    grow = Rule("tolerance", "lower", 0.25, 50.0, "r")  # allowance 0.25 + 50% of |-1.0| = 0.75
    assert _row("tolerance", "t", grow, -1.0, -0.25).verdict == "ok"
    assert _row("tolerance", "t", grow, -1.0, -0.25 + 2e-12).verdict == "REGRESSED"
    assert _row("tolerance", "t", grow, -1.0, -1.75).verdict == "ok"
    assert _row("tolerance", "t", grow, -1.0, math.nextafter(-1.75, -2)).verdict == "improved"
    assert _row("tolerance", "t", grow, -1.0, -1.0).allowance == 0.75


def test_the_float_slack_scales_with_the_baseline_but_never_below_one_unit():
    zero = Rule("k", "higher", 0.0, 0.0, "r")
    assert _row("k", "x", zero, 0.5, 0.5 - 1.5e-12).verdict == "REGRESSED"  # slack 1e-12 for |baseline| < 1
    assert _row("k", "x", zero, 0.5, 0.5 - 0.5e-12).verdict == "ok"
    grow = Rule("k", "lower", 0.0, 0.0, "r")
    assert _row("k", "x", grow, -4.0, -4.0 + 2e-12).verdict == "ok"  # slack 4e-12 for |baseline| 4
    assert _row("k", "x", grow, -4.0, -4.0 + 6e-12).verdict == "REGRESSED"
    assert _row("k", "x", zero, 1000.0, 1000.0 - 5e-10).verdict == "ok"  # slack 1e-9
    assert _row("k", "x", grow, 0.0, 1e-12).verdict == "ok"  # exactly at allowance + slack: still within


@pytest.mark.parametrize("rule, base, now, verdict", [
    (AP, 0.3, 0.31, "improved"), (AP, 0.3, 0.29, "REGRESSED"), (AP, 0.3, 0.299, "ok"), (AP, 0.3, 0.301, "ok"),
    (TOL, 2e-6, 1e-6, "improved"), (TOL, 2e-6, 3e-6, "REGRESSED"), (TOL, 2e-6, 2e-6, "ok"),
    (Rule("k", "lower", 1.0, 0.0, "r"), 5.0, 3.0, "improved"), (Rule("k", "lower", 1.0, 0.0, "r"), 5.0, 6.5, "REGRESSED"),
    (SPEED, 50.0, 44.0, "ok"), (SPEED, 50.0, 43.9, "REGRESSED"), (SPEED, 50.0, 56.5, "improved"),
])
def test_every_rule_kind_is_one_sided_in_its_own_direction(rule, base, now, verdict):
    assert _row(rule.kind, "x", rule, base, now).verdict == verdict


def test_rows_carry_values_rule_allowance_and_the_exact_line():
    assert _row("ap", "x", AP, 0.3, 0.297) == Row(
        "ap", "x", 0.3, 0.297, "drop <= 0.002", 0.002, "REGRESSED",
        "ap x: 0.297 is 0.003 (1.0%) below the baseline 0.3; allowed drop <= 0.002 = 0.002 (two thousandths)")
    assert _row("throughput", "bs1", SPEED, 50.0, 40.0) == Row(
        "throughput", "bs1", 50.0, 40.0, "drop <= 1 + 10%", 6.0, "REGRESSED",
        "throughput bs1: 40 is 10 (20.0%) below the baseline 50; allowed drop <= 1 + 10% = 6 (noise)")
    assert _row("tolerance", "t", TOL, 2e-6, 3e-6) == Row(
        "tolerance", "t", 2e-6, 3e-6, "growth <= 0", 0.0, "REGRESSED",
        "tolerance t: 3e-06 is 1e-06 (50.0%) above the baseline 2e-06; allowed growth <= 0 = 0 (may not grow)")
    # a zero baseline has no percentage
    assert _row("tolerance", "t", TOL, 0.0, 1e-6).message == \
        "tolerance t: 1e-06 is 1e-06 above the baseline 0; allowed growth <= 0 = 0 (may not grow)"
    assert _row("ap", "x", AP, 0.3, 0.3005) == Row("ap", "x", 0.3, 0.3005, "drop <= 0.002", 0.002, "ok", "")
    assert _row("ap", "x", AP, 0.3, 0.4) == Row("ap", "x", 0.3, 0.4, "drop <= 0.002", 0.002, "improved", "")


def test_missing_new_and_non_finite_rows():
    assert _row("ap", "x", AP, 0.3, None) == Row(
        "ap", "x", 0.3, None, "drop <= 0.002", 0.002, "MISSING",
        "ap x: MISSING from the current results (baseline 0.3); "
        "a figure that was dropped on purpose leaves the baseline only through --update")
    assert _row("ap", "x", None, None, 0.3) == Row(
        "ap", "x", None, 0.3, "-", None, "new", "ap x: new figure 0.3 (not in the baseline; not gated)")
    assert _row("ap", "x", AP, None, 0.3).rule == "drop <= 0.002"  # a new figure of a kind with a rule
    assert _row("ap", "x", AP, 0.3, -math.inf) == Row(
        "ap", "x", 0.3, -math.inf, "drop <= 0.002", 0.002, "REGRESSED", "ap x: -inf is not finite (baseline 0.3)")
    nan = _row("ap", "x", AP, 0.3, math.nan)
    assert (nan.verdict, nan.allowance, nan.rule, nan.message) == (
        "REGRESSED", 0.002, "drop <= 0.002", "ap x: nan is not finite (baseline 0.3)")
    assert _row("ap", "x", AP, 0.3, math.inf).verdict == "REGRESSED"  # even an infinitely 'better' figure


# ------------------------------------------------------------------ context
@pytest.mark.parametrize("a, b, same", [
    (" x ", "x", True), ("x", "y", False), (512, 512.0, True), (512, 513, False), (2, "2", False),
    (None, None, True), (None, "x", False), (True, True, True), ([1], [1], True),
    (2**53 + 1, float(2**53 + 1), True),  # numbers compare as floats
])
def test_same(a, b, same):
    assert _same(a, b) is same


def test_context_compares_only_the_keys_the_baseline_states():
    baseline = {"machine": {"cpu": "A ", "cores": 2, "_note": "x"}, "workload": {"size": 512, "images": 8}}
    current = {"machine": {"cpu": "A", "cores": 4, "_note": "y", "gpu": "G"}, "workload": {"size": 512.0}}
    mismatches, unstated = _context(baseline, current)
    assert mismatches == [Mismatch("machine", "cores", 2, 4), Mismatch("workload", "images", 8, None)]
    assert unstated == {"machine": [k for k in MACHINE_KEYS if k not in ("cpu", "cores")],
                        "workload": ["weights", "dataset", "precision"]}
    assert unstated["machine"][:5] == ["arch", "soc", "cann", "driver", "gpu"]


def test_environment_changes_list_only_keys_the_baseline_had_that_changed():
    before = {"environment": {"torch": "2.1", "onnx": "1.0", "numpy": "1.26", "_x": 1, "gone": "1"}}
    after = {"environment": {"torch": "2.2", "onnx": " 1.0", "numpy": "1.26", "_x": 2, "new": "9"}}
    assert _environment_changes(before, after) == [("gone", "1", None), ("torch", "2.1", "2.2")]
    assert _environment_changes({}, after) == []
    assert _environment_changes(before, {}) == [("gone", "1", None), ("numpy", "1.26", None), ("onnx", "1.0", None),
                                                ("torch", "2.1", None)]


# ------------------------------------------------------------------ compare
def _base(**figures):
    return {"figures": figures or {"ap": {"b": 0.3, "a": 0.4}, "tolerance": {"m": 1.0}},
            "_rules": {"ap": AP, "tolerance": TOL}, "platform": "p",
            "machine": {"cpu": "A"}, "workload": {"size": 512}, "environment": {"torch": "2.1"}}


def _now(**figures):
    return {"figures": figures or {"ap": {"b": 0.3, "z": 0.1, "a": 0.1, "c": 0.2}, "extra": {"e": 1.0}},
            "machine": {"cpu": "A"}, "workload": {"size": 512}, "environment": {"torch": "2.2"},
            "notes": ["n1", 2]}


def test_compare_orders_rows_baseline_first_then_new_figures_sorted():
    cmp = compare(_base(), _now())
    assert [(r.kind, r.name, r.verdict) for r in cmp.rows] == [
        ("ap", "b", "ok"), ("ap", "a", "REGRESSED"), ("ap", "c", "new"), ("ap", "z", "new"),
        ("tolerance", "m", "MISSING"), ("extra", "e", "new")]
    assert (cmp.baseline_path, cmp.current_path, cmp.platform) == ("baseline", "current", "p")
    assert cmp.notes == ["n1", "2"]
    assert cmp.environment_changes == [("torch", "2.1", "2.2")]
    assert cmp.mismatches == [] and cmp.unstated["machine"][0] == "cores"
    assert (cmp.allow_other_machine, cmp.allow_other_workload) == (False, False)
    assert cmp.exit_code == EXIT_GATE_FAILED
    assert cmp.status == "REGRESSED: 2 of 6 figures"


def test_compare_passes_paths_and_permissions_through():
    base = _base()
    base.pop("platform")
    now = dict(_now(), notes="not a list", machine={"cpu": "B"}, workload={"size": 320})
    cmp = compare(base, now, baseline_path="b.json", current_path="c.json", allow_other_machine=True)
    assert (cmp.baseline_path, cmp.current_path, cmp.platform, cmp.notes) == ("b.json", "c.json", "?", [])
    assert (cmp.allow_other_machine, cmp.allow_other_workload) == (True, False)
    assert cmp.blocking == [Mismatch("workload", "size", 512, 320)]
    assert cmp.exit_code == EXIT_NOT_GATED
    assert cmp.status == "NOT GATED: workload size differs"
    cmp = compare(base, now, allow_other_workload=True)
    assert cmp.blocking == [Mismatch("machine", "cpu", "A", "B")]


def test_shown_verdict_marks_rows_of_an_ungated_comparison():
    row = Row("ap", "a", 0.3, 0.1, "r", 0.0, "REGRESSED")
    new = Row("ap", "c", None, 0.1, "-", None, "new")
    ungated = Comparison("b", "c", "p", [row, new], [Mismatch("machine", "cpu", "A", "B")], {}, [])
    assert ungated.shown_verdict(row) == "not gated (REGRESSED)"
    assert ungated.shown_verdict(new) == "new"
    gated = Comparison("b", "c", "p", [row], [], {}, [])
    assert gated.shown_verdict(row) == "REGRESSED"
    assert Comparison("b", "c", "p", [new], [], {}, []).exit_code == EXIT_OK


def test_row_as_dict_is_json_ready():
    row = Row("ap", "x", 0.5, math.nan, "drop <= 0", 0.0, "REGRESSED", "m")
    d = row.as_dict()
    assert d == {"kind": "ap", "name": "x", "baseline": 0.5, "current": "nan", "rule": "drop <= 0",
                 "allowance": 0.0, "verdict": "REGRESSED", "message": "m", "delta": "nan", "delta_percent": "nan"}
    assert Row("k", "n", 2.0, 3.0, "r", 0.0, "ok").as_dict()["delta_percent"] == 50.0
    assert Row("k", "n", 0.0, 3.0, "r", 0.0, "ok").as_dict()["delta_percent"] is None
    json.dumps(d, allow_nan=False)


# ------------------------------------------------------------------ files
def _write(path, data):
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


BASELINE = {"format": "m2det-baseline/1", "platform": "p", "machine": {"cpu": "A"}, "workload": {"size": 512},
            "environment": {"torch": "2.1"},
            "rules": {"ap": {"max_drop": 0.002, "reason": "r"}, "_comment": "skipped"},
            "figures": {"_kind": {"z": "skipped"}, "ap": {"_n": "skipped", "x": 0.3, "y": 1}}}


def test_load_baseline_validates_and_parses(tmp_path):
    data = load_baseline(_write(tmp_path / "b.json", BASELINE))
    assert data["figures"] == {"ap": {"x": 0.3, "y": 1.0}}
    assert type(data["figures"]["ap"]["y"]) is float
    assert data["_rules"] == {"ap": Rule("ap", "higher", 0.002, 0.0, "r")}
    assert (data["machine"], data["workload"], data["environment"]) == ({"cpu": "A"}, {"size": 512}, {"torch": "2.1"})
    data = load_baseline(_write(tmp_path / "b.json", {k: v for k, v in BASELINE.items() if k != "environment"}))
    assert data["environment"] == {}


@pytest.mark.parametrize("change, problem", [
    ({"format": "m2det-results/1"}, "not a baseline: 'format' is 'm2det-results/1', expected 'm2det-baseline/1'"),
    ({"format": None}, "not a baseline: 'format' is None, expected 'm2det-baseline/1'"),
    ({"figures": {}}, "no 'figures' object: {kind: {name: value}}"),
    ({"figures": [1]}, "no 'figures' object: {kind: {name: value}}"),
    ({"figures": {"ap": [0.3]}}, "figures['ap'] must be an object of name: number"),
    ({"figures": {"ap": {"x": "0.3"}}}, "figure ap/x must be a number, got '0.3'"),
    ({"figures": {"ap": {"x": True}}}, "figure ap/x must be a number, got True"),
    ({"figures": {"ap": {"x": 0.3}, "speed": {"s": 1.0}, "tol": {"t": 0.0}}},
     "no rule for figure kind(s) ['speed', 'tol']: add them under 'rules'"),
    ({"rules": [1]}, "'rules' must be an object"),
    ({"machine": "A"}, "'machine' must be an object"),
    ({"workload": 3}, "'workload' must be an object"),
    ({"environment": []}, "'environment' must be an object"),
    ({"rules": {"ap": {"max_drop": -1, "reason": "r"}}},
     "rule 'ap': allowances must be finite and >= 0, got {'max_drop': -1, 'reason': 'r'}"),
])
def test_a_bad_baseline_names_the_file_and_the_key(tmp_path, change, problem):
    path = _write(tmp_path / "b.json", dict(BASELINE, **change))
    with pytest.raises(InputFileError) as err:
        load_baseline(path)
    assert str(err.value) == f"{path}: {problem}"


RESULTS = {"format": "m2det-results/1", "machine": {"cpu": "A"}, "workload": {"size": 512},
           "environment": {"torch": "2.2"}, "figures": {"ap": {"x": 0.3, "_skip": 1}}}


def test_load_results_validates(tmp_path):
    data = load_results(_write(tmp_path / "c.json", RESULTS))
    assert data["figures"] == {"ap": {"x": 0.3}}
    assert (data["machine"], data["workload"], data["environment"]) == ({"cpu": "A"}, {"size": 512}, {"torch": "2.2"})
    data = load_results(_write(tmp_path / "c.json", {"format": "m2det-results/1", "figures": {"ap": {"x": 1}}}))
    assert (data["machine"], data["workload"], data["environment"]) == ({}, {}, {})


@pytest.mark.parametrize("change, problem", [
    ({"format": "m2det-baseline/1"}, "not a results file: 'format' is 'm2det-baseline/1', "
                                     "expected 'm2det-results/1' (write one with m2det collect)"),
    ({"figures": None}, "no 'figures' object: {kind: {name: value}}"),
    ({"figures": {"ap": {"x": None}}}, "figure ap/x must be a number, got None"),
    ({"machine": ["A"]}, "'machine' must be an object"),
    ({"workload": "w"}, "'workload' must be an object"),
    ({"environment": 1}, "'environment' must be an object"),
])
def test_bad_results_name_the_file_and_the_key(tmp_path, change, problem):
    path = _write(tmp_path / "c.json", dict(RESULTS, **change))
    with pytest.raises(InputFileError) as err:
        load_results(path)
    assert str(err.value) == f"{path}: {problem}"


# ------------------------------------------------------------------ update
def test_updated_baseline_keeps_the_previous_identity_and_rules():
    previous = {"platform": "old", "description": "the old one", "rules": {"ap": {"max_drop": 0, "reason": "r"}}}
    current = {"platform": "new", "figures": {"ap": {"x": 0.3}}, "machine": {"cpu": "A"}, "workload": {"size": 1},
               "environment": {"torch": "2.2"}, "notes": ["n"]}
    data = updated_baseline(previous, current, "c.json")
    source = data.pop("source")
    assert data == {"format": "m2det-baseline/1", "platform": "old", "description": "the old one",
                    "machine": {"cpu": "A"}, "workload": {"size": 1}, "environment": {"torch": "2.2"},
                    "rules": {"ap": {"max_drop": 0, "reason": "r"}}, "figures": {"ap": {"x": 0.3}}}
    updated = source.pop("updated")
    assert source == {"by": "m2det regress --update", "from": "c.json", "notes": ["n"]}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4}", updated), updated


def test_updated_baseline_from_nothing_takes_default_rules_for_its_kinds():
    current = {"platform": "new", "figures": {"ap": {"x": 0.3}, "throughput": {"bs1": 5.0}},
               "machine": {}, "workload": {}}
    data = updated_baseline(None, current, "c.json")
    assert data["platform"] == "new" and data["description"] == "measured on new"
    assert data["rules"] == {"ap": DEFAULT_RULES["ap"], "throughput": DEFAULT_RULES["throughput"]}
    assert data["environment"] == {} and data["source"]["notes"] == []


def test_updated_baseline_adds_default_rules_for_new_kinds_and_refuses_unknown_ones():
    previous = {"rules": {"ap": {"max_drop": 0, "reason": "r"}, "_comment": "c"}}
    current = {"figures": {"ap": {"x": 0.3}, "tolerance": {"t": 0.0}}, "machine": {}, "workload": {}}
    data = updated_baseline(previous, current, "c.json")
    assert data["rules"] == {"ap": {"max_drop": 0, "reason": "r"}, "_comment": "c",
                             "tolerance": DEFAULT_RULES["tolerance"]}
    assert previous["rules"] == {"ap": {"max_drop": 0, "reason": "r"}, "_comment": "c"}  # not modified in place
    current["figures"].update(weird={"w": 1.0}, odd={"o": 1.0})
    with pytest.raises(InputFileError) as err:
        updated_baseline(previous, current, "c.json")
    assert str(err.value) == "c.json: figure kind(s) ['odd', 'weird'] have no rule in the baseline and no default"


# ------------------------------------------------------------------ run_regress
def test_run_regress_update_creates_a_baseline_and_says_so(tmp_path, capsys, console):
    current = _write(tmp_path / "c.json", RESULTS)
    baseline = tmp_path / "sub" / "b.json"
    assert run_regress(baseline, current, update=True) == EXIT_OK
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [f"{baseline}: no baseline yet; --update creates it from {current}"]
    assert captured.out == \
        f"baseline UPDATED (deliberately, --update): {baseline} now holds 1 figures of {current}\n"
    written = json.loads(baseline.read_text())
    assert written["figures"] == {"ap": {"x": 0.3}} and written["source"]["from"] == str(current)


def test_run_regress_update_lists_the_figures_it_drops(tmp_path, capsys, console):
    baseline = _write(tmp_path / "b.json", dict(BASELINE, figures={"ap": {"x": 0.3, "gone": 0.5, "gone2": 1.0}}))
    current = _write(tmp_path / "c.json", RESULTS)
    assert run_regress(baseline, current, tmp_path / "out", update=True) == EXIT_OK
    out = capsys.readouterr().out.splitlines()
    assert out[-3] == f"regress: REGRESSED: 2 of 3 figures -> {tmp_path / 'out' / 'regress.json'}, " \
                      f"{tmp_path / 'out' / 'regress.md'}"
    assert out[-2] == f"baseline UPDATED (deliberately, --update): {baseline} now holds 1 figures of {current}"
    assert out[-1] == "dropped from the baseline (not in the current results): ap/gone, ap/gone2"
    assert json.loads(baseline.read_text())["rules"] == BASELINE["rules"]


def test_run_regress_without_update_returns_the_comparisons_code_and_writes_beside_the_results(tmp_path, capsys,
                                                                                             console):
    baseline = _write(tmp_path / "b.json", dict(BASELINE, figures={"ap": {"x": 0.31}}))
    current = _write(tmp_path / "c.json", RESULTS)
    before = baseline.read_text()
    assert run_regress(baseline, current) == EXIT_GATE_FAILED
    assert baseline.read_text() == before
    assert (tmp_path / "regress.json").is_file() and (tmp_path / "regress.md").is_file()
    assert capsys.readouterr().out.splitlines()[-1] == \
        f"regress: REGRESSED: 1 of 1 figures -> {tmp_path / 'regress.json'}, {tmp_path / 'regress.md'}"


def test_run_regress_update_that_cannot_write_says_the_old_file_is_kept(tmp_path, monkeypatch):
    current = _write(tmp_path / "c.json", RESULTS)

    def refuse(path, data, indent=None):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(regress, "atomic_write_json", refuse)
    with pytest.raises(M2DetError) as err:
        run_regress(tmp_path / "b.json", current, update=True)
    assert str(err.value) == (f"{tmp_path / 'b.json'}: could not write the updated baseline (Permission denied); "
                              "the previous file is unchanged")


@pytest.mark.parametrize("loader, what", [(load_baseline, "baseline"), (load_results, "results file")])
def test_an_unreadable_file_says_what_it_should_have_been(tmp_path, loader, what):
    path = tmp_path / "x.json"
    path.write_text("[1, 2]")
    with pytest.raises(InputFileError) as err:
        loader(path)
    assert str(err.value) == f"{path}: {what} must be a JSON object"


def test_run_regress_prints_its_banner_on_stderr_and_does_not_gate_another_machine_by_default(tmp_path, capsys,
                                                                                             console):
    baseline = _write(tmp_path / "b.json", dict(BASELINE, machine={"cpu": "Other"}))
    current = _write(tmp_path / "c.json", RESULTS)
    assert run_regress(baseline, current, tmp_path / "out") == EXIT_NOT_GATED
    captured = capsys.readouterr()
    assert "!!! WARNING: the current results come from another machine than the baseline" in captured.err.splitlines()
    assert "WARNING" not in captured.out
    report = json.loads((tmp_path / "out" / "regress.json").read_text())
    assert (report["baseline"], report["current"]) == (str(baseline), str(current))
    baseline = _write(tmp_path / "b.json", dict(BASELINE, workload={"size": 320}))
    assert run_regress(baseline, current, tmp_path / "out", allow_other_machine=True) == EXIT_NOT_GATED
    assert "!!! NOTHING IS GATED" in capsys.readouterr().err
    assert run_regress(baseline, current, tmp_path / "out", allow_other_workload=True) == EXIT_GATE_FAILED  # gated: ap/y is missing
    captured = capsys.readouterr()
    assert "!!! gating anyway, as asked" in captured.err.splitlines()
    assert "!!!" not in captured.out


def test_run_regress_update_writes_a_readable_baseline_creating_its_folders(tmp_path, capsys):
    current = _write(tmp_path / "c.json", RESULTS)
    baseline = tmp_path / "new" / "deeper" / "b.json"
    assert run_regress(baseline, current, update=True) == EXIT_OK
    text = baseline.read_text()
    assert text == json.dumps(json.loads(text), indent=2)  # indented by two: a file people read and review
