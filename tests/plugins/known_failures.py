"""Known failures per platform: one xfail list of test ids with reasons.

A test that fails for a known reason on one platform (a CANN release's op
bug, a runtime's missing kernel) is listed in ``fixtures/known_failures.json``
instead of being skipped ad hoc in its file, so the whole list can be read
in one place and cannot rot:

- each entry is marked ``xfail`` with its reason, ``strict`` by default, so
  a listed test that starts passing fails the run (XPASS(strict)) until its
  entry is removed;
- an entry whose test no longer exists is reported as *stale* at the end of
  the session (its test file ran but no test id matched, or the file is gone).

File format::

    {"platforms": {"<platform>" | "*": {"<test id>": "<reason>" |
                                        {"reason": "...", "strict": false}}}}

A test id is a pytest node id relative to the repository root
(``tests/hardware/test_npu.py::test_name[param]``); an id without ``[...]`` also covers
every parametrization. The platform is ``m2det_impl.gating.machine.current_platform()``
(``$M2DET_PLATFORM`` overrides it); ``"*"`` applies everywhere. The file is
``$M2DET_KNOWN_FAILURES`` or ``fixtures/known_failures.json``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Set, Union

from m2det_impl.errors import InputFileError

__all__ = ["DEFAULT_FILE", "KnownFailure", "load_known_failures", "entry_matches", "stale_entries",
           "KnownFailuresPlugin"]

DEFAULT_FILE = Path(__file__).resolve().parents[2] / "fixtures" / "known_failures.json"
PathLike = Union[str, Path]


@dataclass(frozen=True)
class KnownFailure:
    test_id: str
    reason: str
    platform: str
    strict: bool = True

    @property
    def file(self) -> str:
        return self.test_id.split("::", 1)[0]


def load_known_failures(path: PathLike, platform: Optional[str] = None) -> List[KnownFailure]:
    """The entries of ``path`` for ``platform`` and ``"*"`` (all platforms when None)."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(path, "known-failures file not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise InputFileError(path, f"not valid JSON ({exc})") from None
    platforms = data.get("platforms") if isinstance(data, dict) else None
    if not isinstance(platforms, dict):
        raise InputFileError(path, "no 'platforms' object: {platform: {test id: reason}}")
    entries = []
    for name, tests in platforms.items():
        if name.startswith("_") or (platform is not None and name not in (platform, "*")):
            continue
        if not isinstance(tests, dict):
            raise InputFileError(path, f"platform {name!r}: expected an object of test id: reason")
        for test_id, spec in tests.items():
            if test_id.startswith("_"):
                continue
            if "::" not in test_id:
                raise InputFileError(path, f"{test_id!r} is not a test id (file.py::test_name[param])")
            if isinstance(spec, str):
                spec = {"reason": spec}
            if not isinstance(spec, dict) or not str(spec.get("reason", "")).strip():
                raise InputFileError(path, f"{test_id!r} on {name!r} needs a reason")
            entries.append(KnownFailure(test_id, str(spec["reason"]), name, bool(spec.get("strict", True))))
    return entries


def entry_matches(test_id: str, nodeid: str) -> bool:
    """Exact id, or an id without ``[...]`` against any of its parametrizations."""
    return nodeid == test_id or ("[" not in test_id and nodeid.startswith(test_id + "["))


def stale_entries(entries: Iterable[KnownFailure], nodeids: Iterable[str], root: Path) -> List[KnownFailure]:
    """Entries that match no test id although their file ran, or whose file is gone."""
    seen: Set[str] = set(nodeids)
    files = {n.split("::", 1)[0] for n in seen}
    stale = []
    for entry in entries:
        if not (root / entry.file).is_file():
            stale.append(entry)
        elif entry.file in files and not any(entry_matches(entry.test_id, n) for n in seen):
            stale.append(entry)
    return stale


class KnownFailuresPlugin:
    """pytest plugin: marks listed tests xfail, reports stale entries at the end.

    Works under pytest-xdist: workers mark their items; the controller sees
    every test report and does the stale check.
    """

    def __init__(self, root: Path, path: Optional[PathLike] = None, platform: Optional[str] = None):
        from m2det_impl.gating.machine import current_platform

        self.root = Path(root)
        self.path = Path(path or os.environ.get("M2DET_KNOWN_FAILURES") or DEFAULT_FILE)
        self.platform = platform or current_platform()
        self.entries = load_known_failures(self.path, self.platform) if self.path.is_file() else []
        self.reported: Set[str] = set()
        self.applied: Dict[str, KnownFailure] = {}

    def pytest_report_header(self, config) -> List[str]:
        return [f"known failures: {len(self.entries)} for platform {self.platform} ({self.path.name})"]

    def pytest_collection_modifyitems(self, config, items) -> None:
        import pytest

        for item in items:
            for entry in self.entries:
                if entry_matches(entry.test_id, item.nodeid):
                    item.add_marker(pytest.mark.xfail(reason=f"known failure on {entry.platform}: {entry.reason}",
                                                      strict=entry.strict))
                    self.applied[item.nodeid] = entry
                    break

    def pytest_runtest_logreport(self, report) -> None:
        self.reported.add(report.nodeid)

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if hasattr(terminalreporter.config, "workerinput") or not self.entries:
            return
        stale = stale_entries(self.entries, self.reported, self.root)
        if stale:
            terminalreporter.section("stale known failures", sep="-", yellow=True)
            for entry in stale:
                terminalreporter.line(f"{self.path.name}: {entry.platform}: {entry.test_id} matches no test "
                                      f"(its file {'ran' if (self.root / entry.file).is_file() else 'is gone'}): "
                                      "remove the entry")
