"""A plain wheel works outside the checkout: data ships inside the package.

Builds the wheel, installs it (without dependencies) into a fresh venv that
borrows this environment's third-party packages through a path file, and runs
the installed ``m2det`` from another folder, where no source tree can help.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from support import SMALL_CONFIG_FILE, run_shared_dir

pytestmark = pytest.mark.cpu

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """bin/ folder of a fresh venv holding only the wheel of this checkout,
    built once per test run: pytest-xdist workers share one (``pip wheel``
    builds in the source tree's build/, which two workers at once would spoil)."""
    import fcntl

    run_root = run_shared_dir(tmp_path_factory)  # this run's folder, above the workers' own
    root = run_root / "wheel-venv"
    with open(run_root / "wheel-venv.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (root / "complete").exists():
            _build_and_install(root)
            (root / "complete").write_text("")
    return root / "venv" / "bin"


def _build_and_install(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(root / "dist")], check=True, capture_output=True, timeout=600)
    wheel = next((root / "dist").glob("m2det_conformance-*.whl"))
    venv = root / "venv"
    # no pip of its own (installing one is most of a venv's start-up): this environment's pip
    # installs into it with --python, and the console script gets the venv's interpreter
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
    py = venv / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index", "-q",
                    str(wheel)], check=True, capture_output=True, timeout=600)
    # third-party packages only: a plain path entry does not run this environment's .pth files,
    # so the checkout's editable install stays invisible
    (site / "zz_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")


def _run(bin_dir: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    cmd = [str(bin_dir / "m2det"), *args]  # the console script the wheel installs
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def test_the_installed_package_is_the_wheel(installed, tmp_path):
    done = subprocess.run([str(installed / "python"), "-c", "import m2det_impl, m2det_impl.resources as r; "
                           "print(m2det_impl.__file__); print(r.TOLERANCES_FILE.is_file(), r.MINI_COCO.is_dir())"],
                          cwd=tmp_path, capture_output=True, text=True, check=True)
    where, data = done.stdout.splitlines()
    assert str(REPO) not in where and "site-packages" in where
    assert data == "True True"


def test_export_help_runs_from_another_folder(installed, tmp_path):
    done = _run(installed, tmp_path, "export", "--help")
    assert done.returncode == 0, done.stderr
    assert "--soc-version" in done.stdout and "exit codes" in done.stdout


def test_run_on_the_bundled_set_from_another_folder(installed, tmp_path):
    """The bundled set, the tolerances and the report's data ship inside the wheel. What is held here
    is the packaging, not the network: the run uses the reduced network (support.SMALL_CONFIG_FILE,
    exported into the shared model cache, or found there), as a user's own config file."""
    done = _run(installed, tmp_path, "run", "--limit", "2", "--output", "r", "--quiet",
                "--config", str(SMALL_CONFIG_FILE))
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["num_images"] == 2 and "bundled mini COCO" in summary["dataset"]
    assert (tmp_path / "r" / "results.json").is_file() and (tmp_path / "r" / "report.md").is_file()


def test_the_docs_the_code_cites_travel_with_the_wheel(installed, tmp_path):
    """The re-trial: a wheel's user met "docs/reference.md, section 7" in messages and had no docs. The
    wheel installs them under the environment's prefix, and ``m2det docs`` finds them from any folder."""
    listing = _run(installed, tmp_path, "docs")
    assert listing.returncode == 0, listing.stderr
    where = installed.parent / "share" / "doc" / "m2det-conformance"
    assert f"in {where}" in listing.stdout and str(REPO) not in listing.stdout
    printed = _run(installed, tmp_path, "docs", "reference")
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout == (REPO / "docs" / "reference.md").read_text(encoding="utf-8").rstrip("\n") + "\n"
