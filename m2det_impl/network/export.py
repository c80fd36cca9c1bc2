"""ONNX export of M2Det for ONNX Runtime and Ascend ``atc`` (reference section 9).

The guide's exporter names the outputs ``("scores", "boxes")`` while the network
returns ``(loc, scores)``, then patches the order back with ``atc
--out_nodes="Softmax_1234:0;Reshape_1231:0"``, node names that change with
every torch release. Here the network returns ``(scores, loc)`` and the ONNX
outputs carry those names in that order, so ``atc`` needs no ``--out_nodes``.

A static-batch export is folded free of shape arithmetic: torch emits
``Shape -> Slice -> Concat`` to build the ``sizes`` input of every ``Resize``,
and CANN documents that ``Resize`` needs constant ``sizes``/``scales`` (its
advice is onnx-simplifier, which this project does not depend on). With every
shape known, :func:`fold_static_shapes` evaluates those small integer subgraphs
with ONNX's reference evaluator and replaces them by constants. The arithmetic
of the network itself is untouched, so outputs are bit-identical.

The TorchScript exporter (``dynamo=False``) is used because it honours opset
11; the ``torch.export`` exporter (the default since torch 2.9) targets opset
18 and newer.
"""

from __future__ import annotations

import inspect
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Union

import numpy as np
import onnx
from onnx import helper, numpy_helper

from m2det_impl._io import PathLike, atomic_output
from m2det_impl.errors import InputFileError, ModelOutputError, UsageError
from m2det_impl.network.config import M2DetConfig

__all__ = [
    "INPUT_NAME",
    "OUTPUT_NAMES",
    "export_onnx",
    "fold_static_shapes",
    "check_output_contract",
    "load_graph",
]

INPUT_NAME = "image"
OUTPUT_NAMES = ("scores", "loc")
#: The opsets the export is made at: from 11 (the guide's, what CANN's atc takes; below it the
#: network's nearest upsampling does not export) to 20, the newest the TorchScript exporter writes.
OPSETS = range(11, 21)


# Ops whose constant inputs give a constant output; all integer bookkeeping.
_FOLDABLE = frozenset({
    "Shape", "Gather", "Slice", "Concat", "Unsqueeze", "Squeeze", "Cast", "Identity",
    "Add", "Sub", "Mul", "Div", "Floor", "Ceil", "Reshape", "Range", "ConstantOfShape",
})
_MAX_FOLDED_ELEMENTS = 4096  # never materialise a large tensor as a constant


# ------------------------------------------------------------------ export
def check_opset(opset: object) -> int:
    """``opset`` as an int in :data:`OPSETS`, else a one-line :class:`UsageError` (not the exporter's
    failure deep inside torch, with its whole graph printed)."""
    if isinstance(opset, bool) or not isinstance(opset, int) or opset not in OPSETS:
        raise UsageError(f"--opset {opset}: M2Det exports at opsets {OPSETS.start} to {OPSETS[-1]} "
                         f"({OPSETS.start} is the guide's, what CANN's atc takes)")
    return opset


def export_onnx(
    model,
    path: PathLike,
    cfg: M2DetConfig,
    batch: Optional[int] = None,
    opset: int = 11,
) -> Path:
    """Export ``model`` (an M2Det returning ``(scores, loc)``) to ``path``.

    ``batch=None`` gives a dynamic batch axis named ``batch``; an int a static
    one, folded free of ``Shape``/``Gather``/``Unsqueeze``. The file passes
    ``onnx.checker`` and the output contract (:func:`check_output_contract`)
    before it appears at ``path`` (written to a temporary name, then renamed).
    """
    import torch

    if batch is not None and (isinstance(batch, bool) or int(batch) != batch or batch < 1):
        raise UsageError(f"batch must be None (dynamic) or a positive int, got {batch!r}")
    opset = check_opset(opset)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dummy = torch.zeros(batch or 1, 3, cfg.size, cfg.size, dtype=torch.float32)
    kwargs = dict(
        input_names=[INPUT_NAME],
        output_names=list(OUTPUT_NAMES),
        opset_version=int(opset),
        do_constant_folding=True,
    )
    if batch is None:
        kwargs["dynamic_axes"] = {name: {0: "batch"} for name in (INPUT_NAME, *OUTPUT_NAMES)}
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        kwargs["dynamo"] = False  # torch >= 2.5; older releases have only this exporter
    was_training = model.training
    model.eval()
    try:
        with atomic_output(path) as tmp:
            with torch.no_grad(), warnings.catch_warnings():
                # The TorchScript exporter announces its own deprecation; the
                # warning says nothing about this graph.
                warnings.filterwarnings("ignore", category=DeprecationWarning)
                warnings.filterwarnings("ignore", category=FutureWarning)
                torch.onnx.export(model, (dummy,), str(tmp), **kwargs)
            proto = onnx.load(str(tmp))
            if batch is not None:
                proto = fold_static_shapes(proto)
            _declare_output_shapes(proto, cfg)
            _stamp(proto, cfg, batch, torch.__version__)
            check_output_contract(proto, cfg, batch, source=path)
            onnx.save(proto, str(tmp))
            # checked from the file, still under its temporary name: the checker reads it in C++
            # rather than from a second serialisation of 530 MB
            onnx.checker.check_model(str(tmp))
    finally:
        model.train(was_training)
    return path


def _declare_output_shapes(proto: onnx.ModelProto, cfg: M2DetConfig) -> None:
    """State P and C in the output types: the dynamic export leaves them as
    symbols (``Softmaxscores_dim_1``) because they come out of a Reshape whose
    target is computed from the batch; they are fixed by the config."""
    fixed = {"scores": (cfg.num_priors, cfg.num_classes), "loc": (cfg.num_priors, 4)}
    for out in proto.graph.output:
        dims = out.type.tensor_type.shape.dim
        if out.name in fixed and len(dims) == 3:
            for dim, value in zip(dims[1:], fixed[out.name]):
                dim.Clear()
                dim.dim_value = value


def _stamp(proto: onnx.ModelProto, cfg: M2DetConfig, batch: Optional[int], torch_version: str) -> None:
    """Record what the file is, so a backend can check it fits the config."""
    props = {
        "m2det.size": str(cfg.size),
        "m2det.batch": "dynamic" if batch is None else str(batch),
        "m2det.num_classes": str(cfg.num_classes),
        "m2det.num_priors": str(cfg.num_priors),
        "m2det.torch": torch_version,
        "m2det.outputs": ",".join(OUTPUT_NAMES),
    }
    del proto.metadata_props[:]
    for key, value in props.items():
        proto.metadata_props.add(key=key, value=value)
    proto.doc_string = f"M2Det{cfg.size} VGG16 COCO: image -> (scores, loc)"


# ------------------------------------------------------------------ folding
def _static_shapes(proto: onnx.ModelProto) -> Dict[str, List[int]]:
    """Fully known shapes of every value, by ONNX shape inference.

    The inference runs on a skeleton whose initializers are declared as inputs
    without data, so the ~530 MB of weights are not copied.
    """
    graph = proto.graph
    init_inputs = [
        helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in graph.initializer
    ]
    skeleton_graph = helper.make_graph(
        list(graph.node), graph.name, list(graph.input) + init_inputs, list(graph.output)
    )
    skeleton = helper.make_model(skeleton_graph, opset_imports=list(proto.opset_import))
    skeleton.ir_version = proto.ir_version
    inferred = onnx.shape_inference.infer_shapes(skeleton, strict_mode=False, data_prop=True)
    shapes: Dict[str, List[int]] = {}
    g = inferred.graph
    for info in list(g.input) + list(g.value_info) + list(g.output):
        if not info.type.HasField("tensor_type") or not info.type.tensor_type.HasField("shape"):
            continue
        dims = info.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            shapes[info.name] = [int(d.dim_value) for d in dims]
    return shapes


def _evaluate(node: onnx.NodeProto, values: List[np.ndarray], proto: onnx.ModelProto) -> List[np.ndarray]:
    """Run one node on constant inputs with ONNX's reference evaluator, at the
    model's opset (Unsqueeze-11 and Unsqueeze-13 differ, for instance)."""
    from onnx.reference import ReferenceEvaluator

    names = [f"in{i}" for i in range(len(values))]
    inputs = [n if orig else "" for n, orig in zip(names, node.input)]
    outs = [f"out{i}" for i in range(len(node.output))]
    single = helper.make_node(node.op_type, inputs, outs, domain=node.domain)
    single.attribute.extend(node.attribute)
    graph = helper.make_graph(
        [single], "fold",
        [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
         for n, v, orig in zip(names, values, node.input) if orig],
        [helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None) for o in outs],
    )
    model = helper.make_model(graph, opset_imports=list(proto.opset_import))
    feeds = {n: v for n, v, orig in zip(names, values, node.input) if orig}
    return [np.asarray(r) for r in ReferenceEvaluator(model).run(None, feeds)]


def fold_static_shapes(proto: onnx.ModelProto, max_passes: int = 64) -> onnx.ModelProto:
    """Replace shape arithmetic by constants where every shape is known.

    ``Shape`` of a value with a fully static shape becomes a constant; then any
    small bookkeeping node (``Slice``, ``Concat``, ``Gather``, ``Unsqueeze``, ...)
    whose inputs are all constant is evaluated; the nodes left without
    consumers are dropped. ONNX shape inference cannot see through a
    ``Resize`` whose ``sizes`` are computed, so each pass uncovers the shapes
    behind the Resizes it folded; passes repeat until nothing changes (five
    at 512). Works on a copy; the input model is not changed.
    """
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    for _ in range(max_passes):
        before = len(out.graph.node)
        _fold_once(out)
        if len(out.graph.node) == before:
            break
    return out


def _fold_once(out: onnx.ModelProto) -> None:
    """One folding pass, in place."""
    graph = out.graph
    shapes = _static_shapes(out)
    const: Dict[str, np.ndarray] = {
        t.name: numpy_helper.to_array(t) for t in graph.initializer if int(np.prod(t.dims)) <= _MAX_FOLDED_ELEMENTS
    }
    folded_nodes = set()
    for index, node in enumerate(graph.node):
        value = None
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            attr = {a.name: a for a in node.attribute}
            if "value" in attr:
                value = [numpy_helper.to_array(attr["value"].t)]
        elif node.op_type == "Shape" and node.input[0] in shapes and not node.attribute:
            value = [np.asarray(shapes[node.input[0]], dtype=np.int64)]
        elif node.op_type in _FOLDABLE and node.domain in ("", "ai.onnx") and all(
            (not name) or name in const for name in node.input
        ):
            value = _evaluate(node, [const[n] if n else None for n in node.input], out)
            if any(v.size > _MAX_FOLDED_ELEMENTS for v in value):
                value = None
        if value is not None:
            for name, v in zip(node.output, value):
                const[name] = v
            folded_nodes.add(index)
    kept = [n for i, n in enumerate(graph.node) if i not in folded_nodes]
    needed = {name for n in kept for name in n.input} | {o.name for o in graph.output}
    init_names = {t.name for t in graph.initializer}
    new_constants = []
    for index in sorted(folded_nodes):
        node = graph.node[index]
        for name in node.output:
            if name in needed and name not in init_names:
                new_constants.append(helper.make_node(
                    "Constant", [], [name], name=f"{node.name or name}/folded",
                    value=numpy_helper.from_array(np.asarray(const[name]), name=name),
                ))
    del graph.node[:]
    graph.node.extend(new_constants + kept)
    used = {name for n in graph.node for name in n.input}
    unused_inits = [t for t in graph.initializer if t.name not in used]
    for t in unused_inits:
        graph.initializer.remove(t)


# ------------------------------------------------------------------ contract
def _dims(info: onnx.ValueInfoProto) -> List[Union[int, str]]:
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
            for d in info.type.tensor_type.shape.dim]


def check_output_contract(
    model: Union[onnx.ModelProto, PathLike],
    cfg: M2DetConfig,
    batch: Optional[int] = None,
    source: Optional[PathLike] = None,
) -> None:
    """Raise :class:`ModelOutputError` unless the graph is ``image`` [B,3,S,S]
    float32 -> ``scores`` [B,P,C], ``loc`` [B,P,4] float32, in that order, with
    B static (``batch`` an int) or symbolic (``batch=None``)."""
    proto, where = load_graph(model, source)
    g = proto.graph
    init_names = {t.name for t in g.initializer}
    inputs = [i for i in g.input if i.name not in init_names]
    found_in = [(i.name, _dims(i)) for i in inputs]
    found_out = [(o.name, _dims(o)) for o in g.output]
    b: Union[int, str] = batch if batch is not None else "symbolic"
    expect = (f"expected input {INPUT_NAME}[{b},3,{cfg.size},{cfg.size}] and outputs "
              f"scores[{b},{cfg.num_priors},{cfg.num_classes}], loc[{b},{cfg.num_priors},4]")
    problems = []
    if [n for n, _ in found_in] != [INPUT_NAME]:
        problems.append(f"inputs {found_in}")
    if [n for n, _ in found_out] != list(OUTPUT_NAMES):
        problems.append(f"outputs {found_out}")
    if not problems:
        want = {
            INPUT_NAME: [3, cfg.size, cfg.size],
            "scores": [cfg.num_priors, cfg.num_classes],
            "loc": [cfg.num_priors, 4],
        }
        for info in [inputs[0], *g.output]:
            dims = _dims(info)
            lead_ok = dims[:1] == [batch] if batch is not None else (dims[:1] and isinstance(dims[0], str))
            if dims[1:] != want[info.name] or not lead_ok:
                problems.append(f"{info.name} has shape {dims}")
            if info.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
                problems.append(f"{info.name} is not float32")
    if problems:
        raise ModelOutputError(f"{where}: {'; '.join(problems)}; {expect}")


def load_graph(model: Union[onnx.ModelProto, PathLike], source: Optional[PathLike]):
    if isinstance(model, onnx.ModelProto):
        return model, str(source) if source is not None else "<in-memory ONNX model>"
    path = Path(model)
    if not path.is_file():
        raise InputFileError(path, "ONNX file not found")
    try:
        return onnx.load(str(path), load_external_data=False), str(path)
    except Exception as exc:  # noqa: BLE001 - protobuf raises several types
        raise InputFileError(path, f"not a readable ONNX model ({type(exc).__name__}: {exc})") from None
