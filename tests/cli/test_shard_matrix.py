"""The accuracy matrix's logic (.github/workflows/accuracy-matrix.yml) on the bundled mini COCO set.

As the workflow lays it out: N = 4 shards, each a separate ``python -m
m2det_impl.cli run --shard I/4`` process writing its own folder (one artifact
each, downloaded side by side into ``shards/<artifact>/``), merged with ``m2det
merge shards/*/``. The merge must give the very results and AP of one
unsharded run (batch 1 on both sides: the same arithmetic per image). A shard
that died before writing its shard file (only its journal was uploaded) fails
the merge naming the missing shard; running that shard again in its restored
folder resumes from the journal and completes the merge.

What tests/cli/test_cli.py (two in-process shards), tests/cli/test_faults.py
(two processes in one folder, merge refusals on hand-written shard files) and
tests/pipeline/test_dataset.py (shard selection and merge rules) cover is not
repeated here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

from m2det_impl.cli import main
from m2det_impl.exit_codes import EXIT_BAD_INPUT, EXIT_OK
from m2det_impl.resources import MINI_COCO

pytestmark = pytest.mark.cpu

ANN = MINI_COCO / "annotations" / "instances_minival2014.json"
N = 4
LIMIT = 4  # one image per shard: the logic, not the throughput, is under test


# The sharding is the run's, not the model's: the simulated 310P (no wait)
# stands in for the network; ONNX Runtime shards run in tests/cli/test_cli.py.
MODEL = ["--backend", "simulated-npu", "--sim-ms-per-image", "0"]


def _cli(*argv: str) -> List[str]:
    return [sys.executable, "-m", "m2det_impl.cli", *argv]


def _shard_argv(folder: Path, index: int) -> List[str]:
    return _cli("run", *MODEL, "--output", str(folder), "--limit", str(LIMIT), "--batch-size", "1",
                "--shard", f"{index}/{N}", "--quiet")


def _merge(shards: Path, out: Path) -> int:
    folders = sorted(str(p) for p in shards.iterdir() if p.is_dir())  # the workflow's shards/*/
    return main(["merge", *folders, "--annotations", str(ANN), "--limit", str(LIMIT),
                 "--results", str(out / "results.json"), "--summary", str(out / "summary.json")])


def test_four_shard_processes_merge_to_the_unsharded_run_and_a_lost_shard_is_named(tmp_path, capsys):
    shards = tmp_path / "shards"
    folders = [shards / f"m2det-shard-{i}-of-{N}" for i in range(N)]  # the artifacts' names
    procs = [subprocess.Popen(_shard_argv(f, i), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for i, f in enumerate(folders)]
    single = tmp_path / "single"
    assert main(["run", *MODEL, "--output", str(single), "--limit", str(LIMIT), "--batch-size", "1",
                 "--quiet", "--no-report"]) == EXIT_OK
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [EXIT_OK] * N, outputs
    covered = [json.loads((f / f"results.shard-{i}-of-{N}.json").read_text())["image_ids"]
               for i, f in enumerate(folders)]
    assert sorted(sum(covered, [])) == sorted({r for ids in covered for r in ids}) and all(covered)

    merged = tmp_path / "merged"
    capsys.readouterr()
    assert _merge(shards, merged) == EXIT_OK, capsys.readouterr().err
    assert json.loads((merged / "results.json").read_text()) == json.loads((single / "results.json").read_text())
    ours, theirs = (json.loads((d / "summary.json").read_text()) for d in (merged, single))
    assert ours["num_images"] == theirs["num_images"] == LIMIT
    assert ours["ap"] == theirs["ap"] and ours["stats"] == theirs["stats"]

    # shard 2 timed out: its artifact holds the journal, not the shard file
    lost = folders[2] / f"results.shard-2-of-{N}.json"
    lost.unlink()
    assert (folders[2] / f".partial.shard-2-of-{N}.jsonl").is_file()
    failed = tmp_path / "failed"
    capsys.readouterr()
    assert _merge(shards, failed) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and f"missing shard(s) 2/{N}" in lines[0], err
    assert not (failed / "results.json").exists() and not (failed / "summary.json").exists()

    # the re-run restores the folder and resumes from the journal: nothing is computed again
    assert main(_shard_argv(folders[2], 2)[3:]) == EXIT_OK  # the same command line, in this process
    assert "1 of 1 images already done" in capsys.readouterr().err
    assert _merge(shards, tmp_path / "resumed") == EXIT_OK
    assert (tmp_path / "resumed" / "results.json").read_text() == (merged / "results.json").read_text()
