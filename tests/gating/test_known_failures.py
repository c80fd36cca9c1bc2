"""Known failures per platform: the xfail list and its stale-entry report.

The end-to-end tests run pytest in a subprocess on a small real test module
with a crafted list (``M2DET_KNOWN_FAILURES``, ``M2DET_PLATFORM``), once
plainly and once under pytest-xdist, where the controller never collects.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from m2det_impl.errors import InputFileError
from tests.plugins.known_failures import DEFAULT_FILE, KnownFailure, entry_matches, load_known_failures, stale_entries

pytestmark = pytest.mark.cpu

REPO = Path(__file__).resolve().parents[2]
TARGET = "tests/network/test_priors.py"
PASSING = f"{TARGET}::test_priors_equal_literal_spec_loop"


def _write(tmp_path: Path, platforms: dict) -> Path:
    path = tmp_path / "known_failures.json"
    path.write_text(json.dumps({"platforms": platforms}))
    return path


def test_entries_are_read_for_the_platform_and_for_every_platform(tmp_path):
    path = _write(tmp_path, {"*": {"tests/a.py::test_x": "everywhere"},
                             "plat-a": {"tests/b.py::test_y": {"reason": "flaky on a", "strict": False}},
                             "plat-b": {"tests/c.py::test_z": "only b"}})
    entries = load_known_failures(path, "plat-a")
    assert entries == [KnownFailure("tests/a.py::test_x", "everywhere", "*", True),
                       KnownFailure("tests/b.py::test_y", "flaky on a", "plat-a", False)]
    assert len(load_known_failures(path)) == 3


@pytest.mark.parametrize("platforms,needle", [
    ({"p": {"tests/a.py::test_x": ""}}, "needs a reason"),
    ({"p": {"test_x": "why"}}, "is not a test id"),
    ({"p": ["tests/a.py::test_x"]}, "expected an object"),
])
def test_bad_entries_name_the_file(tmp_path, platforms, needle):
    path = _write(tmp_path, platforms)
    with pytest.raises(InputFileError, match=re.escape(needle)) as info:
        load_known_failures(path, "p")
    assert str(path) in str(info.value)


def test_matching_covers_parametrizations_but_not_other_tests():
    assert entry_matches("tests/a.py::test_x", "tests/a.py::test_x")
    assert entry_matches("tests/a.py::test_x", "tests/a.py::test_x[512]")
    assert not entry_matches("tests/a.py::test_x", "tests/a.py::test_xy")
    assert not entry_matches("tests/a.py::test_x[512]", "tests/a.py::test_x[320]")


def test_stale_entries(tmp_path):
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_a.py").write_text("def test_x():\n    pass\n")
    entries = [KnownFailure("tests/test_a.py::test_x", "r", "p"),          # matches: not stale
               KnownFailure("tests/test_a.py::test_renamed", "r", "p"),    # its file ran: stale
               KnownFailure("tests/test_gone.py::test_y", "r", "p"),       # file gone: stale
               KnownFailure("tests/test_b.py::test_z", "r", "p")]          # file exists, did not run: unknown
    (tmp_path / "tests" / "test_b.py").write_text("def test_z():\n    pass\n")
    stale = stale_entries(entries, ["tests/test_a.py::test_x"], tmp_path)
    assert [e.test_id for e in stale] == ["tests/test_a.py::test_renamed", "tests/test_gone.py::test_y"]


def test_the_shipped_list_loads_and_names_existing_tests():
    for entry in load_known_failures(DEFAULT_FILE):
        source = REPO / entry.file
        assert source.is_file(), f"{entry.test_id}: {entry.file} does not exist"
        function = entry.test_id.split("::")[-1].split("[")[0]
        assert re.search(rf"^\s*def {re.escape(function)}\(", source.read_text(), re.M), entry.test_id


@pytest.mark.parametrize("xdist", [False, True], ids=["plain", "xdist"])
def test_listed_tests_are_xfailed_and_stale_entries_reported(tmp_path, xdist):
    path = _write(tmp_path, {
        "test-platform": {
            PASSING: "passes: strict xfail must turn this into a failure",
            f"{TARGET}::test_priors_match_reference[320]": {"reason": "listed, not strict", "strict": False},
            f"{TARGET}::test_no_longer_exists": "renamed long ago",
        },
        "other-platform": {f"{TARGET}::test_priors_are_read_only_and_cached": "not this platform"},
    })
    env = dict(os.environ, M2DET_KNOWN_FAILURES=str(path), M2DET_PLATFORM="test-platform")
    argv = [sys.executable, "-m", "pytest", TARGET, "-p", "no:cacheprovider", "-rA", "-q"]
    argv += ["-n", "2"] if xdist else ["-p", "no:xdist"]
    done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    out = done.stdout + done.stderr
    assert done.returncode == 1, out  # the strict XPASS fails the run
    assert re.search(rf"FAILED {re.escape(PASSING)}", out), out
    assert "XPASS(strict)" in out and "known failure on test-platform" in out
    assert re.search(r"XPASS .*test_priors_match_reference\[320\]", out), out
    assert "stale known failures" in out and "test_no_longer_exists matches no test" in out
    stale_section = out.split("stale known failures")[1].split("short test summary info")[0]
    assert "test_no_longer_exists" in stale_section
    assert "test_priors_are_read_only_and_cached" not in stale_section  # other platform's entry: not ours
    assert re.search(r"PASSED .*test_priors_are_read_only_and_cached", out), out
