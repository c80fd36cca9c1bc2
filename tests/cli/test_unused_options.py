"""An option the job would not read is refused before any work: exit 2, one line naming it, no folder.

Issue 20 ("a record must name what produced the numbers"): ``--onnx`` with ``--backend torch`` ran
PyTorch on golden weights and recorded the ONNX file as the model; ``compare RUN RUN --weights``,
``--calib`` without int8, ``--sim-ms-per-image`` off the simulated NPU, ``--device-id`` on the CPU,
``bench --versus-onnx`` without ``--versus``, ``infer --naming benchmark --outfmt NPY`` and a static
batch-1 ONNX at ``--batch-size 2`` were all accepted and ignored. Each is refused here in one line
that names the option. No case may build, export or run a model (the refusal comes first): any
attempt fails the test at once.
"""

import pytest

from m2det_impl.cli.app import main
from m2det_impl.exit_codes import EXIT_BAD_INPUT, EXIT_INTERNAL

pytestmark = pytest.mark.cpu


def _built(*args, **kwargs):
    raise AssertionError("a model was built, exported or run: the refusal must come before any work")


@pytest.fixture
def no_work(monkeypatch, tmp_path):
    monkeypatch.setenv("M2DET_CACHE_DIR", str(tmp_path / "cache"))
    for target in ("m2det_impl.backends.spec.ModelSpec.create", "m2det_impl.backends.cache.cached_onnx",
                   "m2det_impl.workflows.files.export", "m2det_impl.workflows.files.export_int8",
                   "m2det_impl.workflows.compare.compare_two_runs"):
        monkeypatch.setattr(target, _built)


def _static_onnx(path, batch: int = 1, size: int = 512):
    """A tiny ONNX file whose header says: image input [batch, 3, size, size] (an Identity node, no weights)."""
    import onnx
    from onnx import TensorProto, helper

    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, [batch, 3, size, size])
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT, [batch, 3, size, size])
    graph = helper.make_graph([helper.make_node("Identity", ["image"], ["out"])], "tiny", [image], [out])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)]), str(path))
    return path


def _files(tmp_path):
    onnx = _static_onnx(tmp_path / "m2det512_bs1.onnx")
    weights = tmp_path / "missing_keys.pth"
    weights.write_bytes(b"never read: the refusal comes first")
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for i in range(2):
        (inputs / f"img_{i}.bin").write_bytes(b"\0" * 16)
    runs = [tmp_path / "run_a", tmp_path / "run_b"]
    for run in runs:
        run.mkdir()
    return {"onnx": str(onnx), "weights": str(weights), "inputs": str(inputs), "runs": [str(r) for r in runs]}


# (case id, option the line must name, argv given the files and the output folder)
CASES = [
    ("run-torch-onnx", "--onnx",
     lambda f, out: ["run", "--onnx", f["onnx"], "--backend", "torch", "--limit", "1", "--output", out]),
    ("run-simulated-onnx", "--onnx",
     lambda f, out: ["run", "--backend", "simulated-npu", "--onnx", f["onnx"], "--limit", "1", "--output", out]),
    # the re-trial: a missing file the runtime would not read was reported "not found" (hunt for a file
    # the job never needed); the unread option is what is wrong
    ("run-simulated-missing-onnx", "--onnx",
     lambda f, out: ["run", "--backend", "simulated-npu", "--onnx", f["onnx"] + ".missing", "--limit", "1",
                     "--output", out]),
    ("run-torch-missing-om", "--om",
     lambda f, out: ["run", "--backend", "torch", "--om", f["onnx"] + ".missing.om", "--limit", "1",
                     "--output", out]),
    ("infer-torch-onnx", "--onnx",
     lambda f, out: ["infer", "--backend", "torch", "--onnx", f["onnx"], "--inputs", f["inputs"], "--output", out]),
    ("compare-runs-weights", "--weights",
     lambda f, out: ["compare", *f["runs"], "--weights", f["weights"], "--output", out]),
    ("compare-runs-precision-mode", "--precision-mode",
     lambda f, out: ["compare", *f["runs"], "--precision-mode", "allow_mix_precision", "--output", out]),
    ("compare-runs-keep-fp32", "--keep-fp32",
     lambda f, out: ["compare", *f["runs"], "--keep-fp32", "Softmax", "--output", out]),
    ("compare-int8-keep-fp32", "--keep-fp32",
     lambda f, out: ["compare", "--int8", "--keep-fp32", "Softmax", "--limit", "1", "--output", out]),
    ("compare-emulate-calib", "--calib",
     lambda f, out: ["compare", "--emulate", "fp16", "--calib", "/tmp/nosuch", "--limit", "1", "--output", out]),
    ("run-calib", "--calib",
     lambda f, out: ["run", "--calib", "/tmp/nosuch", "--limit", "1", "--output", out]),
    ("run-calib-images", "--calib-images",
     lambda f, out: ["run", "--calib-images", "4", "--limit", "1", "--output", out]),
    ("export-calib", "--calib",
     lambda f, out: ["export", "--calib", "/tmp/nosuch", "--output", out]),
    ("run-sim-ms", "--sim-ms-per-image",
     lambda f, out: ["run", "--sim-ms-per-image", "5", "--backend", "onnxruntime", "--limit", "1", "--output", out]),
    ("run-device-id", "--device-id",
     lambda f, out: ["run", "--device-id", "3", "--backend", "onnxruntime", "--limit", "1", "--output", out]),
    ("infer-devices-cpu", "--device-id",
     lambda f, out: ["infer", "--device-id", "0,1", "--onnx", f["onnx"], "--inputs", f["inputs"], "--output", out]),
    ("run-simulated-threads", "--threads",
     lambda f, out: ["run", "--backend", "simulated-npu", "--threads", "2", "--limit", "1", "--output", out]),
    ("bench-versus-onnx", "--versus-onnx",
     lambda f, out: ["bench", "--versus-onnx", f["onnx"], "--limit", "1", "--output", out]),
    ("infer-benchmark-outfmt", "--outfmt",
     lambda f, out: ["infer", "--naming", "benchmark", "--outfmt", "NPY", "--onnx", f["onnx"],
                     "--inputs", f["inputs"], "--output", out]),
    ("infer-benchmark-dirname", "--output-dirname",
     lambda f, out: ["infer", "--naming", "benchmark", "--output-dirname", "x", "--onnx", f["onnx"],
                     "--inputs", f["inputs"], "--output", out]),
    ("run-static-onnx-batch", "--batch-size",
     lambda f, out: ["run", "--onnx", f["onnx"], "--batch-size", "2", "--limit", "1", "--output", out]),
]


@pytest.mark.parametrize("option, argv", [pytest.param(o, a, id=i) for i, o, a in CASES])
def test_an_option_the_job_would_not_read_is_refused_in_one_line(no_work, tmp_path, capsys, option, argv):
    out = tmp_path / "out"
    code = main([*argv(_files(tmp_path), str(out)), "--quiet"])
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert code == EXIT_BAD_INPUT, captured.err
    assert len(lines) == 1 and "error" in lines[0] and "internal error" not in lines[0], captured.err
    assert option in lines[0], lines[0]
    assert not out.exists()



def test_the_line_names_the_option_the_runtime_and_what_to_do(no_work, tmp_path, capsys):
    files = _files(tmp_path)
    assert main(["run", "--onnx", files["onnx"], "--backend", "torch", "--limit", "1",
                 "--output", str(tmp_path / "out")]) == EXIT_BAD_INPUT
    line = capsys.readouterr().err.strip()
    assert line.startswith("m2det run: error: --onnx: the torch backend does not read an ONNX file"), line
    assert "drop --onnx or use --backend onnxruntime" in line, line


def test_an_option_one_of_the_jobs_runtimes_reads_is_kept(no_work, tmp_path, capsys):
    """``bench --versus``: the job's options are shared by its two runtimes; one reading it is enough
    (here the simulated NPU's device time, with ONNX Runtime measured beside it): the job gets as far
    as building its model."""
    code = main(["bench", "--backend", "simulated-npu", "--sim-ms-per-image", "0", "--versus", "onnxruntime",
                 "--limit", "1", "--output", str(tmp_path / "out"), "--quiet"])
    assert code == EXIT_INTERNAL and "a model was built" in capsys.readouterr().err
