"""``m2det infer`` resumes after an interruption (Ctrl-C, SIGTERM, kill -9) in the folder it left unfinished.

A re-run of the same command continues in the newest unfinished folder of the
same job, skips the inputs whose outputs are whole, removes the temporary file
a kill leaves, and ends with the folder an uninterrupted run writes: the same
file names, equal outputs, a summary listing every input once, and one folder
for ``m2det evaluate`` to score. A folder of another job, and a finished one,
are left as they are.

The model is a tiny ONNX graph on ONNX Runtime (elementwise ops over the
image's first values, shaped as the 320 preset's outputs: scores and loc differ
per input, so an output mapped to the wrong input shows), the interruption a
KeyboardInterrupt raised by the writer after N outputs: deterministic, in one
process, a fraction of a second per run. What is under test is the folder and
job bookkeeping, which the network does not enter.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest

from m2det_impl.cli.app import main
from m2det_impl.exit_codes import EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_OK
from m2det_impl.network.config import get_config
from m2det_impl.pipeline.ais_files import AisOutputWriter
from m2det_impl.pipeline.ais_resume import JOB_FILE
from m2det_impl.resources import MINI_COCO_ANNOTATIONS

pytestmark = pytest.mark.cpu

SIZE = 320
CFG = get_config(SIZE)
P, C = CFG.num_priors, CFG.num_classes
INPUTS = 4


def _tiny_onnx(path: Path, bias: float) -> Path:
    """scores = sigmoid(x + b_c), loc = 0.1 x, x the image's first P values: a dynamic-batch model of the 320
    preset's output shapes. Class 1 gets ``bias`` (a few detections per image), every other class -12."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    b = np.full((1, 1, C), -12.0, np.float32)
    b[0, 0, 1] = bias
    init = [numpy_helper.from_array(np.array(v, np.int64), n) for n, v in
            (("flat", [0, 3 * SIZE * SIZE]), ("start", [0]), ("end", [P]), ("axis", [1]), ("col", [0, P, 1]))]
    init += [numpy_helper.from_array(np.ones((1, 1, C), np.float32), "ones"), numpy_helper.from_array(b, "bias"),
             numpy_helper.from_array(np.full((1, 1, 4), 0.1, np.float32), "locw")]
    nodes = [helper.make_node("Reshape", ["image", "flat"], ["f"]),
             helper.make_node("Slice", ["f", "start", "end", "axis"], ["cut"]),
             helper.make_node("Reshape", ["cut", "col"], ["x"]),
             helper.make_node("Mul", ["x", "ones"], ["xc"]),
             helper.make_node("Add", ["xc", "bias"], ["logit"]),
             helper.make_node("Sigmoid", ["logit"], ["scores"]),
             helper.make_node("Mul", ["x", "locw"], ["loc"])]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", P, C]),
         helper.make_tensor_value_info("loc", TensorProto.FLOAT, ["batch", P, 4])], init)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)]), str(path))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The model and four .bin inputs named after bundled mini COCO images (so evaluate scores them)."""
    base = tmp_path_factory.mktemp("resume")
    model = _tiny_onnx(base / "tiny.onnx", bias=-5.0)
    inputs = base / "prep"
    inputs.mkdir()
    images = sorted(i["file_name"] for i in json.loads(MINI_COCO_ANNOTATIONS.read_text())["images"])[:INPUTS]
    rng = np.random.default_rng(7)
    for name in images:
        rng.standard_normal((1, 3, SIZE, SIZE)).astype(np.float32).tofile(inputs / f"{name.split('.')[0]}.bin")
    return base, model, inputs


def _argv(model, inputs, out, *extra) -> List[str]:
    return ["infer", "--onnx", str(model), "--size", str(SIZE), "--inputs", str(inputs), "--output", str(out),
            "--batch-size", "2", "--quiet", *extra]


def _interrupt_after(monkeypatch, outputs: int) -> None:
    """The writer raises KeyboardInterrupt (what Ctrl-C raises) when asked for output number ``outputs + 1``:
    the first ``outputs`` inputs are written, whole. SIGTERM and kill -9 end the process where it stands,
    which leaves the same files plus what a write cut short leaves: the test adds that by hand."""
    add = AisOutputWriter.add
    count = {"n": 0}

    def interrupted(self, *args, **kwargs):
        count["n"] += 1
        if count["n"] > outputs:
            raise KeyboardInterrupt
        return add(self, *args, **kwargs)

    monkeypatch.setattr(AisOutputWriter, "add", interrupted)


def _folders(out: Path) -> List[Path]:
    return sorted(p for p in out.iterdir() if p.is_dir())


def _snapshot(out: Path) -> Dict[str, tuple]:
    """Every file under ``out``: its bytes' hash and modification time (a rewrite with equal bytes shows too)."""
    return {str(p.relative_to(out)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(out.rglob("*")) if p.is_file()}


def _evaluate(out: Path, where: Path, *extra) -> int:
    return main(["evaluate", "--outputs", str(out), "--annotations", "bundled", "--size", str(SIZE), "--results",
                 str(where / "results.json"), "--summary", str(where / "summary.json"), "--quiet", *extra])


@pytest.fixture(scope="module")
def uninterrupted(files, tmp_path_factory):
    """The same job run once without interruption, and its evaluation."""
    _, model, inputs = files
    out = tmp_path_factory.mktemp("whole") / "out"
    assert main(_argv(model, inputs, out)) == EXIT_OK
    (folder,) = _folders(out)
    assert _evaluate(out, out.parent) == EXIT_OK
    return folder, json.loads((out.parent / "results.json").read_text())


def test_an_interrupted_job_resumes_and_ends_as_an_uninterrupted_one(files, uninterrupted, tmp_path, monkeypatch,
                                                                     capsys):
    _, model, inputs = files
    whole, whole_results = uninterrupted
    out = tmp_path / "out"
    with monkeypatch.context() as m:
        _interrupt_after(m, 3)  # batch 2: the first batch written, then one input of the second
        assert main(_argv(model, inputs, out)) == EXIT_INTERRUPTED
    assert "run the same command again to resume" in capsys.readouterr().err
    (folder,) = _folders(out)
    assert not (out / f"{folder.name}_summary.json").exists() and (folder / JOB_FILE).is_file()
    # what a kill -9 leaves on top: an input with one of its two files, and a half-written temporary file
    stems = sorted(p.name.split(".")[0] for p in inputs.iterdir())
    (folder / f"{stems[2]}_1.bin").unlink()
    temporary = folder / f".{stems[3]}_0.bin.k1ll3d.tmp"
    temporary.write_bytes(b"\0" * 1000)

    assert main(_argv(model, inputs, out)) == EXIT_OK
    err = capsys.readouterr().err
    assert f"resuming {folder}: 2 of {INPUTS} inputs already done" in err, err
    assert _folders(out) == [folder]  # the same folder, no second one
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in whole.iterdir())
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no job record, no temporary file left
    for path in whole.iterdir():
        assert np.array_equal(np.fromfile(folder / path.name, np.float32), np.fromfile(path, np.float32)), path.name

    summary = json.loads((out / f"{folder.name}_summary.json").read_text())
    expected = json.loads((whole.parent / f"{whole.name}_summary.json").read_text())
    assert json.dumps(summary["filesinfo"]) == json.dumps(expected["filesinfo"]).replace(str(whole), str(folder))
    # honest timing: this run's executes only (inputs 2 and 3, one execute at batch 2), the rest counted apart
    assert summary["NPU_compute_time"]["count"] == len(summary["npu_compute_time_list"]) == 1
    ours = json.loads((out / f"{folder.name}_m2det.json").read_text())
    assert (ours["resumed_from"], ours["inferred"]) == (2, 2)

    # evaluate finds one folder, gates it as complete, and scores it as the uninterrupted run
    assert _evaluate(out, tmp_path, "--min-ap", "0.0") == EXIT_OK
    assert json.loads((tmp_path / "results.json").read_text()) == whole_results


def _change_model(case_dir: Path, model: Path, inputs: Path):
    return _tiny_onnx(model, bias=-4.0), inputs, []  # the same path, other content


def _change_inputs(case_dir: Path, model: Path, inputs: Path):
    fewer = Path(shutil.copytree(inputs, case_dir / "fewer"))
    sorted(fewer.iterdir())[-1].unlink()
    return model, fewer, []


def _change_batch(case_dir: Path, model: Path, inputs: Path):
    return model, inputs, ["--batch-size", "1"]


@pytest.mark.parametrize("change, words", [(_change_model, "weights or file content differs"),
                                           (_change_inputs, "another list of inputs"),
                                           (_change_batch, "the batch size differs (2 then, 1 now)")])
def test_an_unfinished_folder_of_another_job_is_left_alone(files, tmp_path, monkeypatch, capsys, change, words):
    _, model, inputs = files
    model = Path(shutil.copy(model, tmp_path / "model.onnx"))
    out = tmp_path / "out"
    with monkeypatch.context() as m:
        _interrupt_after(m, 1)
        assert main(_argv(model, inputs, out)) == EXIT_INTERRUPTED
    (foreign,) = _folders(out)
    before = _snapshot(out)
    capsys.readouterr()

    model, inputs, extra = change(tmp_path, model, inputs)
    assert main(_argv(model, inputs, out, *extra)) == EXIT_OK
    notes = [line for line in capsys.readouterr().err.splitlines() if "resuming" in line]
    assert len(notes) == 1 and notes[0].startswith(f"not resuming {foreign}") and words in notes[0], notes
    assert "starting a new folder" in notes[0]
    folders = _folders(out)
    assert len(folders) == 2 and foreign in folders
    assert {k: v for k, v in _snapshot(out).items() if k.startswith(foreign.name + "/")} == before  # untouched
    new = next(f for f in folders if f != foreign)
    summary = json.loads((out / f"{new.name}_summary.json").read_text())
    assert len(summary["filesinfo"]) == len(list(inputs.iterdir()))


def test_a_finished_folder_is_not_touched_by_a_new_run(files, tmp_path, capsys):
    """As ais_bench: a finished job run again writes a new time-stamped folder (even within the same second)."""
    _, model, inputs = files
    out = tmp_path / "out"
    assert main(_argv(model, inputs, out)) == EXIT_OK
    (first,) = _folders(out)
    before = _snapshot(out)
    assert main(_argv(model, inputs, out)) == EXIT_OK
    assert "resuming" not in capsys.readouterr().err
    folders = _folders(out)
    assert len(folders) == 2 and first in folders
    after = _snapshot(out)
    assert {k: after[k] for k in before} == before
    second = next(f for f in folders if f != first)
    assert sorted(p.name for p in second.iterdir()) == sorted(p.name for p in first.iterdir())


def test_output_dirname_resumes_the_named_folder_and_refuses_another_job(files, uninterrupted, tmp_path,
                                                                       monkeypatch, capsys):
    _, model, inputs = files
    whole, _ = uninterrupted
    out = tmp_path / "out"
    argv = _argv(model, inputs, out, "--output-dirname", "run", "--outfmt", "NPY")
    with monkeypatch.context() as m:
        _interrupt_after(m, 2)
        assert main(argv) == EXIT_INTERRUPTED
    folder = out / "run"
    before = _snapshot(out)
    capsys.readouterr()
    # another job (batch 1) on the named folder: refused in one line, nothing written
    assert main(argv + ["--batch-size", "1"]) == EXIT_BAD_INPUT
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and str(folder) in err[0] and "batch size differs" in err[0] and "--fresh" in err[0], err
    assert _snapshot(out) == before

    assert main(argv) == EXIT_OK
    assert f"resuming {folder}: 2 of {INPUTS} inputs already done" in capsys.readouterr().err
    assert _folders(out) == [folder] and (out / "run_summary.json").is_file()
    assert json.loads((out / "run_m2det.json").read_text())["resumed_from"] == 2
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted(p.name.replace(".bin", ".npy") for p in whole.iterdir())
    for path in whole.iterdir():
        got = np.load(folder / path.name.replace(".bin", ".npy"))
        assert got.shape[0] == 1 and np.array_equal(got.ravel(), np.fromfile(path, np.float32)), path.name


@pytest.mark.parametrize("extra, resumes, words", [
    ([], True, "run the same command again to resume"),
    (["--device-id", "0,1"], False, "several devices (--device-id) do not resume"),
    (["--naming", "benchmark"], False, "--naming benchmark"),
])
def test_the_interrupt_message_says_whether_this_infer_resumes(monkeypatch, capsys, tmp_path, extra, resumes, words):
    from m2det_impl.cli import commands

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setitem(commands.COMMANDS, "infer", interrupted)
    assert main(["infer", "--inputs", str(tmp_path), "--output", str(tmp_path / "o"), *extra]) == EXIT_INTERRUPTED
    err = capsys.readouterr().err
    assert words in err and ("run the same command again to resume" in err) is resumes
    assert ("starts over" in err) is not resumes


def test_the_batch_it_ran_named_or_not_is_one_job(files, tmp_path, monkeypatch, capsys):
    """The re-trial: an interrupted infer without --batch-size, run again with --batch-size 1 (the batch it
    ran), was "another job (None then, 1 now)": a second folder, which evaluate then refused."""
    _, model, inputs = files
    out = tmp_path / "out"
    plain = ["infer", "--onnx", str(model), "--size", str(SIZE), "--inputs", str(inputs), "--output", str(out),
             "--quiet"]
    with monkeypatch.context() as m:
        _interrupt_after(m, 1)
        assert main(plain) == EXIT_INTERRUPTED
    (folder,) = _folders(out)
    capsys.readouterr()
    assert main([*plain, "--batch-size", "1"]) == EXIT_OK
    assert f"resuming {folder}: 1 of {INPUTS} inputs already done" in capsys.readouterr().err
    assert _folders(out) == [folder]
