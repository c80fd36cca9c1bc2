"""The bug catalogue's runner counts a bug as caught only when a test saw it.

A pytest that could not start (exit 4: a usage error, or a conftest that
cannot import, e.g. run with an interpreter that lacks torch) tested
nothing: every entry would otherwise read "killed" and the catalogue would
pass without measuring anything.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytestmark = pytest.mark.cpu

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "mutation_catalogue.py"


@pytest.fixture(scope="module")
def catalogue():
    spec = importlib.util.spec_from_file_location("mutation_catalogue", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("code, verdict", [(0, "survived"), (5, "survived"), (1, "killed"), (2, "killed"),
                                           (3, "killed"), (-1, "killed"), (4, "not run")])
def test_a_verdict_follows_what_pytest_could_see(catalogue, code, verdict):
    assert catalogue.verdict_of({"code": code}) == verdict
