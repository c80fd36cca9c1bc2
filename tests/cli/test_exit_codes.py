"""Every exit code of m2det_impl/exit_codes.py, each produced by a real command, each distinct.

Only bad input gives 2; a bug gives 3 (never 2, however it is spelled); a gate
whose figure was not measured gives 1, never 0; "not gated" is 4, apart from a
crash, so the nightly can warn on one and fail on the other.
"""

import json

import pytest

import m2det_impl.cli.commands as commands
from m2det_impl.cli import main
from m2det_impl.exit_codes import (
    EXIT_BAD_INPUT,
    EXIT_CODES,
    EXIT_GATE_FAILED,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_NOT_GATED,
    EXIT_OK,
)
from m2det_impl.resources import MINI_COCO

pytestmark = pytest.mark.cpu


def test_codes_are_distinct_and_documented():
    codes = [EXIT_OK, EXIT_GATE_FAILED, EXIT_BAD_INPUT, EXIT_INTERNAL, EXIT_NOT_GATED, EXIT_INTERRUPTED]
    assert len(set(codes)) == len(codes) and set(EXIT_CODES) == set(codes)
    assert (EXIT_OK, EXIT_GATE_FAILED, EXIT_BAD_INPUT, EXIT_INTERNAL, EXIT_NOT_GATED) == (0, 1, 2, 3, 4)


def _shard(folder, index, count, ids):
    path = folder / f"results.shard-{index}-of-{count}.json"
    path.write_text(json.dumps({"shard": {"index": index, "count": count}, "identity": "x", "image_ids": ids,
                                "results": []}))
    return path


def test_ok(tmp_path, capsys):
    files = [_shard(tmp_path, 0, 2, [1]), _shard(tmp_path, 1, 2, [2])]
    assert main(["merge", *map(str, files), "--results", str(tmp_path / "r.json"),
                 "--summary", str(tmp_path / "s.json")]) == EXIT_OK


def test_a_gate_without_its_figure_fails(tmp_path, capsys):
    """--min-ap on images without annotations: nothing can be scored, so the gate fails, before any work."""
    code = main(["run", "--images", str(MINI_COCO / "val2014"), "--limit", "1", "--output", str(tmp_path / "r"),
                 "--min-ap", "0.5", "--quiet"])
    assert code == EXIT_GATE_FAILED
    err = capsys.readouterr().err
    assert "gate FAILED: --min-ap 0.5" in err and "no annotations" in err
    assert not (tmp_path / "r").exists()  # refused before any work


def test_bad_usage_is_two(tmp_path, capsys):
    assert main(["run", "--shard", "3/2", "--output", str(tmp_path / "r")]) == EXIT_BAD_INPUT
    assert "shard '3/2': need 0 <= I < N" in capsys.readouterr().err


def test_m2det_alone_asks_for_a_command_and_runs_nothing(monkeypatch, tmp_path, capsys):
    """The second trial: ``m2det`` with no command ran the whole pipeline (exit 0, results rewritten
    in ./m2det-run). It is a usage error now, and no command is called."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(commands.COMMANDS, "run", _raising(AssertionError("run was called")))
    assert main([]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.startswith("usage: m2det") and "give a command, e.g. `m2det run`" in err
    assert list(tmp_path.iterdir()) == []


def _raising(exc):
    def command(args):
        raise exc
    return command


@pytest.mark.parametrize("bug", [ValueError("a bug spelled as ValueError"), KeyError("ap"), TypeError("t")])
def test_a_bug_is_internal_never_bad_input(monkeypatch, capsys, bug):
    monkeypatch.setitem(commands.COMMANDS, "report", _raising(bug))
    assert main(["report", "x"]) == EXIT_INTERNAL
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "internal error" in err and type(bug).__name__ in err


def test_interrupt_is_130_on_its_own_line(monkeypatch, capsys):
    """Exit 130, the message on a line of its own; a command that does not resume says so (only run resumes:
    tests/workflows/test_bad_inputs.py holds each command's wording)."""
    monkeypatch.setitem(commands.COMMANDS, "report", _raising(KeyboardInterrupt()))
    assert main(["report", "x"]) == EXIT_INTERRUPTED
    err = capsys.readouterr().err
    assert err.startswith("\n") and "m2det report: interrupted" in err and "starts over" in err


def test_not_gated_is_four(tmp_path, capsys):
    """regress on figures from another machine: judged nothing, says so, exit 4 (3 is a crash)."""
    machine = {"cpu": "Test CPU 9000", "cores": 2, "arch": "x86_64", "soc": None, "cann": None, "driver": None,
               "gpu": None}
    workload = {"size": 512, "weights": "golden0", "images": 8, "precision": "fp32", "dataset": "d"}
    rules = {"throughput": {"max_drop_percent": 10, "reason": "test: ten percent"}}
    figures = {"throughput": {"onnxruntime/bs1": 0.5}}
    base = {"format": "m2det-baseline/1", "platform": "p", "description": "crafted", "machine": machine,
            "workload": workload, "environment": {}, "rules": rules, "figures": figures}
    current = {"format": "m2det-results/1", "platform": "p", "notes": [], "machine": {**machine, "cpu": "Other CPU"},
               "workload": workload, "environment": {}, "figures": figures}
    (tmp_path / "b.json").write_text(json.dumps(base))
    (tmp_path / "c.json").write_text(json.dumps(current))
    code = main(["regress", "--baseline", str(tmp_path / "b.json"), "--current", str(tmp_path / "c.json"),
                 "--output", str(tmp_path)])
    assert code == EXIT_NOT_GATED, capsys.readouterr()
