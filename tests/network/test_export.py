"""The export contract (reference section 9): names, order, shapes, the checker, the folding of static
exports. The atc census and commands: tests/backends/test_ascend_atc.py.

The full exports come from the session cache (tests/conftest.py); the small
graphs built here exercise the folding on cases the M2Det export does not contain.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from m2det_impl.backends.ascend.atc import op_census
from m2det_impl.errors import InputFileError, ModelOutputError
from m2det_impl.network.export import (
    check_output_contract,
    export_onnx,
    fold_static_shapes,
)

pytestmark = pytest.mark.cpu


def _graph(path):
    return onnx.load(str(path), load_external_data=False)


def _dims(info):
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in info.type.tensor_type.shape.dim]


# The contract on M2Det512 itself: the dynamic export (ONNX Runtime) and static batch 1 (the .om
# every deployment builds first). A static batch above 1 (atc's 4, 8, 16, 32) must carry the batch
# into every folded shape: that is the export code's doing, not the width's, so it is held on the
# reduced network (support.SMALL_CONFIG_FILE: same modules and exporter, 64 planes, 2 levels, 320)
# at batch 3: a 106 MB export instead of a third 530 MB one.
EXPORTS = [pytest.param("golden", None, id="512-dynamic"), pytest.param("golden", 1, id="512-static1"),
           pytest.param("small", 3, id="small-static3")]
STATIC = [p for p in EXPORTS if p.values[1] is not None]


def _export(request, model, batch):
    """(export record, config) of ``model`` (golden: M2Det512; small: the reduced network)."""
    return request.getfixturevalue(f"{model}_export")(batch), request.getfixturevalue(
        "cfg512" if model == "golden" else "small_cfg")


# ------------------------------------------------------------------ contract
@pytest.mark.parametrize("model_name, batch", EXPORTS)
def test_io_names_order_and_shapes(request, model_name, batch):
    """image [B,3,512,512] -> scores [B,32760,81], loc [B,32760,4], in that order (M2Det512)."""
    record, cfg = _export(request, model_name, batch)
    size, priors = cfg.size, cfg.num_priors
    if model_name == "golden":
        assert (size, priors) == (512, 32760)
    model = _graph(record.path)
    graph = model.graph
    inits = {t.name for t in graph.initializer}
    assert [i.name for i in graph.input if i.name not in inits] == ["image"]
    assert [o.name for o in graph.output] == ["scores", "loc"]
    lead = "batch" if batch is None else batch
    assert _dims(graph.input[0]) == [lead, 3, size, size]
    assert _dims(graph.output[0]) == [lead, priors, 81]
    assert _dims(graph.output[1]) == [lead, priors, 4]
    for info in (graph.input[0], *graph.output):
        assert info.type.tensor_type.elem_type == TensorProto.FLOAT
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 11)]
    props = {p.key: p.value for p in model.metadata_props}
    assert props["m2det.batch"] == ("dynamic" if batch is None else str(batch))
    assert props["m2det.size"] == str(size)


@pytest.mark.parametrize("batch", [None, 1])
def test_passes_onnx_checker(golden_export, batch):
    onnx.checker.check_model(str(golden_export(batch).path))


@pytest.mark.parametrize("model_name, batch", STATIC)
def test_static_export_has_no_shape_arithmetic(request, model_name, batch):
    census = op_census(_export(request, model_name, batch)[0].path)
    assert {op: census[op] for op in ("Shape", "Gather", "Unsqueeze", "Slice")} == {
        "Shape": 0, "Gather": 0, "Unsqueeze": 0, "Slice": 0}


def test_dynamic_export_keeps_the_batch_symbolic(golden_export):
    census = op_census(golden_export(None).path)
    assert census["Shape"] > 0  # the batch is read at run time: the static export is for atc


def test_export_records_time_and_size(golden_export, record_property):
    """Figures for the closing note (and a guard against an empty or truncated file)."""
    record = golden_export(1)
    record_property("export_seconds", round(record.seconds, 1))
    record_property("export_bytes", record.bytes)
    # 133,396,415 float32 parameters in the reference state dict, fewer once the
    # exporter fuses batch norms into convolutions and shares the eight leach copies.
    assert 500e6 < record.bytes < 133_396_415 * 4


def test_contract_violation_names_the_file_and_what_it_found(tmp_path, cfg512):
    """The guide's exporter: outputs named (scores, boxes) and in the wrong order."""
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 512, 512])
    outs = [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 32760, 4]),
            helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [32760, 81])]
    nodes = [helper.make_node("Identity", ["image"], ["scores"]), helper.make_node("Identity", ["image"], ["boxes"])]
    path = tmp_path / "guide.onnx"
    onnx.save(helper.make_model(helper.make_graph(nodes, "g", [x], outs)), str(path))
    with pytest.raises(ModelOutputError) as info:
        check_output_contract(path, cfg512, batch=1)
    message = str(info.value)
    assert str(path) in message and "boxes" in message and "loc[1,32760,4]" in message


def test_contract_rejects_a_missing_file(tmp_path, cfg512):
    with pytest.raises(InputFileError, match="not found"):
        check_output_contract(tmp_path / "none.onnx", cfg512)


@pytest.mark.parametrize("batch", [0, -1, 2.5, True, "4"])
def test_export_rejects_a_bad_batch_before_exporting(tmp_path, cfg512, batch):
    with pytest.raises((ValueError, TypeError)):
        export_onnx(object(), tmp_path / "x.onnx", cfg512, batch=batch)
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------ folding
def _resize_graph():
    """x[1,2,3,3] -> Resize(sizes = Concat(Slice(Shape(x), 0, 2), [6, 6])): torch's pattern."""
    const = lambda name, values: helper.make_node(  # noqa: E731
        "Constant", [], [name], value=numpy_helper.from_array(np.asarray(values), name=name))
    nodes = [
        const("start", np.array([0], np.int64)), const("end", np.array([2], np.int64)),
        const("axes", np.array([0], np.int64)), const("hw", np.array([6, 6], np.int64)),
        const("roi", np.array([], np.float32)), const("scales", np.array([], np.float32)),
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Slice", ["shape", "start", "end", "axes"], ["nc"]),
        helper.make_node("Concat", ["nc", "hw"], ["sizes"], axis=0),
        helper.make_node("Resize", ["x", "roi", "scales", "sizes"], ["y"], mode="nearest",
                         coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
        helper.make_node("Relu", ["y"], ["z"]),
    ]
    graph = helper.make_graph(nodes, "resize", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 3, 3])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 2, 6, 6])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])


def test_folding_makes_resize_sizes_constant_and_keeps_the_result():
    import onnxruntime as ort

    model = _resize_graph()
    folded = fold_static_shapes(model)
    onnx.checker.check_model(folded)
    assert [n.op_type for n in folded.graph.node if n.op_type != "Constant"] == ["Resize", "Relu"]
    sizes = next(n for n in folded.graph.node if n.output == ["sizes"])
    assert numpy_helper.to_array(sizes.attribute[0].t).tolist() == [1, 2, 6, 6]
    x = np.arange(18, dtype=np.float32).reshape(1, 2, 3, 3) - 9
    run = lambda m: ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]  # noqa: E731
    assert np.array_equal(run(folded), run(model))
    assert len(model.graph.node) == 11  # the input model is left alone


def test_folding_leaves_a_symbolic_batch_alone():
    model = _resize_graph()
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    folded = fold_static_shapes(model)
    assert "Shape" in [n.op_type for n in folded.graph.node]
