"""The CI configuration parses and says what the README promises: tox's
environments, the GitHub Actions workflows, the nightly driver's safety."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.cpu

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = REPO / ".github" / "workflows"
ENVS = ("cpu", "nightly", "npu", "gpu", "lint")


def _tox(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "tox", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_tox_lists_every_environment():
    listed = _tox("list", "--no-desc").split()
    assert set(ENVS) <= set(listed), listed


def _tox_commands() -> dict:
    """env -> its commands, as tox itself resolves them (not as the ini spells them)."""
    text = _tox("config", "-e", ",".join(ENVS), "-k", "commands")
    sections = {}
    for block in text.split("[testenv:")[1:]:
        name, _, body = block.partition("]")
        sections[name] = body.partition("commands =")[2].strip()
    assert set(sections) == set(ENVS), text
    return sections


def _markers() -> set:
    import configparser

    ini = configparser.ConfigParser()
    ini.read(REPO / "pytest.ini")
    return {line.split(":")[0].strip() for line in ini["pytest"]["markers"].splitlines() if line.strip()}


def test_every_tox_env_runs_something_that_exists():
    """Each env's pytest selection names registered markers, each script it runs
    exists, each path it lints exists: a renamed file or marker breaks this."""
    markers = _markers()
    for env, commands in _tox_commands().items():
        words = commands.replace("\n", " ").split()
        for i, word in enumerate(words):
            if word == "-m" and i + 1 < len(words) and words[i - 1].endswith("pytest"):
                assert words[i + 1] in markers, (env, words[i + 1])
            if word.endswith(".py") and "/" in word:
                assert (REPO / Path(word).relative_to(REPO) if Path(word).is_absolute() else REPO / word).is_file(), \
                    (env, word)
        if env == "lint":
            ruff = next(line.split() for line in commands.splitlines() if "ruff check" in line)
            linted = ruff[ruff.index("check") + 1:]
            assert linted and all((REPO / w).exists() for w in linted), linted
            assert any(line.strip() == "lint-imports" for line in commands.splitlines()), commands


def _readme_test_command() -> str:
    """The README's second copy-paste command (the tests)."""
    text = (REPO / "README.md").read_text()
    blocks = [b.split("```")[0].strip() for b in text.split("```bash\n")[1:3]]
    return blocks[1]


def test_ci_runs_the_readme_test_command():
    readme = _readme_test_command()
    install, _, run = readme.rpartition("&&")
    extras = install.split("pip install -e ")[1].strip()
    ci = (REPO / ".ci" / "run").read_text()
    assert f"pip install -e {extras}" in ci
    assert any(line.strip() == run.strip() for line in ci.splitlines()), (run, ci)
    assert run.strip() in _tox_commands()["cpu"].replace("{env:PYTEST_XDIST_WORKERS:2}", "2") or \
        run.strip().replace(" -n 2", "") in _tox_commands()["cpu"]


def _workflow(name: str) -> dict:
    data = yaml.safe_load((WORKFLOWS / name).read_text())
    data["on"] = data.pop("on", None) or data.pop(True)  # YAML 1.1 reads a bare `on` as true
    return data


def _runs(job: dict) -> str:
    return "\n".join(step.get("run", "") for step in job["steps"])


def test_pull_requests_run_tox_cpu_on_python_3_11():
    ci = _workflow("ci.yml")
    assert "pull_request" in ci["on"]
    job = ci["jobs"]["cpu"]
    assert "tox -e cpu" in _runs(job)
    setup = [s for s in job["steps"] if str(s.get("uses", "")).startswith("actions/setup-python")]
    assert setup and str(setup[0]["with"]["python-version"]) == "3.11"


def test_the_nightly_is_scheduled_runs_tox_nightly_and_uploads_the_report():
    nightly = _workflow("nightly.yml")
    assert nightly["on"]["schedule"][0]["cron"]
    job = nightly["jobs"]["nightly"]
    assert "tox -e nightly" in _runs(job)
    uploads = [s for s in job["steps"] if str(s.get("uses", "")).startswith("actions/upload-artifact")]
    assert uploads and uploads[0]["if"] == "always()"
    assert "m2det-nightly/regress.md" in uploads[0]["with"]["path"]


def test_the_npu_job_runs_on_the_self_hosted_310p_and_never_on_pull_requests():
    npu = _workflow("npu.yml")
    assert "pull_request" not in npu["on"] and "pull_request_target" not in npu["on"]
    job = npu["jobs"]["npu"]
    assert job["runs-on"] == ["self-hosted", "ascend-310p"]
    assert "tox -e npu" in _runs(job)
    labels = yaml.safe_load((REPO / ".github" / "actionlint.yaml").read_text())["self-hosted-runner"]["labels"]
    assert "ascend-310p" in labels


def test_the_nightly_never_wipes_a_folder_it_did_not_create(tmp_path):
    spec = importlib.util.spec_from_file_location("nightly_script", REPO / "scripts" / "nightly.py")
    nightly = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(nightly)
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    with pytest.raises(SystemExit, match="was not written by this script"):
        nightly.prepare(precious)
    assert (precious / "thesis.tex").read_text() == "years of work"
    mine = tmp_path / "mine"
    nightly.prepare(mine)
    (mine / "old-result.json").write_text("{}")
    nightly.prepare(mine)  # its own folder is wiped and laid out again
    assert sorted(p.name for p in mine.iterdir()) == [nightly.MARKER, "logs"]


def test_a_crash_in_the_nightly_gate_fails_the_night():
    """regress crashing (exit 3) is a broken night, never "not gated" (4), which is only a warning."""
    spec = importlib.util.spec_from_file_location("nightly_script", REPO / "scripts" / "nightly.py")
    nightly = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(nightly)
    assert nightly.nightly_status({"suite": 0, "regress": 3}, False) == (3, ["regress"])
    assert nightly.nightly_status({"suite": 0, "regress": 4}, False) == (4, [])
    assert nightly.nightly_status({"suite": 0, "regress": 1}, False) == (1, [])
    assert nightly.nightly_status({"suite": 0, "regress": 0}, False) == (0, [])
    assert nightly.nightly_status({"suite": 0, "bench": 2, "regress": 0}, False) == (3, ["bench"])
    assert nightly.nightly_status({"suite": 0}, True) == (4, [])
    workflow = yaml.safe_load((WORKFLOWS / "nightly.yml").read_text())
    step = next(s for s in workflow["jobs"]["nightly"]["steps"] if "tox -e nightly" in s.get("run", ""))
    warned = [line for line in step["run"].splitlines() if "-eq" in line]
    assert warned and all('-eq 4 ]' in line for line in warned), warned  # only "not gated" becomes a warning
