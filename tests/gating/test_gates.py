"""The one-sided AP gates (m2det_impl.gating.gates): the boundary, the sign of a
change, and a gate that was asked for but could not measure its figure."""

import pytest

from m2det_impl.exit_codes import EXIT_GATE_FAILED, EXIT_OK
from m2det_impl.gating.gates import GateVerdict, max_ap_drop_gate, min_ap_gate, min_throughput_gate, throughput_gate

pytestmark = pytest.mark.cpu


def test_no_gate_asked_passes_silently():
    assert min_ap_gate(None, None) == GateVerdict(EXIT_OK, "")
    assert min_ap_gate(0.1, None) == GateVerdict(EXIT_OK, "")
    assert max_ap_drop_gate(None, None) == GateVerdict(EXIT_OK, "")
    assert max_ap_drop_gate(-0.5, None).passed


@pytest.mark.parametrize("ap, floor, passed", [
    (0.378, 0.378, True),    # the published figure reproduced exactly passes
    (0.379, 0.378, True),
    (0.3779, 0.378, False),
    (0.0, 0.0, True),
])
def test_min_ap_is_inclusive_at_the_floor(ap, floor, passed):
    verdict = min_ap_gate(ap, floor)
    assert verdict.passed is passed
    assert verdict.code == (EXIT_OK if passed else EXIT_GATE_FAILED)
    assert ("passed" if passed else "FAILED") in verdict.message
    assert f"{ap:.4f}" in verdict.message


@pytest.mark.parametrize("gate", [min_ap_gate, max_ap_drop_gate])
def test_an_unmeasured_figure_fails_the_gate_and_says_why(gate):
    verdict = gate(None, 0.01, "no annotations were given")
    assert verdict.code == EXIT_GATE_FAILED and not verdict.passed
    assert "FAILED" in verdict.message and "no annotations were given" in verdict.message


@pytest.mark.parametrize("change, max_drop, passed", [
    (+0.05, 0.01, True),     # the candidate GAINED 5 points: never a failure
    (0.0, 0.0, True),
    (-0.01, 0.01, True),     # lost exactly the allowance
    (-0.0101, 0.01, False),  # lost more than the allowance
    (-0.05, 0.01, False),
])
def test_max_ap_drop_fails_only_losses_beyond_the_allowance(change, max_drop, passed):
    verdict = max_ap_drop_gate(change, max_drop)
    assert verdict.passed is passed, verdict.message
    assert verdict.code == (EXIT_OK if passed else EXIT_GATE_FAILED)
    assert f"{-change * 100:.2f} points" in verdict.message


@pytest.mark.parametrize("gate, args, line", [
    (min_ap_gate, (None, 0.3), "gate FAILED: --min-ap 0.3: no AP was measured"),
    (min_ap_gate, (0.378, 0.378), "gate passed: AP 0.3780 >= 0.378"),
    (min_ap_gate, (0.3779, 0.378), "gate FAILED: AP 0.3779 < 0.378"),
    (max_ap_drop_gate, (None, 0.01), "gate FAILED: --max-ap-drop 0.01: the AP of both runs was not measured "
                                     "(no annotations)"),
    (max_ap_drop_gate, (-0.01, 0.01), "gate passed: AP drop 1.00 points <= 1.00"),
    (max_ap_drop_gate, (+0.02, 0.005), "gate passed: AP drop -2.00 points <= 0.50"),
    (max_ap_drop_gate, (-0.0101, 0.01), "gate FAILED: AP drop 1.01 points > 1.00"),
    (max_ap_drop_gate, (-0.1, 0.0), "gate FAILED: AP drop 10.00 points > 0.00"),
])
def test_the_gate_line_a_user_reads_is_exact(gate, args, line):
    """The default reasons and both figures in points (AP x 100), as the release log prints them.
    (The gate is called inside the test: a verdict computed at collection would not see a mutant.)"""
    assert gate(*args).message == line


PUBLISHED = {"name": "guide", "source": "the guide", "table": {"4": 54.707, "16": 47.113, "8": 46.461}}
FIGURE = {"batch_size": 4, "images_per_second": 60.0, "execute_clock": "aclruntime exec_time_list",
          "runtime_timed": True, "wall_clock_images_per_second": 50.0}
LABEL = "batch 4, published table 'guide' (the guide)"
CLOCK = "1000 * batch / mean execute ms; aclruntime exec_time_list"


@pytest.mark.parametrize("changes, kwargs, code, line", [
    ({"batch_size": 2}, {}, EXIT_GATE_FAILED,
     "gate FAILED: batch 2, published table 'guide' (the guide): no published figure for batch 2 (it has 4, 8, 16)"),
    ({"images_per_second": None}, {}, EXIT_GATE_FAILED,
     f"gate FAILED: {LABEL}: the throughput was not measured (no execute time from aclruntime exec_time_list)"),
    ({"images_per_second": None, "execute_clock": None}, {}, EXIT_GATE_FAILED,
     f"gate FAILED: {LABEL}: the throughput was not measured (no execute time from None)"),
    ({"runtime_timed": False}, {}, EXIT_GATE_FAILED,
     f"gate FAILED: {LABEL}: timed by aclruntime exec_time_list, not the runtime's own execute time: "
     "not measured as ais_bench does"),
    ({}, {}, EXIT_OK,
     f"gate passed: {LABEL} ({CLOCK}; wall clock 50.000 img/s): 60.000 img/s, published 54.707, floor 49.236 (-10%)"),
    ({"images_per_second": 40.0}, {}, EXIT_GATE_FAILED,
     f"gate FAILED: {LABEL} ({CLOCK}; wall clock 50.000 img/s): 40.000 img/s, published 54.707, floor 49.236 (-10%)"),
    ({"wall_clock_images_per_second": None}, {}, EXIT_OK,
     f"gate passed: {LABEL} ({CLOCK}): 60.000 img/s, published 54.707, floor 49.236 (-10%)"),
    ({"runtime_timed": False}, {"require_runtime_clock": False}, EXIT_OK,
     f"gate passed: {LABEL} ({CLOCK}; wall clock 50.000 img/s): 60.000 img/s, published 54.707, floor 49.236 (-10%)"),
])
def test_throughput_gate_lines_are_exact(changes, kwargs, code, line):
    verdict = throughput_gate(dict(FIGURE, **changes), PUBLISHED, 0.1, **kwargs)
    assert (verdict.code, verdict.message) == (code, line)


@pytest.mark.parametrize("table, says", [
    (None, "the published table is not a mapping of batch size to images/s (got NoneType)"),
    ([54.7, 60.9], "the published table is not a mapping of batch size to images/s (got list)"),
    ({"16": 1.0, "x": 2.0, "4": 3.0}, "no published figure for batch 1 (it has 4, 16, x)"),
])
def test_throughput_gate_fails_a_malformed_table_with_a_message(table, says):
    """A published table read from a hand-edited file: a verdict naming the problem, never a TypeError."""
    verdict = throughput_gate({"batch_size": 1, "images_per_second": 60.0, "runtime_timed": True},
                              {"name": "n", "source": "s", "table": table}, 0.1)
    assert (verdict.code, verdict.message) == (EXIT_GATE_FAILED,
                                               f"gate FAILED: batch 1, published table 'n' (s): {says}")


def test_throughput_gate_names_unknown_clocks_and_empty_tables():
    verdict = throughput_gate({"batch_size": 1, "images_per_second": None}, {"name": "n", "source": "s", "table": {}}, 0.1)
    assert (verdict.code, verdict.message) == (
        EXIT_GATE_FAILED, "gate FAILED: batch 1, published table 'n' (s): no published figure for batch 1 (it has none)")
    verdict = throughput_gate({"batch_size": 4, "images_per_second": None}, PUBLISHED, 0.1)
    assert verdict.message == f"gate FAILED: {LABEL}: the throughput was not measured (no execute time from ?)"
    verdict = throughput_gate({"batch_size": 4, "images_per_second": 50.0}, PUBLISHED, 0.1)
    assert verdict.message == f"gate FAILED: {LABEL}: timed by ?, not the runtime's own execute time: " \
                              "not measured as ais_bench does"
    verdict = throughput_gate({"batch_size": 4, "images_per_second": 50.0}, PUBLISHED, 0.1, require_runtime_clock=False)
    assert verdict.message == f"gate passed: {LABEL} (1000 * batch / mean execute ms; ?): 50.000 img/s, " \
                              "published 54.707, floor 49.236 (-10%)"


@pytest.mark.parametrize("args, code, line", [
    ((None, 50.0, 0.1), EXIT_GATE_FAILED, "gate FAILED: throughput: no figure was measured (floor 45.000 img/s)"),
    ((float("nan"), 50.0, 0.1), EXIT_GATE_FAILED, "gate FAILED: throughput: no figure was measured (floor 45.000 img/s)"),
    ((float("inf"), 50.0, 0.1), EXIT_GATE_FAILED, "gate FAILED: throughput: no figure was measured (floor 45.000 img/s)"),
    ((45.0, 50.0, 0.1), EXIT_OK, "gate passed: throughput: 45.000 img/s, published 50.000, floor 45.000 (-10%)"),
    ((44.9, 50.0, 0.1), EXIT_GATE_FAILED, "gate FAILED: throughput: 44.900 img/s, published 50.000, floor 45.000 (-10%)"),
])
def test_min_throughput_gate_is_inclusive_and_says_so(args, code, line):
    verdict = min_throughput_gate(*args)
    assert (verdict.code, verdict.message) == (code, line)
    assert min_throughput_gate(None, 10.0, 0.5, what="e2e", why_unmeasured="skipped").message == \
        "gate FAILED: e2e: skipped (floor 5.000 img/s)"
