"""The fp16 drift forecast (m2det_impl.precision) and ``m2det compare``.

The emulation is checked on hand-made graphs against numpy's IEEE half
precision (an independent rounding) and an explicit convolution, then run on
the golden-weight M2Det512, whose figures are physical facts of fp16 (the
first layer, with exact integer pixels, can only drift by two roundings).
Cost: one forecast of one golden image with every layer (about 30 s) and two
``m2det compare`` runs of one bundled image without layers (about 20 s each).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from support import conv_layers, decoder_sums, once_per_run

from m2det_impl.cli import main
from m2det_impl.cli.commands.compare import PRECISION_MODE_CHOICES
from m2det_impl.evaluation.metrics import output_metrics
from m2det_impl.evaluation.tolerances import save_run
from m2det_impl.exit_codes import EXIT_BAD_INPUT as EXIT_ERROR
from m2det_impl.exit_codes import EXIT_GATE_FAILED as EXIT_GATE
from m2det_impl.exit_codes import EXIT_OK
from m2det_impl.precision.forecast import Layer, LayerDrift, forecast_fp16, keep_dtype_lines, layer_taps
from m2det_impl.precision.fp16 import ASCEND_COSINE_MIN, ASCEND_REL_L2_MAX, PRECISION_MODES, emulate_fp16, round_fp16
from tests.oracles.output_metrics import numpy_output_metrics

pytestmark = pytest.mark.cpu


# ------------------------------------------------------------------ rounding
def test_round_fp16_is_ieee_half_by_hand():
    x = np.array([1 / 3, 2049, 2051, 65504, 65519, 65520, 1e-8, -0.1], np.float32)
    y = round_fp16(x)
    assert y[0] == 0.333251953125          # 1/3 = 0.0101..b: 10 mantissa bits, rounded down
    assert y[1] == 2048 and y[2] == 2052   # spacing 2 above 2048: ties go to the even mantissa
    assert y[3] == 65504 and y[4] == 65504  # the largest half; 65519 is below the midpoint 65520
    assert math.isinf(y[5])                 # the midpoint to the next (absent) value rounds away: inf
    assert y[6] == 0                        # below half the smallest subnormal (2**-25)
    assert y[7] == np.float32(-0.0999755859375)
    assert y.dtype == np.float32


def test_cli_precision_modes_are_the_modules():
    assert PRECISION_MODE_CHOICES == PRECISION_MODES


# ------------------------------------------------------------------ a toy graph
W = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32) / 3
B = np.array([0.1, -0.2, 0.3, 0.05], np.float32)
BN = {"s": [1.0, 2.0, 0.5, 1.5], "b": [0.1, 0.2, 0.3, 0.4], "m": [0.0, 0.1, -0.1, 0.2], "v": [1.0, 0.5, 2.0, 1.0]}


def toy_model() -> onnx.ModelProto:
    """x -> Conv(W, B) -> BatchNormalization -> Relu -> Softmax(channels) -> y"""
    inits = [numpy_helper.from_array(W, "W"), numpy_helper.from_array(B, "B")]
    inits += [numpy_helper.from_array(np.array(v, np.float32), k) for k, v in BN.items()]
    graph = helper.make_graph([
        helper.make_node("Conv", ["x", "W", "B"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["bn"], name="bn"),
        helper.make_node("Relu", ["bn"], ["r"], name="relu"),
        helper.make_node("Softmax", ["r"], ["y"], name="softmax", axis=1),
    ], "toy", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6, 6])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    return model


def _run(model: onnx.ModelProto, x: np.ndarray, outputs=("y",)) -> list:
    if set(outputs) - {o.name for o in model.graph.output}:
        model = onnx.ModelProto.FromString(model.SerializeToString())
        model.graph.output.extend([helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(list(outputs), {"x": x})


def _oracle(x: np.ndarray) -> np.ndarray:
    """force_fp16 by hand: BN folded into the conv, weights, input and every
    op's output rounded to half precision, arithmetic in float64."""
    s, b, m, v = (np.array(BN[k], np.float64) for k in "sbmv")
    scale = s / np.sqrt(v + 1e-5)
    w = round_fp16((W * scale[:, None, None, None]).astype(np.float32)).astype(np.float64)
    bias = round_fp16(((B - m) * scale + b).astype(np.float32)).astype(np.float64)
    xp = np.pad(round_fp16(x).astype(np.float64)[0], ((0, 0), (1, 1), (1, 1)))
    conv = np.zeros((4, 6, 6))
    for i in range(6):
        for j in range(6):
            conv[:, i, j] = np.tensordot(w, xp[:, i:i + 3, j:j + 3], axes=3) + bias
    r = round_fp16(np.maximum(round_fp16(conv.astype(np.float32)), 0))
    e = np.exp(r - r.max(axis=0))
    return round_fp16((e / e.sum(axis=0)).astype(np.float32))[None]


X = (np.random.default_rng(1).standard_normal((1, 3, 6, 6)) * 3).astype(np.float32)


def test_force_fp16_equals_the_hand_computation():
    model = toy_model()
    emulated, plan = emulate_fp16(model, "force_fp16")
    [y] = _run(emulated, X)
    expected = _oracle(X)
    assert np.array_equal(y, round_fp16(y)), "outputs must be fp16 values"
    # float32 vs float64 accumulation may put a value on the other side of a
    # rounding midpoint: at most one fp16 step (2**-11 relative), and rarely
    step = np.abs(expected) * 2.0 ** -10 + 2.0 ** -24
    assert np.all(np.abs(y - expected) <= step)
    assert np.mean(y == expected) >= 0.95
    [y32] = _run(model, X)
    assert not np.array_equal(y, y32), "the emulation must differ from float32"
    assert plan.folded_batchnorms == 1 and plan.fp32_nodes == []
    assert sorted(plan.op_types[n] for n in plan.fp16_nodes) == ["Conv", "Relu", "Softmax"]
    assert [n.name for n in model.graph.node] == ["conv", "bn", "relu", "softmax"], "the input model is untouched"


def test_keep_fp32_node_keeps_its_weights_and_output_in_float32():
    model = toy_model()
    emulated, plan = emulate_fp16(model, "force_fp16", keep_fp32=["conv"])
    assert plan.precision == {"conv": "fp32", "relu": "fp16", "softmax": "fp16"}
    conv = next(n for n in emulated.graph.node if n.name == "conv")
    weights = {t.name: numpy_helper.to_array(t) for t in emulated.graph.initializer}
    w = weights[conv.input[1]]
    assert not np.array_equal(w, round_fp16(w)), "a float32 node's weights are not rounded"
    [bn, y] = _run(emulated, X, ("bn", "y"))   # the folded conv carries the BN's output name
    assert not np.array_equal(bn, round_fp16(bn)) and np.array_equal(y, round_fp16(y))
    assert conv.input[0] == "x", "a float32 node reads the input unrounded"


def test_allow_mix_precision_keeps_the_block_list_and_gray_ops_follow():
    model = toy_model()
    emulated, plan = emulate_fp16(model, "allow_mix_precision")
    assert plan.keep_fp32 == ("Softmax",)      # the default list, less what the graph lacks (BN was folded)
    assert plan.precision == {"conv": "fp16", "relu": "fp16", "softmax": "fp32"}
    [r, y] = _run(emulated, X, ("r", "y"))
    assert np.array_equal(r, round_fp16(r)) and not np.array_equal(y, round_fp16(y))
    # a gray op after a float32 op stays float32: Relu after a kept Conv
    _, plan = emulate_fp16(model, "allow_mix_precision", keep_fp32=["Conv"])
    assert plan.precision == {"conv": "fp32", "relu": "fp32", "softmax": "fp16"}


def test_must_keep_origin_dtype_is_float32_itself():
    model = toy_model()
    emulated, plan = emulate_fp16(model, "must_keep_origin_dtype")
    assert plan.fp16_nodes == [] and plan.folded_batchnorms == 0
    assert np.array_equal(_run(emulated, X)[0], _run(model, X)[0])


def test_bad_names_and_modes_are_refused():
    with pytest.raises(ValueError, match=r"NoSuchOp.*op types here: .*Conv"):
        emulate_fp16(toy_model(), "force_fp16", keep_fp32=["NoSuchOp"])
    with pytest.raises(ValueError, match="unknown precision mode 'fp8'.*force_fp16"):
        emulate_fp16(toy_model(), "fp8")


def test_scales_and_shapes_are_not_rounded():
    """Resize's scales are not data: 2.0002 has no fp16 form and must survive."""
    scales = np.array([1, 1, 2.0002, 2.0002], np.float32)
    graph = helper.make_graph([
        helper.make_node("Resize", ["x", "roi", "scales"], ["y"], name="resize", mode="nearest"),
    ], "resize", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.zeros(0, np.float32), "roi"), numpy_helper.from_array(scales, "scales")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    emulated, plan = emulate_fp16(model)
    assert plan.precision == {"resize": "fp16"}
    kept = {t.name: numpy_helper.to_array(t) for t in emulated.graph.initializer}
    assert np.array_equal(kept["scales"], scales)
    x = np.array([[[[1 / 3, 2.0], [3.0, 4.0]]]], np.float32)
    y = ort.InferenceSession(emulated.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert y.shape == (1, 1, 4, 4) and y[0, 0, 0, 0] == np.float32(0.333251953125)


def test_layers_absorb_a_relu_and_thresholds_are_ascends():
    emulated, plan = emulate_fp16(toy_model())
    taps = layer_taps(emulated, plan)
    assert [(t.name, t.tensor, t.fused) for t in taps] == [("conv", "r", "Relu"), ("softmax", "y", "")]
    assert (ASCEND_COSINE_MIN, ASCEND_REL_L2_MAX) == (0.99, 0.05)
    layer = Layer(0, "n", "Conv", "t", "fp16")
    cases = [(0.995, 0.04, False), (0.989, 0.01, True), (0.999, 0.051, True), (float("nan"), 0.0, True)]
    for cosine, rel_l2, over in cases:
        d = LayerDrift(layer)
        d.add(_metrics(cosine, rel_l2), 0)
        assert d.over_threshold is over, (cosine, rel_l2)
    assert keep_dtype_lines(["/a/Conv", "/b/Conv"]) == "/a/Conv\n/b/Conv\n"


def _metrics(cosine: float, rel_l2: float):
    from dataclasses import replace

    return replace(output_metrics(np.ones(2), np.ones(2), "n"), cosine=cosine, rel_l2=rel_l2)


def test_compiled_metrics_equal_the_numpy_definition():
    rng = np.random.default_rng(2)
    b = rng.standard_normal((3, 7, 5)).astype(np.float32)
    a = b + rng.standard_normal(b.shape).astype(np.float32) * 1e-3
    zero_b = b.copy()
    zero_b[0, 0, 0] = 0.0
    inf_a = a.copy()
    inf_a[1, 2, 3] = np.inf
    for x, y in [(a, b), (a, zero_b), (inf_a, b), (b, b), (np.zeros(4, np.float32), np.zeros(4, np.float32)),
                 (np.array([1, 0, 0], np.float32), np.array([0, 1, 0], np.float32))]:
        slow, fast = numpy_output_metrics(x, y, "t", 2, "img"), output_metrics(x, y, "t", 2, "img")
        for field in ("max_abs", "mean_abs", "max_rel", "peak_rel", "cosine", "rel_l2", "worst_a", "worst_b"):
            s, f = getattr(slow, field), getattr(fast, field)
            assert (math.isnan(s) and math.isnan(f)) or s == pytest.approx(f, rel=1e-12, abs=1e-15), field
        assert (slow.worst_index, slow.nonfinite, slow.image_id) == (fast.worst_index, fast.nonfinite, fast.image_id)


# ------------------------------------------------------------------ the real model
@pytest.fixture(scope="module")
def golden_forecast(tmp_path_factory, golden_export, golden_images, cfg512):
    """force_fp16 forecast of golden image 0, every layer measured; once per run (support.once_per_run)."""
    return once_per_run(tmp_path_factory, "golden_forecast", lambda: forecast_fp16(
        golden_export(None).path, golden_images.batch[:1], golden_images.sizes[:1], cfg512,
        image_ids=golden_images.ids[:1]))


def test_golden_forecast_plan_and_layers(golden_forecast, cfg512):
    import torch

    from m2det_impl.network.model import build_model

    f = golden_forecast
    plan = f.plan.summary()
    with torch.device("meta"):  # the module tree is all a count needs
        convs = conv_layers(build_model(cfg512))
    assert plan["fp32_nodes"] == 0 and plan["by_precision"]["fp16"]["Conv"] == convs
    # the exporter merges the shared leach module into one Conv read by eight
    # identical BatchNormalizations: folded, they leave the Norm layer's alone
    assert f.plan.folded_batchnorms == 8 and plan["by_precision"]["fp16"]["BatchNormalization"] == 1
    # layers: every Conv, every decoder sum of the TUMs, the Norm BatchNormalization and the Softmax
    names = [d.layer.name for d in f.layers]
    expected = convs + decoder_sums(cfg512) + 2
    assert len(names) == expected and len(set(names)) == expected
    assert names[0] == "/base.0/Conv" and f.layers[0].layer.fused == "Relu" and f.layers[-1].layer.op_type == "Softmax"
    first = f.layers[0]
    # integer pixels are exact in fp16; the drift is the weights' rounding and
    # the output's, each at most 2**-11 relative
    assert 0 < first.rel_l2 < 2 * 2.0 ** -11 and first.cosine > 0.99999
    assert all(d.overflow == 0 for d in f.layers)
    print("\n" + json.dumps({k: v for k, v in f.as_dict().items()
                             if k in ("outputs", "detections", "layers_over_threshold", "first_over_threshold")},
                            indent=1))


def test_golden_forecast_outputs_and_detections(golden_forecast):
    f = golden_forecast
    worst = f.worst_outputs()
    for name in ("scores", "loc"):
        assert 0 < worst[name]["rel_l2"] < ASCEND_REL_L2_MAX and worst[name]["cosine"] > 0.9999, (name, worst[name])
    scores = f.candidate["scores"]
    assert np.array_equal(scores, round_fp16(scores)), "the fp16 Softmax's output is rounded"
    det = f.agreement()
    assert det["detections_fp32"] > 100
    # measured 0.944 (golden weights: ~1600 near-tied detections per image);
    # int8, whose scores move by 1e-2, gives 0.01 on the same criterion
    assert det["fraction"] > 0.8, det
    assert f.as_dict()["layers_over_threshold"] == 0 and f.first_over() == []


# ------------------------------------------------------------------ m2det compare
def test_compare_emulate_cli_with_mixed_precision(tmp_path, small_export, small_config_file, capsys):
    """The CLI's mixed-precision plumbing (--precision-mode, --keep-fp32 by name and by type, gray ops
    following their input, the report) on the reduced network: its heads, Norm and Softmax are built by
    the same code as M2Det512's; the forecast's figures on the real network are held above."""
    onnx_path = small_export(None).path
    code = main(["compare", "--emulate", "fp16", "--precision-mode", "allow_mix_precision", "--keep-fp32",
                 "/conf.0/Conv", "--keep-fp32", "Softmax", "--no-layers", "--limit", "1", "--onnx", str(onnx_path),
                 "--config", str(small_config_file), "--output", str(tmp_path), "--quiet"])
    assert code == EXIT_OK
    data = json.loads((tmp_path / "compare.json").read_text())
    assert data["kind"] == "fp16-forecast" and data["plan"]["mode"] == "allow_mix_precision"
    assert {"/conf.0/Conv", "/Softmax"} <= set(data["plan"]["fp32_node_names"])
    # gray ops follow their input: the kept head's Transpose and Reshape, the Concat of the class
    # logits (its first input) and the Reshape before the Softmax
    assert data["plan"]["by_precision"]["fp32"] == {"Concat": 1, "Conv": 1, "Reshape": 2, "Softmax": 1,
                                                    "Transpose": 1}
    assert data["plan"]["by_precision"]["fp16"]["BatchNormalization"] == 1  # a given list replaces the default
    assert data["layers_reported"] == 0 and len(data["images"]) == 1
    assert set(data["outputs"]) == {"scores", "loc"} and 0 < data["outputs"]["loc"]["rel_l2"] < ASCEND_REL_L2_MAX
    comparison = data["comparison"]
    assert comparison["ap"]["images"] == 1 and comparison["detections"]["object_level"]["detections_reference"] > 0
    text = (tmp_path / "compare.md").read_text()
    assert "allow_mix_precision" in text and "AP@[.50:.95]" in text
    # the second trial: --no-layers printed "over thresholds: **0**", a check that was not made
    assert "Layers: not measured (--no-layers)" in text and "over Ascend's comparison thresholds" not in text
    assert not (tmp_path / "keep_dtype.cfg").exists()
    assert "fp16 forecast" in capsys.readouterr().out


def test_compare_cli_errors_are_one_line(tmp_path, golden_export, capsys):
    assert main(["compare", "--output", str(tmp_path)]) == EXIT_ERROR
    assert "--emulate fp16, or --int8" in capsys.readouterr().err
    assert main(["compare", "--emulate", "fp16", "--keep-fp32", "NoSuchOp", "--limit", "1", "--no-layers",
                 "--onnx", str(golden_export(None).path), "--output", str(tmp_path), "--quiet"]) == EXIT_ERROR
    err = capsys.readouterr().err
    assert "NoSuchOp" in err and "Conv" in err and "Traceback" not in err and len(err.strip().splitlines()) <= 3


def test_compare_cli_folds_in_the_saved_run_comparison(tmp_path, capsys):
    """Two saved runs compared through m2det compare."""
    rng = np.random.default_rng(0)
    scores, loc = rng.random((2, 6, 5)).astype(np.float32), rng.random((2, 6, 4)).astype(np.float32)
    ref = save_run(tmp_path / "a", "ref", scores, loc, ["a", "b"], [(1, 1), (1, 1)], {"backend": "onnxruntime"})
    same = save_run(tmp_path / "b", "same", scores, loc, ["a", "b"], [(1, 1), (1, 1)], {"backend": "om"})
    flipped = scores.copy()
    flipped[1] = flipped[1, ::-1]
    bad = save_run(tmp_path / "c", "bad", flipped, loc, ["a", "b"], [(1, 1), (1, 1)], {"backend": "om"})
    assert main(["compare", str(same), str(ref), "--no-detections"]) == EXIT_OK
    assert "om/onnxruntime: 8 checks passed" in capsys.readouterr().out
    assert main(["compare", str(bad), str(ref), "--no-detections"]) == EXIT_GATE
    assert "output 'scores', image 1 (b): cosine" in capsys.readouterr().out


def _run_folder(folder: Path, ap: float, rows) -> Path:
    folder.mkdir()
    (folder / "results.json").write_text(json.dumps(
        [{"image_id": i, "category_id": c, "bbox": [x, y, w, h], "score": s} for i, c, x, y, w, h, s in rows]))
    (folder / "summary.json").write_text(json.dumps({"ap": ap, "num_images": 2, "images_per_second": 0.5,
                                                     "identity": {"backend": folder.name}}))
    return folder


def test_compare_cli_on_run_folders_reports_agreement_and_ap_change(tmp_path, capsys):
    ref = _run_folder(tmp_path / "fp32", 0.40, [(1, 1, 10, 10, 100, 100, 0.9), (1, 2, 0, 0, 50, 50, 0.5),
                                               (2, 1, 200, 200, 40, 40, 0.3)])
    # image 1: the class-1 box with score +0.02 (object-level yes, strict no), the class-2 box missing;
    # image 2: the box moved 10 px right (x2 = x + w - 1: IoU 29*39 / (2*39*39 - 29*39) = 0.59)
    cand = _run_folder(tmp_path / "int8", 0.385, [(1, 1, 10, 10, 100, 100, 0.92), (2, 1, 210, 200, 40, 40, 0.3)])
    assert main(["compare", str(cand), str(ref), "--max-ap-drop", "0.01"]) == EXIT_GATE
    out = capsys.readouterr().out
    assert "change **-1.50 points**" in out
    # two runs made apart: their speeds are shown as recorded, never as a paired ratio
    assert "not paired" in out and "alternating" not in out and "x**" not in out
    assert main(["compare", str(cand), str(ref), "--max-ap-drop", "0.02", "--output", str(tmp_path / "o")]) == EXIT_OK
    data = json.loads((tmp_path / "o" / "compare.json").read_text())
    strict, loose = data["detections"]["strict"], data["detections"]["object_level"]
    assert (strict["matched"], loose["matched"]) == (0, 2)   # of max(2, 3) = 3 detections
    assert loose["fraction"] == pytest.approx(2 / 3) and data["ap"]["change"] == pytest.approx(-0.015)
    assert data["candidate"] == "int8" and data["reference"] == "fp32"
    assert data["paired_speed"] is False and data["speed_ratio"] is None
    # the conformance report takes the comparison as a section
    (tmp_path / "r").mkdir()
    assert main(["report", str(ref), "--compare", str(tmp_path / "o" / "compare.json"), "--output",
                 str(tmp_path / "r")]) == EXIT_OK
    report = (tmp_path / "r" / "report.md").read_text()
    assert "# Precision variants" in report and "## int8 against fp32 (2 images)" in report
    assert json.loads((tmp_path / "r" / "report.json").read_text())["variants"][0]["ap"]["change"] < 0


def test_the_hardware_layers_forecast_helpers_record_and_judge():
    """tests/support's record_forecast_drift and forecast_misses, which the npu
    and gpu layers use to hold real fp16 drift against the forecast (they skip
    here): the properties and line they write, and what counts as a miss."""
    from support import forecast_misses, record_forecast_drift

    def drift(scores, loc, agreement):
        return {"outputs": {"scores": {"rel_l2": scores, "cosine": 0.5}, "loc": {"rel_l2": loc, "cosine": 0.25}},
                "agreement": agreement}

    figures = {"actual": drift(0.004, 0.002, 0.9), "predicted": drift(0.003, 0.001, 0.95),
               "forecast_error": drift(0.001, 0.0005, 0.99)}
    recorded = []
    line = record_forecast_drift(figures, "om_golden", lambda name, value: recorded.append((name, value)))
    assert len(recorded) == 15 and ("om_golden_actual_scores_rel_l2", 0.004) in recorded
    assert ("om_golden_forecast_error_loc_cosine", 0.25) in recorded and ("om_golden_predicted_agreement", 0.95) in recorded
    assert line == ("scores rel_l2 actual 0.004, predicted 0.003, forecast error 0.001; loc rel_l2 actual 0.002, "
                    "predicted 0.001, forecast error 0.0005; agreement actual 0.9000, predicted 0.9500")
    assert forecast_misses(figures) == []
    figures["forecast_error"] = drift(0.004, float("nan"), 0.5)  # as far as float32 passes; an overflow does not
    misses = forecast_misses(figures)
    assert [m[0] for m in misses] == ["loc"] and misses[0][2] == 0.002
    figures["forecast_error"] = drift(0.0041, 0.001, 0.5)
    assert [m[0] for m in forecast_misses(figures)] == ["scores"]
