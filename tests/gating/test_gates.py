"""The one-sided AP gates (m2det_impl.gating.gates): the boundary, the sign of a
change, and a gate that was asked for but could not measure its figure."""

import pytest

from m2det_impl.exit_codes import EXIT_GATE_FAILED, EXIT_OK
from m2det_impl.gating.gates import GateVerdict, max_ap_drop_gate, min_ap_gate

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
