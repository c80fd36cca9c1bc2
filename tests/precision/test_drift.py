"""``m2det drift``: dumps made from our own network's real intermediate values, clean and faulty.

Most tests use a reduced network built from the project's own modules (a
``BasicConv`` stem and one ``TUM``, golden weights, 64x64 input: 17 Conv +
ReLU layers and 5 decoder sums, milliseconds per forward) exported to ONNX
once per module. The "device" is the project's fp16 emulation of that ONNX
(what a 310P rounds, rounded) with an extra rounding-sized perturbation per
layer (a device orders its accumulations differently); a fault is noise added
INSIDE the graph at one layer, so everything after it drifts for real. The
dump files come from the test-side encoder (tests/ascend_dumps.py), in each
layout: NC1HWC0 fp16, NCHW fp32, ND fp16.

One test holds the real M2Det512 batch-1 export to the issue's Done-when case.
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from m2det_impl.cli import main
from m2det_impl.exit_codes import EXIT_BAD_INPUT, EXIT_GATE_FAILED, EXIT_OK
from tests.ascend_dumps import DT_FLOAT, DT_FLOAT16, DT_INT8, FRACTAL_NZ, NC1HWC0, NCHW, ND, Tensor, write_dump

pytestmark = pytest.mark.cpu

LAYOUTS = ((NC1HWC0, DT_FLOAT16), (NCHW, DT_FLOAT), (ND, DT_FLOAT16))


# ------------------------------------------------------------------ the reduced network and its "device"
@dataclass(frozen=True)
class Layer:
    """One dumped device op: the ONNX value it stands for."""

    op_name: str  # the device op's name (a fused Conv keeps its Conv node's name)
    op_type: str
    tensor: str  # the ONNX value it holds (a fused Conv + ReLU holds the ReLU's output)
    node: str  # that value's producer, what drift.json names


def dumped_layers(model: onnx.ModelProto, op_types=("Conv", "Add")) -> List[Layer]:
    """Every Conv (fused with its ReLU, as atc does) and every Add of the graph, in graph order."""
    readers: Dict[str, List[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    layers = []
    for node in model.graph.node:
        if node.op_type not in op_types:
            continue
        after = readers.get(node.output[0], [])
        if node.op_type == "Conv" and len(after) == 1 and after[0].op_type == "Relu":
            layers.append(Layer(node.name, "Conv2D", after[0].output[0], after[0].name))
        else:
            layers.append(Layer(node.name, node.op_type if node.op_type != "Conv" else "Conv2D", node.output[0],
                                node.name))
    return layers


def run_with_outputs(model: onnx.ModelProto, image: np.ndarray, names: Sequence[str]) -> Dict[str, np.ndarray]:
    import onnxruntime as ort

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    known = {o.name for o in copy.graph.output}
    copy.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names if n not in known)
    session = ort.InferenceSession(copy.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip(names, session.run(list(names), {session.get_inputs()[0].name: image})))


def with_noise(model: onnx.ModelProto, tensor: str, noise: np.ndarray) -> onnx.ModelProto:
    """``model`` with ``noise`` added to ``tensor`` inside the graph, right after its producer: every
    reader sees the fault."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    nodes = list(out.graph.node)
    [at] = [i for i, node in enumerate(nodes) if tensor in node.output]
    outputs = nodes[at].output
    outputs[list(outputs).index(tensor)] = f"{tensor}::clean"
    out.graph.initializer.append(numpy_helper.from_array(noise.astype(np.float32), f"{tensor}::noise"))
    fault = helper.make_node("Add", [f"{tensor}::clean", f"{tensor}::noise"], [tensor], name=f"{tensor}::fault")
    del out.graph.node[:]
    out.graph.node.extend(nodes[:at + 1] + [fault] + nodes[at + 1:])
    return out


def device_values(emulated: onnx.ModelProto, image: np.ndarray, layers: Sequence[Layer], seed: int,
                  fault: Optional[str] = None, fault_size: float = 0.1,
                  clean: Optional[Dict[str, np.ndarray]] = None) -> Dict[str, np.ndarray]:
    """What a 310P would dump: the fp16 emulation's values, each nudged by about one fp16 rounding
    (a device orders its accumulations differently); with ``fault``, Gaussian noise of
    ``fault_size`` x the value's RMS is added to that value inside the graph."""
    rng = np.random.default_rng(seed)
    names = [layer.tensor for layer in layers]
    model = emulated
    if fault is not None:
        rms = float(np.sqrt(np.mean(np.square(clean[fault], dtype=np.float64))))
        noise = rng.standard_normal(clean[fault].shape) * fault_size * rms
        model = with_noise(emulated, fault, noise)
    values = run_with_outputs(model, image, names)
    return {n: v * (1 + rng.uniform(-1, 1, v.shape).astype(np.float32) * 2.0 ** -11) for n, v in values.items()}


def write_layer_dumps(root: Path, layers: Sequence[Layer], values: Dict[str, np.ndarray], *,
                      original_op: bool = True, reverse_time: bool = False) -> List[Path]:
    """One dump file per layer, layouts taking turns; timestamps in execution order (or reversed)."""
    paths = []
    for i, layer in enumerate(layers):
        fmt, dtype = LAYOUTS[i % len(LAYOUTS)]
        tensor = Tensor.of(values[layer.tensor], fmt, dtype, layer.node if original_op else "")
        stamp = (len(layers) - i) if reverse_time else i
        paths.append(write_dump(root, layer.op_type, layer.op_name, [tensor], task=10 + i,
                                timestamp=1700000000000000 + stamp))
    return paths


@dataclass
class Tiny:
    onnx: Path
    image_bin: Path
    image: np.ndarray
    model: onnx.ModelProto
    emulated: onnx.ModelProto
    layers: List[Layer]
    clean: Dict[str, np.ndarray]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Tiny:
    """The reduced network (BasicConv stem + one TUM, golden weights) as ONNX, an input, and clean device values."""
    import torch

    from m2det_impl.network.model import TUM, BasicConv, golden_fill_
    from m2det_impl.precision.fp16 import emulate_fp16

    class Reduced(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = BasicConv(3, 16, 3, 1, 1)
            self.tum = TUM(first_level=True, input_planes=16, side_channel=0, scales=6, smooth=True,
                           decoder_sizes=(4, 8, 16, 32, 64))

        def forward(self, x):
            return tuple(self.tum(self.stem(x)))

    folder = tmp_path_factory.mktemp("tiny")
    path = folder / "reduced.onnx"
    net = golden_fill_(Reduced(), salt=0).eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)  # the TorchScript exporter on itself
        torch.onnx.export(net, (torch.zeros(1, 3, 64, 64),), str(path), input_names=["image"], opset_version=11,
                          do_constant_folding=True, dynamo=False)
    model = onnx.load(str(path))
    rng = np.random.default_rng(7)
    image = (rng.standard_normal((1, 3, 64, 64)) * 60).astype(np.float32)  # about a preprocessed image's range
    image_bin = folder / "image.bin"
    image.tofile(image_bin)
    layers = dumped_layers(model)
    emulated, _ = emulate_fp16(model)
    clean = device_values(emulated, image, layers, seed=1)
    return Tiny(path, image_bin, image, model, emulated, layers, clean)


def drift_cli(tiny: Tiny, dump: Path, out: Path, *extra: str) -> int:
    return main(["drift", "--onnx", str(tiny.onnx), "--input", str(tiny.image_bin), "--dump", str(dump),
                 "--output", str(out), *extra])


# ------------------------------------------------------------------ the reduced network
def test_the_reduced_network_has_the_layers_we_dump(tiny):
    kinds = [layer.op_type for layer in tiny.layers]
    assert kinds.count("Conv2D") == 17 and kinds.count("Add") == 5
    assert all(layer.node.endswith("Relu") for layer in tiny.layers if layer.op_type == "Conv2D")


def test_a_clean_fp16_dump_passes_with_every_layer_compared(tiny, tmp_path, capsys):
    write_layer_dumps(tmp_path / "dump", tiny.layers, tiny.clean)
    assert drift_cli(tiny, tmp_path / "dump", tmp_path / "out") == EXIT_OK
    data = json.loads((tmp_path / "out" / "drift.json").read_text())
    assert data["compared"] == len(tiny.layers) and data["out_of_bounds"] == 0
    assert data["first_divergent"] is None and data["unmatched"] == []
    # one entry per node, in graph order, each with its metrics and the bound it was held to
    assert [n["node"] for n in data["nodes"]] == [layer.node for layer in tiny.layers]
    depths = [n["depth"] for n in data["nodes"]]
    assert depths == sorted(depths)
    assert {n["format"] for n in data["nodes"]} == {"FORMAT_NC1HWC0", "FORMAT_NCHW", "FORMAT_ND"}
    for n in data["nodes"]:
        assert n["passed"] and n["rel_l2"] <= n["bound"]["max"] and n["cosine"] > 0.999
        assert n["bound"]["max"] >= data["bounds"]["rel_l2_floor"] and n["forecast"]["rel_l2"] is not None
        assert {"max_abs", "max_rel", "cosine"} <= set(n)
    # the device drifts like fp16: well above float32's 1e-7, within the forecast's reach
    assert max(n["rel_l2"] for n in data["nodes"]) > 1e-4
    text = (tmp_path / "out" / "drift.md").read_text()
    assert text.count("| ok |") == len(tiny.layers) and "![cosine by layer depth](drift.png)" in text
    import cv2

    picture = cv2.imread(str(tmp_path / "out" / "drift.png"))
    assert picture is not None and picture.shape == (420, 900, 3)
    out = capsys.readouterr().out
    assert f"{len(tiny.layers)} nodes compared, 0 out of bounds" in out and "first divergent" not in out


@pytest.mark.parametrize("reverse_time", [False, True], ids=["execution-order", "files-in-reverse-order"])
def test_noise_at_one_layer_and_after_is_named_first(tiny, tmp_path, capsys, reverse_time):
    """The fault is injected inside the graph, so every later layer drifts too; the first in GRAPH
    order is named, whatever order the files or their names come in."""
    k = 9
    faulty = device_values(tiny.emulated, tiny.image, tiny.layers, seed=2, fault=tiny.layers[k].tensor,
                           clean=tiny.clean)
    late = tiny.layers[-2].tensor  # and a worse, unrelated fault further on: the FIRST is named, not the worst
    faulty[late] = faulty[late] + np.random.default_rng(5).standard_normal(faulty[late].shape).astype(np.float32) * \
        np.sqrt(np.mean(np.square(faulty[late])))
    write_layer_dumps(tmp_path / "dump", tiny.layers, faulty, reverse_time=reverse_time)
    assert drift_cli(tiny, tmp_path / "dump", tmp_path / "out") == EXIT_GATE_FAILED
    data = json.loads((tmp_path / "out" / "drift.json").read_text())
    assert data["first_divergent"]["node"] == tiny.layers[k].node
    verdicts = [n["passed"] for n in data["nodes"]]
    assert all(verdicts[:k]) and not verdicts[k] and data["out_of_bounds"] >= 2  # and it propagates
    ratios = [n["rel_l2"] / n["bound"]["max"] for n in data["nodes"]]
    assert int(np.argmax(ratios)) == len(tiny.layers) - 2  # the worst node is not the first divergent
    assert data["compared"] == len(tiny.layers)
    out = capsys.readouterr().out
    assert f"first divergent: {tiny.layers[k].node} " in out
    assert "**First divergent node: `" + tiny.layers[k].node in (tmp_path / "out" / "drift.md").read_text()


def test_the_atc_json_fusion_map_aligns_headers_without_original_op(tiny, tmp_path):
    """No original_op in any header: the atc JSON says which ONNX output each op stands for, either per
    output (_datadump_origin_name) or by its fused nodes (_datadump_original_op_names). An op the
    model does not have (a layout change) and one the JSON maps to a missing node are listed."""
    write_layer_dumps(tmp_path / "dump", tiny.layers, tiny.clean, original_op=False)
    stray = Tensor.of(tiny.clean[tiny.layers[0].tensor], NC1HWC0, DT_FLOAT16)
    write_dump(tmp_path / "dump", "TransData", "trans_TransData_3", [stray], task=99, timestamp=1800000000000000)
    write_dump(tmp_path / "dump", "Conv2D", "ghost_conv", [stray], task=98, timestamp=1800000000000001)
    by_name = {n.name: n for n in tiny.model.graph.node}
    ops = []
    for i, layer in enumerate(tiny.layers):
        if i % 2:  # per output
            ops.append({"name": layer.op_name, "type": layer.op_type, "output_desc": [{"dtype": "DT_FLOAT16", "attr": [
                {"key": "_datadump_origin_name", "value": {"s": layer.node}},
                {"key": "_datadump_origin_output_index", "value": {"i": 0}}]}]})
        else:  # by the fused nodes: the last in graph order holds the result
            fused = [layer.node, layer.op_name] if layer.node != layer.op_name else [layer.op_name]
            assert all(name in by_name for name in fused)
            ops.append({"name": layer.op_name, "type": layer.op_type, "attr": [
                {"key": "_datadump_original_op_names", "value": {"list": {"s": fused}}}]})
    ops.append({"name": "trans_TransData_3", "type": "TransData", "attr": []})
    ops.append({"name": "ghost_conv", "type": "Conv2D", "attr": [
        {"key": "_datadump_original_op_names", "value": {"list": {"s": ["/no/such/Conv"]}}}]})
    om_json = tmp_path / "m2det.json"
    om_json.write_text(json.dumps({"name": "m2det", "graph": [{"name": "g", "op": ops}]}))
    assert drift_cli(tiny, tmp_path / "dump", tmp_path / "out", "--om-json", str(om_json)) == EXIT_OK
    data = json.loads((tmp_path / "out" / "drift.json").read_text())
    assert data["compared"] == len(tiny.layers) and {n["aligned_by"] for n in data["nodes"]} == {"om-json"}
    assert [n["node"] for n in data["nodes"]] == [layer.node for layer in tiny.layers]
    unmatched = {u["op"]: u["reason"] for u in data["unmatched"]}
    assert set(unmatched) == {"trans_TransData_3", "ghost_conv"}
    assert "/no/such/Conv" in unmatched["ghost_conv"] and "nothing" in unmatched["trans_TransData_3"]


def test_without_original_op_or_fusion_map_nothing_is_compared_and_nothing_passes(tiny, tmp_path, capsys):
    write_layer_dumps(tmp_path / "dump", tiny.layers[:4], tiny.clean, original_op=False)
    assert drift_cli(tiny, tmp_path / "dump", tmp_path / "out") == EXIT_GATE_FAILED
    data = json.loads((tmp_path / "out" / "drift.json").read_text())
    assert data["compared"] == 0 and len(data["unmatched"]) == 4
    assert all("--om-json" in u["reason"] for u in data["unmatched"])
    assert "nothing compared" in capsys.readouterr().out


def test_a_value_claimed_twice_is_compared_once_and_the_copy_listed(tiny, tmp_path):
    layer = tiny.layers[3]
    write_layer_dumps(tmp_path / "dump", tiny.layers, tiny.clean)
    copy = Tensor.of(tiny.clean[layer.tensor], NCHW, DT_FLOAT, layer.node)
    write_dump(tmp_path / "dump", "TransData", "copy_of_3", [copy], task=97, timestamp=1800000000000000)
    assert drift_cli(tiny, tmp_path / "dump", tmp_path / "out") == EXIT_OK
    data = json.loads((tmp_path / "out" / "drift.json").read_text())
    assert data["compared"] == len(tiny.layers)
    [u] = data["unmatched"]
    assert u["op"] == "copy_of_3" and layer.tensor in u["reason"] and layer.op_name in u["reason"]


# ------------------------------------------------------------------ refused inputs: exit 2, one line naming the file
def _header_then(data: bytes, length: int) -> bytes:
    import struct

    return struct.pack("<Q", length) + data


MALFORMED = {
    "truncated header length": (lambda good: good[:5], "truncated dump file: 5 bytes"),
    "header length past the file": (lambda good: _header_then(good[8:], len(good)), "runs past the end of the file"),
    "header not a DumpData": (lambda good: _header_then(b"\xff" * 16 + good[8:], 16), "is not a DumpData message"),
    "data sizes overrun the file": (lambda good: good[:-10], "overrun the file"),
    "bytes after the data": (lambda good: good + b"\0\0\0\0", "leave bytes unaccounted for"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_dump_file_is_refused_in_one_line(tiny, tmp_path, capsys, case):
    paths = write_layer_dumps(tmp_path / "dump", tiny.layers[:3], tiny.clean)
    make, message = MALFORMED[case]
    paths[1].write_bytes(make(paths[1].read_bytes()))
    assert drift_cli(tiny, tmp_path / "dump", tmp_path / "out") == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(paths[1]) in err and message in err, err


@pytest.mark.parametrize("case", ["int8 data", "FRACTAL_NZ format", "unnamed format", "shape vs size",
                                  "NC1HWC0 vs original shape"])
def test_a_dumped_value_that_cannot_be_converted_is_refused_before_the_forward_passes(tiny, tmp_path, capsys, case,
                                                                                       monkeypatch):
    import m2det_impl.precision.drift as drift_module

    def no_forward_pass(*args, **kwargs):
        raise AssertionError("the forward passes ran before the dump was checked")

    monkeypatch.setattr(drift_module, "reference_run", no_forward_pass)
    layer = tiny.layers[2]
    value = tiny.clean[layer.tensor]
    tensor = Tensor.of(value, NC1HWC0, DT_FLOAT16, layer.node)
    expected = {"int8 data": "data type DT_INT8 is not supported", "FRACTAL_NZ format": "FORMAT_FRACTAL_NZ is not",
                "unnamed format": "format unknown (77) is not", "shape vs size": "needs",
                "NC1HWC0 vs original shape": "does not hold NCHW"}[case]
    if case == "int8 data":
        tensor.data_type = DT_INT8
    elif case == "FRACTAL_NZ format":
        tensor.format = FRACTAL_NZ
    elif case == "unnamed format":
        tensor.format = 77
    elif case == "shape vs size":
        tensor.shape = [tensor.shape[0], tensor.shape[1] + 1] + tensor.shape[2:]
    else:
        tensor.original_shape = [1, value.shape[1] + 16, value.shape[2], value.shape[3]]
    path = write_dump(tmp_path / "dump", layer.op_type, layer.op_name, [tensor], task=1, timestamp=1)
    assert drift_cli(tiny, tmp_path / "dump", tmp_path / "out") == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(path) in err and "output 0" in err and expected in err, err
    assert not (tmp_path / "out" / "drift.json").exists()


def test_bad_inputs_and_folders_are_refused_in_one_line(tiny, tmp_path, capsys):
    write_layer_dumps(tmp_path / "dump", tiny.layers[:2], tiny.clean)
    short = tmp_path / "short.bin"
    short.write_bytes(b"\0" * 100)
    cases = [
        (["--input", str(short)], str(short), "wrong .bin size: 100 bytes, expected 49152"),
        (["--dump", str(tmp_path / "nowhere")], "nowhere", "dump folder not found"),
        (["--dump", str(tmp_path)], str(tmp_path), "no dump files"),  # only the .bin and no dumps? (see below)
        (["--onnx", str(short)], str(short), "not a readable ONNX model"),
        (["--om-json", str(short)], str(short), "atc --json model file is not valid JSON"),
    ]
    (tmp_path / "empty").mkdir()
    cases[2] = (["--dump", str(tmp_path / "empty")], "empty", "no dump files")
    for extra, where, message in cases:
        args = {"--onnx": str(tiny.onnx), "--input": str(tiny.image_bin), "--dump": str(tmp_path / "dump"),
                "--output": str(tmp_path / "out")}
        args.update(dict(zip(extra[::2], extra[1::2])))
        assert main(["drift", *[x for kv in args.items() for x in kv]]) == EXIT_BAD_INPUT, extra
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and where in err and message in err, (extra, err)
    # two iterations in one folder: the engineer picks one
    write_layer_dumps(tmp_path / "two", tiny.layers[:1], tiny.clean)
    write_dump(tmp_path / "two", "Add", "x", [Tensor.of(np.ones((1, 1, 1, 1)))], task=1, timestamp=2, iteration=1)
    assert drift_cli(tiny, tmp_path / "two", tmp_path / "out") == EXIT_BAD_INPUT
    assert "2 iterations or models" in capsys.readouterr().err


def test_the_golden_runs_with_graph_optimisations_off_and_the_forecast_on_the_same_input(tiny, monkeypatch):
    """No ONNX Runtime fusion may move a value the dump is compared with; the forecast sees the same image."""
    import onnxruntime as ort

    from m2det_impl.precision.drift import reference_run

    made = []
    real = ort.InferenceSession

    def recording(model, sess_options=None, **kwargs):
        made.append(None if sess_options is None else sess_options.graph_optimization_level)
        return real(model, sess_options=sess_options, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", recording)
    tensors = [layer.tensor for layer in tiny.layers]
    reference = reference_run(tiny.model, tiny.image, tensors)
    assert made[:2] == [ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_ALL], made
    golden = run_with_outputs(tiny.model, tiny.image, tensors)
    for t in tensors:
        np.testing.assert_allclose(reference.golden[t], golden[t], rtol=1e-5, atol=1e-4)
        assert 0 < np.abs(reference.forecast[t] - golden[t]).max() < 0.05 * np.abs(golden[t]).max()


# ------------------------------------------------------------------ bounds
def test_bounds_are_data_with_a_floor_and_a_margin():
    from m2det_impl.precision.drift import DriftBounds, implied_cosine_min

    bounds = DriftBounds.load()
    assert bounds.margin == 3.0 and bounds.floor == 0.002 and bounds.margin_reason and bounds.floor_reason
    assert bounds.bound(1e-5).value == bounds.floor  # near-zero forecast: the floor
    assert bounds.bound(0.01).value == pytest.approx(0.03) and "3 x forecast" in bounds.bound(0.01).reason
    assert bounds.bound(None).value == bounds.floor and bounds.bound(float("nan")).value == bounds.floor
    assert not bounds.bound(0.01).passes(0.0301) and bounds.bound(0.01).passes(0.0299)
    assert not bounds.bound(0.01).passes(float("nan"))
    assert implied_cosine_min(0.03) == pytest.approx(np.sqrt(1 - 0.03 ** 2))


def test_a_bounds_file_without_its_entries_is_refused(tmp_path):
    from m2det_impl.errors import InputFileError
    from m2det_impl.precision.drift import DriftBounds

    bad = tmp_path / "bounds.json"
    bad.write_text(json.dumps({"rel_l2_margin": {"value": 0.5}, "rel_l2_floor": {"value": 0.001}}))
    with pytest.raises(InputFileError, match="margin must be >= 1"):
        DriftBounds.load(bad)
    bad.write_text("{}")
    with pytest.raises(InputFileError, match="needs rel_l2_margin"):
        DriftBounds.load(bad)


# ------------------------------------------------------------------ the Done-when case: M2Det512, batch 1
def test_m2det512_thirty_conv_layers_clean_passes_and_a_fault_is_named(golden_export, golden_batch, tmp_path,
                                                                      record_property):
    """About 30 Conv layers of the real batch-1 export, every other one NC1HWC0 fp16: the clean dump
    passes with every layer compared; noise injected at one layer and after it is named first.
    Two forward passes in all (the golden, optimisations off, and the fp16 forecast), shared by both
    dumps through the workflow's ``reference``; the device values are the forecast's, nudged by a
    rounding each, so the clean dump drifts like fp16 and no more."""
    from m2det_impl.precision.drift import reference_run
    from m2det_impl.workflows.drift import drift

    started = time.perf_counter()
    path = golden_export(1).path
    model = onnx.load(str(path))
    convs = dumped_layers(model, op_types=("Conv",))
    # 30 spread over the network after VGG's first two blocks (whose maps hold 8-16 M values each)
    picked = [convs[i] for i in np.linspace(4, len(convs) - 1, 30).round().astype(int)]
    image = golden_batch[:1]
    image_bin = tmp_path / "image.bin"
    image.tofile(image_bin)
    reference = reference_run(model, image, [layer.tensor for layer in picked])  # golden + fp16 forecast
    del model
    rng = np.random.default_rng(3)
    clean = {t: v * (1 + rng.uniform(-1, 1, v.shape).astype(np.float32) * 2.0 ** -11)
             for t, v in reference.forecast.items()}
    k = 12
    faulty = dict(clean)
    for layer in picked[k:]:  # 10% noise at layer k and after it (what a fault there causes downstream)
        v = clean[layer.tensor]
        faulty[layer.tensor] = v + rng.standard_normal(v.shape).astype(np.float32) * 0.1 * np.sqrt(np.mean(v * v))
    layouts = ((NC1HWC0, DT_FLOAT16), (NCHW, DT_FLOAT))  # half NC1HWC0 fp16
    verdicts = {}
    for name, values in (("clean", clean), ("faulty", faulty)):
        for i, layer in enumerate(picked):
            fmt, dtype = layouts[i % 2]
            write_dump(tmp_path / name, layer.op_type, layer.op_name,
                       [Tensor.of(values[layer.tensor], fmt, dtype, layer.node)], task=i, timestamp=i)
        verdicts[name] = drift(path, image_bin, tmp_path / name, tmp_path / f"out-{name}", reference=reference)
    clean_run, faulty_run = verdicts["clean"], verdicts["faulty"]
    assert clean_run.exit_code == EXIT_OK, [(n.match.node, n.rel_l2, n.bound.value) for n in clean_run.report.nodes]
    assert len(clean_run.report.nodes) == len(picked) == 30 and not clean_run.report.unmatched
    assert faulty_run.exit_code == EXIT_GATE_FAILED
    assert faulty_run.report.first_divergent.match.node == picked[k].node
    assert all(n.passed for n in faulty_run.report.nodes[:k])
    # how long the chain takes is reported, never asserted: a timed assertion fails on a loaded machine
    record_property("drift_512_seconds", round(time.perf_counter() - started, 1))


def test_alignment_follows_graph_order_not_names():
    """The first divergent node is the first in the order the device ran them: a graph whose node and value
    names sort the other way round still comes back in graph order (dumps read in any order)."""
    from types import SimpleNamespace

    from onnx import TensorProto, helper

    from m2det_impl.precision.drift import align

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 2, 2])
    y = helper.make_tensor_value_info("aa_out", TensorProto.FLOAT, [1, 2, 2, 2])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["zz_out"], name="zz_first"),
                               helper.make_node("Relu", ["zz_out"], ["aa_out"], name="aa_second")], "g", [x], [y])
    model = helper.make_model(graph)

    def dumped(node):
        out = SimpleNamespace(original_name=node, original_index=0, index=0)
        return SimpleNamespace(op_name=node, op_type="Relu", path=Path(f"Relu.{node}.1.1.1"), outputs=[out])

    ordered, unmatched = align([dumped("aa_second"), dumped("zz_first")], model)
    assert unmatched == []
    assert [(m.node, m.tensor) for m in ordered] == [("zz_first", "zz_out"), ("aa_second", "aa_out")]
