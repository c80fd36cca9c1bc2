"""Resource faults: concurrent shards, an unwritable output folder, a full
disk, an ``om`` run without Ascend's runtime. Each gives one line naming what
is wrong and exit 2, before the work it would spoil where it can be known
early; nothing already computed is lost, and the same command resumes.

The full disk is met twice: a real one (a 64 KiB tmpfs in a private mount
namespace, where ``unshare`` allows it) and a patched writer that fails the
way a full disk does (``os.write`` writing half, then ENOSPC), which runs
everywhere.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

from m2det_impl.cli import main
from m2det_impl.exit_codes import EXIT_BAD_INPUT as EXIT_ERROR
from m2det_impl.exit_codes import EXIT_OK
from m2det_impl.pipeline.journal import PartialStore
from m2det_impl.resources import MINI_COCO

pytestmark = pytest.mark.cpu

MINI = MINI_COCO
ANN = MINI / "annotations" / "instances_minival2014.json"
LIMIT = 2


# The faults are the run's, not the model's: the simulated 310P (no wait) stands
# in for the network, so these runs cost start-up and post-processing only;
# ONNX Runtime runs of the same command are in tests/cli/test_cli.py.
MODEL = ["--backend", "simulated-npu", "--sim-ms-per-image", "0"]


def _argv(out: Path, *extra: str) -> List[str]:
    return ["run", *MODEL, "--output", str(out), "--limit", str(LIMIT), "--batch-size", "1",
            "--quiet", "--no-report", *extra]


def _one_error_line(err: str, command: str = "run") -> str:
    """The error line, checking it is the only one (a resumed run may say so first)."""
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("resuming: ")]
    assert len(lines) == 1 and lines[0].startswith(f"m2det {command}: error: "), err
    assert "Traceback" not in err
    return lines[0]


def _results(folder: Path) -> list:
    return json.loads((folder / "results.json").read_text())


def _journal_ids(journal: Path) -> List[int]:
    raw = journal.read_bytes()
    assert raw.endswith(b"\n"), "the journal was left with a cut line"
    return [json.loads(line)["image_id"] for line in raw.decode().split("\n")[1:-1]]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted")
    assert main(_argv(out)) == EXIT_OK
    return out


# --------------------------------------------------------------------- shards
def test_two_shards_at_once_into_one_folder(tmp_path, uninterrupted):
    out = tmp_path / "shards"
    procs = [subprocess.Popen([sys.executable, "-m", "m2det_impl.cli", *_argv(out, "--shard", f"{i}/2")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outputs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    for i in range(2):  # each shard kept its own journal and results
        assert len(_journal_ids(out / f".partial.shard-{i}-of-2.jsonl")) == 1
        assert (out / f"results.shard-{i}-of-2.json").is_file()
    merged = tmp_path / "merged.json"
    assert main(["merge", str(out), "--annotations", str(ANN), "--limit", str(LIMIT), "--results", str(merged),
                 "--summary", str(tmp_path / "summary.json")]) == EXIT_OK
    assert json.loads(merged.read_text()) == _results(uninterrupted)  # batch 1: the very same numbers


@pytest.mark.parametrize("case, needle", [
    ("missing", "missing shard(s) 1/2: run them or pass their files"),
    ("twice", "shard 0/2 given twice"),
    ("overlapping", "is in two shards"),
    ("uncovered", "image(s) covered by no shard"),
])
def test_merge_refuses_missing_duplicate_and_overlapping_shards(tmp_path, capsys, case, needle):
    """What ``m2det merge`` says, on shard files as ``m2det run --shard`` writes them."""
    ids = sorted(i["id"] for i in json.loads(ANN.read_text())["images"])[:4]

    def shard(folder: Path, index: int, image_ids: list) -> Path:
        folder.mkdir(exist_ok=True)
        path = folder / f"results.shard-{index}-of-2.json"
        path.write_text(json.dumps({"shard": {"index": index, "count": 2}, "identity": {"run": 1},
                                    "image_ids": image_ids, "skipped": {}, "results": []}))
        return path

    a, b = shard(tmp_path / "a", 0, ids[0::2]), shard(tmp_path / "a", 1, ids[1::2])
    files = {"missing": [a], "twice": [a, b, shard(tmp_path / "copy", 0, ids[0::2])],
             "overlapping": [a, shard(tmp_path / "b", 1, ids[1::2] + ids[:1])],
             "uncovered": [a, shard(tmp_path / "c", 1, ids[1:2])]}[case]
    argv = ["merge", *map(str, files), "--annotations", str(ANN), "--limit", "4",
            "--results", str(tmp_path / "m.json"), "--summary", str(tmp_path / "s.json")]
    assert main(argv) == EXIT_ERROR
    assert needle in _one_error_line(capsys.readouterr().err, "merge")
    assert not (tmp_path / "m.json").exists()


def test_the_same_shard_twice_at_once_is_refused(tmp_path, capsys):
    """A second writer of one journal would interleave lines and redo every
    image; it is refused before it loads a model."""
    out = tmp_path / "out"
    with PartialStore(out / ".partial.shard-0-of-2.jsonl", {"another": "run"}, lock=True):  # a run in progress
        assert main(_argv(out, "--shard", "0/2")) == EXIT_ERROR
    line = _one_error_line(capsys.readouterr().err)
    assert "another m2det run is writing this journal" in line and ".partial.shard-0-of-2.jsonl" in line
    assert not (out / "results.shard-0-of-2.json").exists()


# -------------------------------------------------------- unwritable output
@pytest.mark.parametrize("where", ["under a file", "an existing file", "under /dev/null"])
@pytest.mark.parametrize("command", ["run", "preprocess", "export"])
def test_unwritable_output_folder_fails_first(tmp_path, capsys, where, command):
    """We run as root in CI containers, where permissions block nothing; a
    path through a regular file or a device fails for everyone."""
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    out = {"under a file": blocker / "out", "an existing file": blocker,
           "under /dev/null": Path("/dev/null/out")}[where]
    argv = {"run": _argv(out),
            "preprocess": ["preprocess", "--output", str(out), "--limit", "1", "--quiet"],
            "export": ["export", "--output", str(out), "--batch", "1"]}[command]
    assert main(argv) == EXIT_ERROR
    line = _one_error_line(capsys.readouterr().err, command)
    assert f"{out}: output folder is not writable" in line
    assert "GOLDEN" not in line and blocker.read_text() == "x"


# ------------------------------------------------------------------ full disk
def _patch_full_disk(monkeypatch, fd_suffix: str, calls_before: int = 0):
    """``os.write`` on a file whose name ends in ``fd_suffix`` writes half of
    its data, then fails with ENOSPC, after ``calls_before`` good calls."""
    real_write = os.write
    seen = {"n": 0}

    def write(fd, data):
        try:
            name = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            name = ""
        if not name.endswith(fd_suffix):
            return real_write(fd, data)
        seen["n"] += 1
        if seen["n"] <= calls_before:
            return real_write(fd, data)
        if seen["n"] == calls_before + 1 and len(data) > 1:
            return real_write(fd, bytes(data[: len(data) // 2]))  # a short write, as a filling disk does
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", write)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd to tell the journal's fd")
def test_full_disk_during_the_journal_append_keeps_what_was_done(tmp_path, uninterrupted, monkeypatch,
                                                                  capsys):
    out = tmp_path / "out"
    journal = out / ".partial.full.jsonl"
    _patch_full_disk(monkeypatch, ".partial.full.jsonl", calls_before=1)  # image 1 fits, image 2 does not
    assert main(_argv(out)) == EXIT_ERROR
    monkeypatch.undo()
    line = _one_error_line(capsys.readouterr().err)
    assert f"{journal}: cannot append to the partial-results journal (No space left on device)" in line
    assert "1 image(s) finished before are kept" in line
    assert len(_journal_ids(journal)) == 1  # the half-written line was taken back
    assert not (out / "results.json").exists()
    assert main(_argv(out)) == EXIT_OK  # free space, run the same command
    assert "resuming: 1 of 2 images" in capsys.readouterr().err
    assert _results(out) == _results(uninterrupted)
    assert sorted(_journal_ids(journal)) == sorted(_journal_ids(uninterrupted / ".partial.full.jsonl"))


def test_full_disk_while_writing_results_leaves_no_partial_file(tmp_path, uninterrupted, monkeypatch,
                                                                 capsys):
    out = tmp_path / "out"
    out.mkdir()
    shutil.copy(uninterrupted / ".partial.full.jsonl", out)  # every image done; only the results are left to write
    real_fsync = os.fsync

    def fsync(fd):
        if ".results.json." in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    assert main(_argv(out)) == EXIT_ERROR
    monkeypatch.undo()
    line = _one_error_line(capsys.readouterr().err)
    assert f"{out / 'results.json'}: cannot write (No space left on device)" in line
    assert sorted(p.name for p in out.iterdir()) == [".partial.full.jsonl"]  # the journal; no lock file stays
    assert main(_argv(out)) == EXIT_OK
    assert _results(out) == _results(uninterrupted)


def _private_tmpfs_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt 2>/dev/null "
                            "|| mount -t tmpfs -o size=64k tmpfs /tmp"], capture_output=True, timeout=60)
    return probe.returncode == 0


def test_full_disk_on_a_real_tiny_tmpfs(tmp_path, uninterrupted):
    """A real ENOSPC from the kernel: the run's output folder is a 64 KiB
    tmpfs, mounted in a private mount namespace (``unshare -rm``: no root
    needed where user namespaces are allowed). One image's results do not fit."""
    if not _private_tmpfs_works():
        pytest.skip("cannot mount a private tmpfs (needs unshare -rm with user namespaces); "
                    "test_full_disk_during_the_journal_append_keeps_what_was_done covers ENOSPC with a patched writer")
    out, saved = tmp_path / "tiny", tmp_path / "saved"
    out.mkdir()
    saved.mkdir()
    run = " ".join(f"'{a}'" for a in [sys.executable, "-m", "m2det_impl.cli", *_argv(out)])
    script = (f"mount -t tmpfs -o size=64k tmpfs '{out}' || exit 99; {run} 2>'{saved}/stderr'; rc=$?; "
              f"cp -a '{out}/.' '{saved}/'; exit $rc")
    done = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=600)
    err = (saved / "stderr").read_text()
    assert done.returncode == EXIT_ERROR, (done.returncode, done.stderr, err)
    line = _one_error_line(err)
    assert "No space left on device" in line and ".partial.full.jsonl" in line
    # the image that did not fit is not half recorded: the journal held its header only, and a failed run
    # leaves no header-only journal behind (issue 20); a half-written line would have kept it, and failed here
    assert not (saved / ".partial.full.jsonl").exists()
    resumed = tmp_path / "resumed"  # "free space": the same command on a roomier disk
    resumed.mkdir()
    assert main(_argv(resumed)) == EXIT_OK
    assert _results(resumed) == _results(uninterrupted)


# --------------------------------------------------------- om without runtime
def _ascend_runtime_installed() -> bool:
    for module in ("ais_bench.infer.interface", "aclruntime"):
        try:
            __import__(module)
            return True
        except Exception:  # noqa: BLE001 - any import failure means "absent"
            continue
    return False


@pytest.mark.parametrize("command", ["run", "infer", "bench"])
@pytest.mark.parametrize("om_file", ["present", "missing", "not given"])
def test_om_run_fails_before_any_work(tmp_path, capsys, command, om_file):
    if om_file == "present" and _ascend_runtime_installed():
        pytest.skip("an Ascend runtime is installed here: the npu layer runs .om files")
    om = tmp_path / "m2det512_bs1.om"
    if om_file == "present":
        om.write_bytes(b"not really an om")  # never opened: the runtime check comes first
    out = tmp_path / "out"
    om_args = ["--om", str(om)] if om_file != "not given" else []
    argv = {"run": ["run", "--output", str(out)],
            "infer": ["infer", "--inputs", str(MINI / "val2014"), "--output", str(out)],
            "bench": ["bench", "--output", str(out)]}[command]
    assert main(argv + ["--backend", "om", *om_args, "--quiet"]) == EXIT_ERROR
    line = _one_error_line(capsys.readouterr().err, command)
    if om_file == "present":
        assert "aclruntime" in line and "ais_bench" in line and "CANN" in line
    elif om_file == "missing":
        assert f"{om}: .om model not found" in line
    else:
        assert "give --om PATH" in line
    assert not out.exists()  # nothing written, no dataset read, no model loaded
