"""The architecture contract (pyproject.toml, [tool.importlinter]) holds, and can fail.

Folders follow the data's path and a layer imports only the layers below it
(docs/architecture.md). import-linter checks the real tree; the same check on a
copy with one upward import must break, or the contract guards nothing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.cpu

REPO = Path(__file__).resolve().parents[2]
LINT = Path(sys.executable).with_name("lint-imports")


def _lint(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([str(LINT), "--config", str(root / "pyproject.toml"), "--no-cache"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)


def test_the_tree_keeps_every_contract():
    done = _lint(REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


@pytest.mark.parametrize("module, upward", [
    ("network/priors.py", "import m2det_impl.pipeline.postprocess"),
    ("pipeline/coco.py", "import m2det_impl.cli"),
    ("errors.py", "import m2det_impl.network.config"),
])
def test_an_upward_import_breaks_the_contract(tmp_path, module, upward):
    shutil.copytree(REPO / "m2det_impl", tmp_path / "m2det_impl", ignore=shutil.ignore_patterns("data", "__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / "m2det_impl" / module
    target.write_text(target.read_text() + f"\n{upward}  # an upward import\n")
    done = _lint(tmp_path)
    assert done.returncode != 0, done.stdout
    assert "BROKEN" in done.stdout and upward.split()[-1] in done.stdout
