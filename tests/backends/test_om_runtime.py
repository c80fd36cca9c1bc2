"""``m2det infer --backend om`` against the Ascend fake (tests/backends/fake_ascend.py), as a real 310P host
behaves (issue 19; docs/ascend-runtime-notes.md): the model's own batch, one untimed warm-up execute,
H2D/D2H from the runtime's MemorySummary, ais_bench's output shapes, a release that never ends ACL, several
devices at once, dynamic-batch models, and the bad inputs that must fail in one line (cpu layer)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fake_ascend import FakeOm, install, overlaps, read_events, use_shim

from m2det_impl.backends.ascend import OmBackend
from m2det_impl.cli.app import main
from m2det_impl.exit_codes import EXIT_BAD_INPUT, EXIT_OK
from m2det_impl.network.config import get_config

pytestmark = pytest.mark.cpu

SIZE = 320
CFG = get_config(SIZE)


def _om(tmp_path, name="m.om", **kw):
    kw.setdefault("size", SIZE)
    kw.setdefault("priors", CFG.num_priors)
    kw.setdefault("classes", CFG.num_classes)
    return FakeOm(**kw).write(tmp_path / name)


def _inputs(folder, n, names=None):
    folder.mkdir()
    names = names or [f"img{i}.bin" for i in range(n)]
    for i, name in enumerate(names):
        np.full((1, 3, SIZE, SIZE), i + 1, np.float32).tofile(folder / name)
    return folder


def _infer(om, inputs, out, *extra):
    return main(["infer", "--backend", "om", "--om", str(om), "--size", str(SIZE), "--inputs", str(inputs),
                 "--output", str(out), "--output-dirname", "run", "--quiet", *extra])


def _summary(out, name="run"):
    return json.loads((out / f"{name}_summary.json").read_text())


def test_the_models_batch_and_only_timed_executes(tmp_path, monkeypatch):
    """Batch-4 .om, warm executes 60 ms, the first 900 ms: without --batch-size, 8 inputs run as 2 timed
    executes of 4 (after one untimed warm-up) and the throughput is 1000 * 4 / 60 = 66.7 img/s."""
    install(monkeypatch, "2023", ais_bench=False)
    om = _om(tmp_path, batch=4, exec_ms=60.0, cold_ms=900.0, h2d_ms=1.5, d2h_ms=0.5)
    out = tmp_path / "out"
    assert _infer(om, _inputs(tmp_path / "in", 8), out) == EXIT_OK
    summary = _summary(out)
    assert summary["throughput"] == pytest.approx(1000 * 4 / 60) == pytest.approx(66.667, abs=1e-3)
    assert summary["npu_compute_time_list"] == [60.0, 60.0]  # the cold 900 ms warm-up is in no list
    assert summary["NPU_compute_time"]["count"] == 2
    assert summary["args"][-1] == "--warmup_count=1"
    # H2D/D2H from the runtime's MemorySummary: 1 copy in and 2 out per timed execute, the warm-up's forgotten
    assert summary["H2D_latency"]["count"] == 2 and summary["H2D_latency"]["mean"] == pytest.approx(1.5)
    assert summary["D2H_latency"]["count"] == 4 and summary["D2H_latency"]["mean"] == pytest.approx(0.5)
    assert list(summary) == ["filesinfo", "args", "NPU_compute_time", "H2D_latency", "D2H_latency", "throughput",
                             "npu_compute_time_list", "pid"]  # ais_bench's keys and no others
    ours = json.loads((out / "run_m2det.json").read_text())
    assert ours["batch_size"] == 4 and ours["warmup_executes"] == 1 and "aclmdlExecute" in ours["execute_clock"]


def test_a_batch_the_static_model_does_not_run_is_refused(tmp_path, monkeypatch, capsys):
    install(monkeypatch, "2023", ais_bench=False)
    om = _om(tmp_path, batch=4)
    out = tmp_path / "out"
    assert _infer(om, _inputs(tmp_path / "in", 4), out, "--batch-size", "8") == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(om) in err[0] and "static batch-4" in err[0]
    assert not out.exists()


def test_a_dynamic_batch_model_at_batch_8(tmp_path, monkeypatch):
    install(monkeypatch, "ait")  # through ais_bench, whose infer(mode="static") would undo the dynamic batch
    om = _om(tmp_path, batch=-1, dynamic_batches=(1, 4, 8, 16), exec_ms=60.0, cold_ms=900.0)
    out = tmp_path / "out"
    assert _infer(om, _inputs(tmp_path / "in", 8), out, "--batch-size", "8") == EXIT_OK
    summary = _summary(out)
    assert summary["throughput"] == pytest.approx(1000 * 8 / 60)
    assert summary["npu_compute_time_list"] == [60.0]


@pytest.mark.parametrize("extra, words", [
    (["--batch-size", "3"], ["batch 3", "not one this dynamic-batch model was built for"]),
    ([], ["dynamic-batch model", "give --batch-size"]),
])
def test_a_dynamic_model_at_a_batch_it_was_not_built_for(tmp_path, monkeypatch, capsys, extra, words):
    install(monkeypatch, "2023", ais_bench=False)
    om = _om(tmp_path, batch=-1, dynamic_batches=(1, 4, 8))
    out = tmp_path / "out"
    assert _infer(om, _inputs(tmp_path / "in", 4), out, *extra) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(om) in err[0] and all(w in err[0] for w in words), err
    assert not out.exists()


@pytest.mark.parametrize("devices, words", [
    ("0,1,0", "device 0 given more than once"),
    ("0,-1", "device ids are whole numbers >= 0"),
    ("0,1,2,3", "4 devices for 3 inputs"),
])
def test_bad_device_lists(tmp_path, monkeypatch, capsys, devices, words):
    install(monkeypatch, "2023", ais_bench=False)
    out = tmp_path / "out"
    assert _infer(_om(tmp_path, batch=1), _inputs(tmp_path / "in", 3), out, "--device-id", devices) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0] and "--device-id" in err[0], err
    assert not out.exists()


def test_an_absolute_output_dirname_is_refused(tmp_path, monkeypatch, capsys):
    install(monkeypatch, "2023", ais_bench=False)
    out = tmp_path / "out"
    code = main(["infer", "--backend", "om", "--om", str(_om(tmp_path, batch=1)), "--size", str(SIZE),
                 "--inputs", str(_inputs(tmp_path / "in", 1)), "--output", str(out),
                 "--output-dirname", str(tmp_path / "abs"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == EXIT_BAD_INPUT and len(err) == 1 and "--output-dirname" in err[0] and "absolute" in err[0]
    assert not out.exists() and not (tmp_path / "abs").exists()


def test_two_devices_at_once(tmp_path, monkeypatch):
    """--device 0,1: one worker process per device, each on half the inputs, executing at the same time;
    each input inferred exactly once; device{N} folders and summaries; the total throughput in a file."""
    logs = tmp_path / "logs"
    logs.mkdir()
    om = _om(tmp_path, batch=1, exec_ms=60.0, cold_ms=900.0, sleep_ms=80.0, log_dir=str(logs))
    use_shim(monkeypatch, tmp_path / "shim")  # the workers import the fake as the real wheels
    out = tmp_path / "out"
    assert _infer(om, _inputs(tmp_path / "in", 6), out, "--device", "0,1") == EXIT_OK
    executes = [e for e in read_events(logs, "execute") if not e["cold"]]
    by_device = {d: [e for e in executes if e["device"] == d] for d in (0, 1)}
    assert len(by_device[0]) == len(by_device[1]) == 3
    assert overlaps(by_device[0], by_device[1])
    assert sorted(m for e in executes for m in e["means"]) == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    assert len({e["pid"] for e in executes}) == 2
    root = out / "run"
    total = json.loads((root / "throughput.json").read_text())
    for device, stems in ((0, ["img0", "img1", "img2"]), (1, ["img3", "img4", "img5"])):
        summary = json.loads((root / f"device{device}_summary.json").read_text())
        assert summary["throughput"] == pytest.approx(1000 / 60)
        assert sorted(p.name for p in (root / f"device{device}").iterdir()) == sorted(
            f"{s}_{i}.bin" for s in stems for i in (0, 1))
    assert total["throughput"] == pytest.approx(2 * 1000 / 60)
    assert [d["device"] for d in total["devices"]] == [0, 1]


def test_npy_outputs_keep_ais_benchs_leading_axis_and_read_back(tmp_path, monkeypatch):
    install(monkeypatch, "2023", ais_bench=False)
    out = tmp_path / "out"
    assert _infer(_om(tmp_path, batch=2), _inputs(tmp_path / "in", 3), out, "--outfmt", "NPY") == EXIT_OK
    scores, loc = np.load(out / "run" / "img0_0.npy"), np.load(out / "run" / "img0_1.npy")
    assert scores.shape == (1, CFG.num_priors, CFG.num_classes) and loc.shape == (1, CFG.num_priors, 4)
    from m2det_impl.pipeline.ais_files import read_pair, scan_outputs

    np.save(out / "run" / "img1_1.npy", np.load(out / "run" / "img1_1.npy")[0])  # our old shape, [P, 4]
    pairs, problems = scan_outputs(out, CFG)
    assert problems == [] and [p.stem for p in pairs] == ["img0", "img1", "img2"]
    assert read_pair(pairs[1], CFG)[1].shape == (CFG.num_priors, 4)


def test_inputs_in_natural_order_and_npy_inputs(tmp_path, monkeypatch):
    install(monkeypatch, "2023", ais_bench=False)
    inputs = _inputs(tmp_path / "in", 3, names=["x10.bin", "x2.bin", "x1.bin"])
    np.save(inputs / "x3.npy", np.full((1, 3, SIZE, SIZE), 7, np.float32))
    out = tmp_path / "out"
    assert _infer(_om(tmp_path, batch=1), inputs, out) == EXIT_OK
    files = [v["infiles"][0].rsplit("/", 1)[-1] for v in _summary(out)["filesinfo"].values()]
    assert files == ["x1.bin", "x2.bin", "x3.npy", "x10.bin"]


def test_a_float64_npy_input_is_refused_before_anything_is_written(tmp_path, monkeypatch, capsys):
    install(monkeypatch, "2023", ais_bench=False)
    inputs = _inputs(tmp_path / "in", 1)
    np.save(inputs / "bad.npy", np.zeros((1, 3, SIZE, SIZE)))
    out = tmp_path / "out"
    assert _infer(_om(tmp_path, batch=1), inputs, out) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.npy" in err[0] and "float64" in err[0]
    assert not out.exists()


@pytest.mark.parametrize("generation", ["2023", "ait"])
def test_many_models_open_and_close_in_one_process(tmp_path, monkeypatch, generation):
    """The npu layer opens one .om per batch size in one process: closing one must not end ACL."""
    acl = install(monkeypatch, generation, ais_bench=False)
    om = _om(tmp_path, batch=1)
    images = np.ones((1, 3, SIZE, SIZE), np.float32)
    for _ in range(3):
        with OmBackend(om, num_classes=CFG.num_classes) as backend:
            backend.infer(images)
    assert not acl._acl.finalized and acl._acl.loaded == 0


@pytest.fixture(scope="module")
def reference_cases(tmp_path_factory):
    """Raw outputs shaped like a trained M2Det512's (the reference's post-processing cases), for the fake."""
    from m2det_impl.gating.bench import reference_postprocess_cases

    cases = reference_postprocess_cases()
    path = tmp_path_factory.mktemp("cases") / "cases.npz"
    np.savez(path, scores=np.stack([s for s, _ in cases]), loc=np.stack([loc for _, loc in cases]))
    return path


def test_run_on_two_devices_gives_the_results_and_ap_of_one(tmp_path, monkeypatch, reference_cases):
    cfg = get_config(512)
    om = FakeOm(batch=2, size=512, priors=cfg.num_priors, classes=cfg.num_classes,
                cases=str(reference_cases)).write(tmp_path / "bs2.om")
    use_shim(monkeypatch, tmp_path / "shim")
    common = ["run", "--backend", "om", "--om", str(om), "--limit", "2", "--no-report", "--host", "threads",
              "--quiet"]
    assert main([*common, "--output", str(tmp_path / "one")]) == EXIT_OK
    assert main([*common, "--output", str(tmp_path / "two"), "--device-id", "0,1"]) == EXIT_OK

    def key(d):
        return d["image_id"], d["category_id"], d["score"], d["bbox"]

    one, two = (json.loads((tmp_path / f / "results.json").read_text()) for f in ("one", "two"))
    assert len(one) > 0 and sorted(one, key=key) == sorted(two, key=key)
    ap = [json.loads((tmp_path / f / "summary.json").read_text())["ap"] for f in ("one", "two")]
    assert ap[0] == ap[1]
    assert sorted(p.name for p in (tmp_path / "two").glob("results.shard-*")) == [
        "results.shard-0-of-2.json", "results.shard-1-of-2.json"]


def test_bench_measures_the_models_own_batch(tmp_path, monkeypatch):
    """m2det bench --backend om without --batch-sizes measures a batch-4 model at 4; another batch is refused."""
    from m2det_impl.backends.ascend import OmBackend
    from m2det_impl.gating.bench import measure_inference
    from m2det_impl.workflows.bench import _bench_sizes

    install(monkeypatch, "2023", ais_bench=False)
    static = OmBackend(FakeOm(batch=4, exec_ms=60.0, cold_ms=900.0).write(tmp_path / "bs4.om"), num_classes=5)
    assert _bench_sizes(static, None) == [4]
    with pytest.raises(Exception, match="static batch-4 model runs batch 4 only, not 1"):
        _bench_sizes(static, [1, 4])
    tensors = [np.full((3, 4, 4), i, np.float32) for i in range(4)]
    row = measure_inference(static, tensors, 4, warmup=1, repeats=3)
    assert row["images_per_second"] == pytest.approx(1000 * 4 / 60) and row["execute_ms"] == [60.0] * 3
    dynamic = OmBackend(FakeOm(batch=-1, dynamic_batches=(1, 8)).write(tmp_path / "dyn.om"), num_classes=5,
                        batch_size=1)
    assert _bench_sizes(dynamic, [1, 8]) == [1, 8]
    dynamic.use_batch(8)
    assert measure_inference(dynamic, tensors, 8, warmup=0, repeats=2)["execute_ms"] == [60.0, 60.0]
    with pytest.raises(Exception, match="batch 3 is not one this dynamic-batch model was built for"):
        dynamic.use_batch(3)


def test_export_writes_the_atc_command_of_a_dynamic_batch_om(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from m2det_impl.backends.ascend.atc import write_build_files

    graph = helper.make_graph([helper.make_node("Identity", ["image"], ["scores"])], "tiny",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 8, 8])],
                              [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 3, 8, 8])])
    path = tmp_path / "m2det512.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)]), path)
    lines = write_build_files({None: path}, tmp_path, dynamic_batches=(8, 1, 4))
    script = (tmp_path / "atc_build.sh").read_text()
    command = script.strip().splitlines()[-1]
    assert "--input_shape=image:-1,3,512,512" in command and "--dynamic_batch_size=1,4,8" in command
    assert '--model="$HERE"/m2det512.onnx' in command and '--output="$HERE"/m2det512_dynbs' in command
    assert any("atc commands ->" in line for line in lines)


def test_a_device_that_cannot_start_stops_them_all_before_anything_is_written(tmp_path, monkeypatch, capsys):
    """Two workers, a dynamic model at a batch it was not built for: each fails opening it, before the common
    start; one line naming the device and the model, exit 2, no output folder."""
    om = _om(tmp_path, batch=-1, dynamic_batches=(1, 4))
    use_shim(monkeypatch, tmp_path / "shim")
    out = tmp_path / "out"
    assert _infer(om, _inputs(tmp_path / "in", 4), out, "--device-id", "0,1", "--batch-size", "2") == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "device " in err[0] and str(om) in err[0] and "batch 2 is not one" in err[0], err
    assert not out.exists()


def test_infer_dump_writes_ais_benchs_acl_json_and_opens_the_session_with_it(tmp_path, monkeypatch):
    """Issue 22: ``m2det infer --dump`` is ``ais_bench --dump``: ``<output>/acl.json`` dumping every op of the
    model into ``<output>/dump``, given to the runtime when the session opens, and no warm-up execute (it would
    be dumped as an extra iteration)."""
    install(monkeypatch, "2023", ais_bench=False)
    logs = tmp_path / "logs"
    logs.mkdir()
    om = _om(tmp_path, name="m2det_bs1.om", batch=1, exec_ms=60.0, cold_ms=900.0, log_dir=str(logs))
    out = tmp_path / "out"
    assert _infer(om, _inputs(tmp_path / "in", 1), out, "--dump") == EXIT_OK
    acl = json.loads((out / "acl.json").read_text())
    assert acl == {"dump": {"dump_list": [{"model_name": "m2det_bs1"}], "dump_mode": "all",
                            "dump_path": str(out / "dump")}}
    assert (out / "dump").is_dir()
    assert [e["acl_json"] for e in read_events(logs, "load")] == [str(out / "acl.json")]
    summary = _summary(out)
    assert summary["args"][-1] == "--warmup_count=0" and summary["npu_compute_time_list"] == [900.0]


def test_dump_is_refused_for_a_runtime_that_dumps_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["infer", "--backend", "simulated-npu", "--inputs", str(_inputs(tmp_path / "in", 1)),
                 "--size", "512", "--output", str(out), "--dump", "--quiet"])
    assert code == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--dump is for --backend om" in err[0]
