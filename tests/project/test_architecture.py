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
    # the contracts of issue 21: runtimes only through the registry, each runtime alone, a runtime-free network
    ("workflows/run.py", "import m2det_impl.backends.ascend.om"),
    ("backends/ascend/om.py", "import m2det_impl.backends.ort.session"),
    ("network/export.py", "import m2det_impl.published"),
    ("network/model.py", "import onnxruntime"),
])
def test_an_upward_import_breaks_the_contract(tmp_path, module, upward):
    shutil.copytree(REPO / "m2det_impl", tmp_path / "m2det_impl", ignore=shutil.ignore_patterns("data", "__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / "m2det_impl" / module
    target.write_text(target.read_text() + f"\n{upward}  # an upward import\n")
    done = _lint(tmp_path)
    assert done.returncode != 0, done.stdout
    assert "BROKEN" in done.stdout and upward.split()[-1] in done.stdout


# ------------------------------------------------------------------ rules the import graph cannot see
PACKAGE = REPO / "m2det_impl"
#: Every runtime's name, read from the registry's source packages (a test must not trust the registry to list itself).
RUNTIME_LITERALS = ("onnxruntime-int8", "onnxruntime-cann", "onnxruntime-cuda", "tensorrt", "simulated-npu", "om",
                    "torch", "onnxruntime")
#: Where a runtime's or library's name is a version key, not a choice of runtime: the library versions of the
#: core (package metadata) and the machine identity (which TensorRT a GPU host has).
VERSION_KEYS_ONLY = {"environment.py", "gating/machine.py"}


def _sources(under: Path):
    return sorted(p for p in under.rglob("*.py") if "__pycache__" not in p.parts)


def test_no_print_outside_the_command_line():
    import ast

    offenders = []
    for path in _sources(PACKAGE):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel.startswith("cli/"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
                offenders.append(f"{rel}:{node.lineno}")
    assert offenders == []


def _model_file_fields(tree):
    """String constants that name a model-file field (``--om``'s ``om``), not a runtime: getattr's name, a
    dict key, and the left side of ``in entry.model_files``."""
    import ast

    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr":
            skip.update(id(a) for a in node.args[1:2])
        elif isinstance(node, ast.Dict):
            skip.update(id(k) for k in node.keys if k is not None)
        elif isinstance(node, ast.Compare) and any(isinstance(c, ast.Attribute) and c.attr == "model_files"
                                                   for c in node.comparators):
            skip.add(id(node.left))
    return skip


def test_no_runtime_name_as_a_literal_outside_backends():
    import ast

    offenders = []
    for path in _sources(PACKAGE):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel.startswith("backends/") or rel in VERSION_KEYS_ONLY:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skip = _model_file_fields(tree)
        for node in ast.walk(tree):
            if (isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in RUNTIME_LITERALS
                    and id(node) not in skip):
                offenders.append(f"{rel}:{node.lineno} {node.value!r}")
    assert offenders == []


def test_the_literal_check_knows_every_registered_runtime():
    from m2det_impl.backends.registry import runtime_names

    assert set(runtime_names()) <= set(RUNTIME_LITERALS)


def test_every_folder_writing_command_lists_output_and_keeps_the_old_spellings():
    from m2det_impl.cli.app import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for name in ("run", "export", "preprocess", "infer", "bench", "report", "compare", "regress", "collect"):
        command = sub.choices[name]
        assert "--output" in command.format_help(), name
    old = {("run", "--out"): "x", ("export", "--out-dir"): "x", ("compare", "--out"): "x", ("regress", "--out"): "x",
           ("collect", "--out"): "x"}
    for (name, flag), value in old.items():
        extra = {"regress": ["--baseline", "b", "--current", "c"]}.get(name, [])
        args = parser.parse_args([name, flag, value, *extra])
        assert args.output == value, (name, flag)
        assert flag not in sub.choices[name].format_help().replace("--output", ""), (name, flag)  # hidden


def test_the_library_is_silent_until_logging_is_configured():
    """A Python caller gets no output from the library unless it asks (issue 21): the package logger has a
    NullHandler, so logging's last-resort handler never prints its warnings."""
    code = ("import logging, m2det_impl.backends.spec as s; s.warn_golden(); "
            "logging.getLogger('m2det_impl.x').error('an error'); print('done')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0 and done.stdout == "done\n" and done.stderr == "", done.stderr
    code = ("import logging; logging.basicConfig(level=logging.INFO); import m2det_impl.backends.spec as s; "
            "s.warn_golden()")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert "GOLDEN weights" in done.stderr
