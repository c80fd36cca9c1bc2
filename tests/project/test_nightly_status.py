"""The nightly's exit status from its steps (scripts/nightly.py overall_status):
3 broken, 1 failed, 4 not gated, 0 passed, in that order of precedence."""

import importlib.util
from pathlib import Path

import pytest

from m2det_impl.exit_codes import EXIT_GATE_FAILED, EXIT_INTERNAL, EXIT_NOT_GATED, EXIT_OK

pytestmark = pytest.mark.cpu

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def nightly():
    spec = importlib.util.spec_from_file_location("nightly_status_script", REPO / "scripts" / "nightly.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GOOD = {"suite": 0, "run-onnxruntime-bs1": 0, "bench": 0, "collect": 0, "report": 0}


@pytest.mark.parametrize("changes, no_baseline, expected", [
    ({"regress": 0}, False, EXIT_OK),
    ({"regress": EXIT_GATE_FAILED}, False, EXIT_GATE_FAILED),
    ({"regress": EXIT_NOT_GATED}, False, EXIT_NOT_GATED),
    ({}, True, EXIT_NOT_GATED),                                   # no baseline: nothing was judged
    ({"suite": 1, "regress": 0}, False, EXIT_GATE_FAILED),         # a failed test fails the night
    ({"suite": 1, "regress": EXIT_NOT_GATED}, False, EXIT_GATE_FAILED),
    ({"suite": 1}, True, EXIT_GATE_FAILED),
    ({"regress": EXIT_INTERNAL}, False, EXIT_INTERNAL),            # regress crashed: broken, not "not gated"
    ({"regress": 2}, False, EXIT_INTERNAL),
    ({"suite": 2, "regress": 0}, False, EXIT_INTERNAL),            # the suite did not finish
    ({"bench": 2, "regress": EXIT_GATE_FAILED}, False, EXIT_INTERNAL),
])
def test_overall_status(nightly, changes, no_baseline, expected):
    status, broken = nightly.overall_status({**GOOD, **changes}, no_baseline)
    assert status == expected
    assert bool(broken) == (expected == EXIT_INTERNAL)


def test_broken_names_the_steps(nightly):
    assert nightly.overall_status({**GOOD, "bench": 2, "collect": 1}) == (EXIT_INTERNAL, ["bench", "collect"])
    assert nightly.overall_status({**GOOD, "regress": 3}) == (EXIT_INTERNAL, ["regress"])
