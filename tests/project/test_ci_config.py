"""The CI configuration parses and says what the README promises: tox's
environments, the GitHub Actions workflows, the nightly driver's safety."""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from m2det_impl.published import PUBLISHED_AP

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
    assert run.strip() in _tox_commands()["cpu"].replace("{env:PYTEST_XDIST_WORKERS:2}", "2")


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
    assert nightly.overall_status({"suite": 0, "regress": 3}, False) == (3, ["regress"])
    assert nightly.overall_status({"suite": 0, "regress": 4}, False) == (4, [])
    assert nightly.overall_status({"suite": 0, "regress": 1}, False) == (1, [])
    assert nightly.overall_status({"suite": 0, "regress": 0}, False) == (0, [])
    assert nightly.overall_status({"suite": 0, "bench": 2, "regress": 0}, False) == (3, ["bench"])
    assert nightly.overall_status({"suite": 0}, True) == (4, [])
    workflow = yaml.safe_load((WORKFLOWS / "nightly.yml").read_text())
    step = next(s for s in workflow["jobs"]["nightly"]["steps"] if "tox -e nightly" in s.get("run", ""))
    warned = [line for line in step["run"].splitlines() if "-eq" in line]
    assert warned and all('-eq 4 ]' in line for line in warned), warned  # only "not gated" becomes a warning


# ------------------------------------------------------------------ the accuracy matrix
# actionlint cannot be installed here (its pip wrapper downloads a binary), so
# the workflows are held to the properties that matter, checked on the parsed
# YAML: the expressions name known contexts, jobs and steps; the matrix covers
# shards 0..N-1; every shard's folder is uploaded and restored under one name;
# the merge sees every shard and gates on the published AP.
EXPRESSION = re.compile(r"\$\{\{(.*?)\}\}", re.S)
CONTEXTS = {"github", "env", "vars", "job", "jobs", "steps", "runner", "secrets", "strategy", "matrix", "needs",
            "inputs"}
FUNCTIONS = {"fromJSON", "toJSON", "contains", "startsWith", "endsWith", "format", "join", "hashFiles",
             "success", "always", "cancelled", "failure"}


def _strings(node, path=()):
    """Every string in a parsed workflow, with where it is."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _strings(v, path + (str(k),))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _strings(v, path + (str(i),))
    elif isinstance(node, str):
        yield path, node


def _step(job: dict, uses: str = "", contains: str = "") -> list:
    return [s for s in job["steps"] if (uses and str(s.get("uses", "")).startswith(uses))
            or (contains and contains in s.get("run", ""))]


@pytest.mark.parametrize("name", sorted(p.name for p in WORKFLOWS.glob("*.yml")))
def test_workflow_expressions_name_known_contexts_jobs_and_steps(name):
    data = _workflow(name)
    jobs = data["jobs"]
    for job_id, job in jobs.items():
        needs = job.get("needs", [])
        needs = [needs] if isinstance(needs, str) else list(needs)
        assert set(needs) <= set(jobs), f"{name}: {job_id} needs unknown jobs {set(needs) - set(jobs)}"
        step_ids = {s["id"] for s in job.get("steps", []) if "id" in s}
        for where, text in _strings(job):
            for expr in EXPRESSION.findall(text) + ([job["if"]] if where == ("if",) and "${{" not in text else []):
                expr = re.sub(r"'[^']*'", "''", expr)  # string literals are not names
                for root, rest in re.findall(r"(?<![\w.])([A-Za-z_][\w-]*)((?:\.[\w-]+)*)", expr):
                    if root in ("true", "false", "null") or root in FUNCTIONS:
                        continue
                    assert root in CONTEXTS, f"{name}: {job_id} {'.'.join(where)}: unknown context {root!r} in {expr!r}"
                    parts = rest.split(".")[1:]
                    if root == "needs":
                        assert parts and parts[0] in needs, f"{name}: {job_id} reads needs.{parts[0]} without needing it"
                    if root == "steps" and parts:
                        assert parts[0] in step_ids, f"{name}: {job_id} reads steps.{parts[0]}: no such step id"
                    if root == "matrix":
                        matrix = job.get("strategy", {}).get("matrix", {})
                        assert parts and parts[0] in matrix, f"{name}: {job_id} reads matrix.{parts[0]}: not in its matrix"


def _plan(shards: str, tmp_path: Path) -> subprocess.CompletedProcess:
    job = _workflow("accuracy-matrix.yml")["jobs"]["plan"]
    script = job["steps"][0]["run"]
    out = tmp_path / "github_output"
    out.write_text("")
    return subprocess.run(["bash", "-c", script], env={**os.environ, "SHARDS": shards, "GITHUB_OUTPUT": str(out)},
                          capture_output=True, text=True, timeout=60), out


def test_the_matrix_covers_shards_0_to_n_minus_1(tmp_path):
    for n in (1, 5, 8):
        done, out = _plan(str(n), tmp_path)
        assert done.returncode == 0, done.stderr
        values = dict(line.split("=", 1) for line in out.read_text().splitlines())
        assert int(values["count"]) == n and json.loads(values["shards"]) == list(range(n))
    for bad in ("0", "-2", "eight", ""):
        done, out = _plan(bad, tmp_path)
        assert done.returncode != 0 and "M2DET_MATRIX_SHARDS" in done.stderr and out.read_text() == ""


def _render(text: str, shard: int, count: int) -> str:
    return text.replace("${{ matrix.shard }}", str(shard)).replace("${{ needs.plan.outputs.count }}", str(count))


def test_each_shard_runs_on_a_named_runner_and_keeps_its_folder_across_attempts():
    wf = _workflow("accuracy-matrix.yml")
    assert "schedule" in wf["on"] and not {"pull_request", "pull_request_target"} & set(wf["on"])
    assert wf["permissions"]["actions"] == "read"  # downloads from earlier attempts go through the REST API
    job = wf["jobs"]["shard"]
    assert job["strategy"]["fail-fast"] is False  # one lost shard must not cancel the others
    assert job["strategy"]["matrix"]["shard"] == "${{ fromJSON(needs.plan.outputs.shards) }}"
    runs_on = job["runs-on"]
    assert runs_on[0] == "self-hosted" and "vars.M2DET_MATRIX_RUNNER" in runs_on[1]
    default_label = re.search(r"'([^']+)'", runs_on[1]).group(1)
    labels = yaml.safe_load((REPO / ".github" / "actionlint.yaml").read_text())["self-hosted-runner"]["labels"]
    assert default_label in labels
    for var in ("M2DET_WEIGHTS", "M2DET_COCO_ROOT"):  # paths on the runners, from repository variables
        assert job["env"][var] == f"${{{{ vars.{var} }}}}"
    assert job["env"]["SHARD"] == "${{ matrix.shard }}/${{ needs.plan.outputs.count }}"
    (run,) = _step(job, contains="m2det run")
    assert '--shard "$SHARD"' in run["run"] and '--output "$SHARD_DIR"' in run["run"]
    (restore,) = _step(job, uses="actions/download-artifact")
    (upload,) = _step(job, uses="actions/upload-artifact")
    order = job["steps"].index
    assert order(restore) < order(run) < order(upload)
    assert restore["continue-on-error"] is True  # a first attempt has nothing to restore
    assert restore["with"]["name"] == upload["with"]["name"]
    assert restore["with"]["run-id"] == "${{ github.run_id }}" and restore["with"]["github-token"]
    assert restore["with"]["path"] == "${{ env.SHARD_DIR }}" and upload["with"]["path"].rstrip("/") == restore["with"]["path"]
    assert upload["if"] == "always()"  # a shard that failed or timed out keeps its journal
    assert upload["with"]["include-hidden-files"] is True  # the journal's name starts with a dot
    assert upload["with"]["overwrite"] is True
    names = {_render(upload["with"]["name"], i, 8) for i in range(8)}
    assert len(names) == 8  # one artifact per shard


def test_the_merge_sees_every_shard_even_after_a_loss_and_gates_on_the_published_ap():
    wf = _workflow("accuracy-matrix.yml")
    shard, merge = wf["jobs"]["shard"], wf["jobs"]["merge"]
    assert "shard" in merge["needs"]
    assert "!cancelled()" in merge["if"] and "success()" not in merge["if"]  # runs after a failed shard, to name it
    (download,) = _step(merge, uses="actions/download-artifact")
    (upload,) = _step(shard, uses="actions/upload-artifact")
    assert download["with"]["run-id"] == "${{ github.run_id }}" and "merge-multiple" not in download["with"]
    for count in (1, 4, 8):
        pattern = _render(download["with"]["pattern"], -1, count)
        assert all(fnmatch.fnmatch(_render(upload["with"]["name"], i, count), pattern) for i in range(count))
        assert not fnmatch.fnmatch(_render(upload["with"]["name"], 0, count + 1), pattern)  # another split's
    (gate,) = _step(merge, contains="m2det merge")
    command = gate["run"]
    assert f"{download['with']['path']}/*/" in command  # one folder per artifact
    assert "--annotations" in command and '--min-ap "$MIN_AP"' in command
    assert float(wf["env"]["MIN_AP"]) == PUBLISHED_AP
