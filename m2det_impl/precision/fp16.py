"""An fp16-emulating ONNX variant of the float32 export: what atc's precision modes round, rounded.

``atc`` builds ``.om`` models with ``--precision_mode force_fp16`` by default:
every operator that has an fp16 kernel gets fp16 inputs, weights and outputs,
while the Cube unit accumulates its products in float32. Users usually learn
which layers suffer only when the AP drops on the device. This module builds,
from the float32 ONNX export, a graph that rounds exactly what the device
rounds and computes everything else in float32:

- every weight and bias of an fp16 operator is rounded to fp16 once, offline;
- every float input and output of an fp16 operator passes through
  ``Cast(float16) -> Cast(float)``, i.e. is rounded to the nearest fp16 value
  (round half to even; beyond 65504 it becomes infinite, as on the device);
- the arithmetic inside the operator stays float32 (the Cube's fp32
  accumulation; vector units computing in fp16 would drift a little more).

Before rounding, ``BatchNormalization`` nodes that directly follow a
``Conv`` are folded into it, because ``atc`` fuses the pair before it assigns
precisions and then casts the FUSED weights (the exporter already folds all
but the shared ``leach`` module's).

Precision modes (``atc --precision_mode``):

- ``force_fp16`` (atc's default): every float operator in fp16, except the ones
  named in ``keep_fp32`` (what atc's ``--keep_dtype`` file does);
- ``allow_mix_precision``: operators named in ``keep_fp32`` (default
  :data:`DEFAULT_MIX_KEEP_FP32`) stay float32, value-preserving "gray"
  operators (Concat, Reshape, MaxPool, ...) follow their input's precision, the
  rest run in fp16. CANN's real block list is per release and chip (the
  ``precision_reduce`` flags in ``opp/built-in/op_impl/ai_core/tbe/config/
  <soc>/aic-<soc>-ops-info.json``): pass it with ``keep_fp32``;
- ``must_keep_origin_dtype``: nothing is rounded (the forecast is float32
  itself; CANN releases without an fp32 ``Conv2D`` refuse this mode).

:func:`forecast_fp16` runs the float32 model and the emulation on the same
images and reports, with the tolerance layer's metrics
(:func:`m2det_impl.compare.output_metrics`), the drift of each output, of each
layer (each compute node's output, after its ReLU when one follows) and of the
detections, and names the first layers whose drift crosses the thresholds of
Ascend's model-comparison tools (cosine < 0.99 or relative Euclidean distance
> 0.05). Those names are what ``--keep_dtype`` takes.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from m2det_impl._io import PathLike
from m2det_impl.errors import InputFileError, UsageError

__all__ = [
    "PRECISION_MODES",
    "DEFAULT_MIX_KEEP_FP32",
    "ASCEND_COSINE_MIN",
    "ASCEND_REL_L2_MAX",
    "FP16_MAX",
    "round_fp16",
    "PrecisionPlan",
    "plan_precision",
    "fold_conv_batchnorm",
    "emulate_fp16",
]

PRECISION_MODES = ("force_fp16", "allow_mix_precision", "must_keep_origin_dtype")
#: This project's stand-in for CANN's mixed-precision block list, for the ops
#: of this graph whose fp16 form loses most: the softmax (exponentials and a
#: sum over 81 classes) and the Norm layer's BatchNormalization (a per-channel
#: scale over 2048 channels). Not CANN's list: pass the real one as keep_fp32.
DEFAULT_MIX_KEEP_FP32 = ("Softmax", "BatchNormalization")
#: Thresholds of Ascend's accuracy-comparison tools for one tensor.
ASCEND_COSINE_MIN = 0.99
ASCEND_REL_L2_MAX = 0.05
FP16_MAX = float(np.finfo(np.float16).max)  # 65504

# Operators whose output only moves or selects input values: in mixed precision
# they follow their input's precision (CANN's "gray" list behaviour), and their
# outputs are never reported as layers (they are exact copies).
GRAY_OPS = frozenset({"Relu", "MaxPool", "Concat", "Reshape", "Transpose", "Resize", "Flatten", "Squeeze",
                      "Unsqueeze", "Slice", "Identity", "Split", "Pad", "Gather"})
# Compute operators whose outputs are reported as layers.
LAYER_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "BatchNormalization", "Add", "Sub", "Mul",
                       "Div", "Softmax", "Sigmoid", "Exp", "Log", "Pow", "Sqrt", "ReduceMean", "ReduceSum"})
# Inputs that are shapes, scales or indices rather than data, by op type.
NON_DATA_INPUTS = {"Resize": {1, 2, 3}, "Upsample": {1}, "Reshape": {1}, "Slice": {1, 2, 3, 4}, "Pad": {1, 2},
                   "Expand": {1}, "Tile": {1}, "Gather": {1}, "Squeeze": {1}, "Unsqueeze": {1}, "Split": {1}}
FLOAT = TensorProto.FLOAT
_SKIP_OPS = frozenset({"Constant", "Shape", "Size", "ConstantOfShape", "Cast", "Range"})


def round_fp16(x: np.ndarray) -> np.ndarray:
    """``x`` rounded to the nearest float16 value (beyond 65504: infinite, as
    on the device), returned as float32."""
    with np.errstate(over="ignore"):
        return np.asarray(x, dtype=np.float32).astype(np.float16).astype(np.float32)


# ------------------------------------------------------------------ graph facts
def _value_types(model: onnx.ModelProto) -> Dict[str, int]:
    """Element type of every value in the graph, by ONNX shape inference on a
    copy without the weights (a 530 MB model need not be copied for this)."""
    graph = model.graph
    skeleton = helper.make_graph(
        list(graph.node), "types", list(graph.input) + [
            helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in graph.initializer
            if t.name not in {i.name for i in graph.input}],
        list(graph.output))
    probe = helper.make_model(skeleton, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    try:
        inferred = onnx.shape_inference.infer_shapes(probe, strict_mode=False)
    except Exception:  # noqa: BLE001 - fall back to what the file declares
        inferred = probe
    types: Dict[str, int] = {}
    for vi in list(inferred.graph.input) + list(inferred.graph.value_info) + list(inferred.graph.output):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
            types[vi.name] = vi.type.tensor_type.elem_type
    for t in graph.initializer:
        types[t.name] = t.data_type
    return types


def node_consumers(nodes: Iterable[onnx.NodeProto]) -> Dict[str, List[onnx.NodeProto]]:
    out: Dict[str, List[onnx.NodeProto]] = {}
    for node in nodes:
        for name in node.input:
            if name:
                out.setdefault(name, []).append(node)
    return out


def _attr(node: onnx.NodeProto, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


# ------------------------------------------------------------------ BN folding
def fold_conv_batchnorm(model: onnx.ModelProto) -> int:
    """Fold ``BatchNormalization`` nodes into the ``Conv`` they read, in place,
    as ``atc``'s fusion does before it assigns precisions. Returns how many
    BatchNormalization nodes were removed.

    A Conv is folded when every reader of its output is a BatchNormalization
    with the same constant statistics (the exporter merges the reference's
    shared ``leach`` module into one Conv read by eight identical
    BatchNormalizations): the fused Conv then stands for all of them.
    """
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    readers_of = node_consumers(graph.node)
    outputs = {o.name for o in graph.output}
    alias: Dict[str, str] = {}
    drop: List[onnx.NodeProto] = []
    for conv in list(graph.node):
        if conv.op_type != "Conv" or len(conv.input) < 2 or conv.input[1] not in inits:
            continue
        readers = readers_of.get(conv.output[0], [])
        if not readers or any(r.op_type != "BatchNormalization" or len(r.output) != 1 for r in readers):
            continue
        keys = {(tuple(r.input[1:5]), float(_attr(r, "epsilon", 1e-5))) for r in readers}
        if len(keys) != 1 or conv.output[0] in outputs or any(r.output[0] in outputs for r in readers[1:]):
            continue
        (params, eps), = keys
        bias_name = conv.input[2] if len(conv.input) > 2 and conv.input[2] else None
        if any(n not in inits for n in params) or (bias_name is not None and bias_name not in inits):
            continue
        w = numpy_helper.to_array(inits[conv.input[1]]).astype(np.float64)
        b = numpy_helper.to_array(inits[bias_name]).astype(np.float64) if bias_name else np.zeros(w.shape[0])
        gamma, beta, mean, var = (numpy_helper.to_array(inits[n]).astype(np.float64) for n in params)
        scale = gamma / np.sqrt(var + eps)
        tag = f"{conv.name or conv.output[0]}::bnfold"
        graph.initializer.append(numpy_helper.from_array(
            (w * scale.reshape((-1,) + (1,) * (w.ndim - 1))).astype(np.float32), tag + ".w"))
        graph.initializer.append(numpy_helper.from_array(((b - mean) * scale + beta).astype(np.float32), tag + ".b"))
        data = conv.input[0]
        del conv.input[:]
        conv.input.extend([data, tag + ".w", tag + ".b"])
        conv.output[0] = readers[0].output[0]
        for r in readers[1:]:
            alias[r.output[0]] = readers[0].output[0]
        drop.extend(readers)
    for node in drop:
        graph.node.remove(node)
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in alias:
                node.input[i] = alias[name]
    if drop:
        _drop_unused_initializers(model)
    return len(drop)


def _drop_unused_initializers(model: onnx.ModelProto) -> None:
    used = {name for node in model.graph.node for name in node.input}
    used |= {o.name for o in model.graph.output}
    keep = [t for t in model.graph.initializer if t.name in used]
    if len(keep) != len(model.graph.initializer):
        del model.graph.initializer[:]
        model.graph.initializer.extend(keep)


# ------------------------------------------------------------------ the plan
@dataclass(frozen=True)
class PrecisionPlan:
    """Which nodes of a graph run in fp16 under a precision mode."""

    mode: str
    keep_fp32: Tuple[str, ...]
    precision: Dict[str, str]  # node name -> "fp16" | "fp32", float compute nodes only
    op_types: Dict[str, str]  # node name -> op type
    folded_batchnorms: int = 0

    @property
    def fp16_nodes(self) -> List[str]:
        return [n for n, p in self.precision.items() if p == "fp16"]

    @property
    def fp32_nodes(self) -> List[str]:
        return [n for n, p in self.precision.items() if p == "fp32"]

    def summary(self) -> Dict[str, object]:
        by_type: Dict[str, Counter] = {}
        for name, p in self.precision.items():
            by_type.setdefault(p, Counter())[self.op_types[name]] += 1
        return {"mode": self.mode, "keep_fp32": list(self.keep_fp32), "fp16_nodes": len(self.fp16_nodes),
                "fp32_nodes": len(self.fp32_nodes), "folded_batchnorms": self.folded_batchnorms,
                "by_precision": {p: dict(sorted(c.items())) for p, c in sorted(by_type.items())},
                "fp32_node_names": self.fp32_nodes[:50]}


def _node_names(model: onnx.ModelProto) -> None:
    """Give every node a unique name (the exporter does; hand-made graphs may not)."""
    seen = set()
    for i, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{i}"
        seen.add(node.name)


def _check_mode(mode: str) -> None:
    if mode not in PRECISION_MODES:
        raise UsageError(f"unknown precision mode {mode!r}: choose one of {', '.join(PRECISION_MODES)}")


def plan_precision(model: onnx.ModelProto, mode: str = "force_fp16", keep_fp32: Optional[Sequence[str]] = None,
                   types: Optional[Mapping[str, int]] = None) -> PrecisionPlan:
    """Assign fp16 or fp32 to every float compute node of ``model``.

    ``keep_fp32`` names ONNX op types (``Softmax``) or node names
    (``/unet1/layers/layers.0/conv/Conv``); a name that matches nothing is an
    error, so a typo cannot silently forecast the wrong configuration.
    """
    _check_mode(mode)
    types = _value_types(model) if types is None else types
    nodes = list(model.graph.node)
    op_types = {n.name: n.op_type for n in nodes}
    if keep_fp32 is None:  # the default list: only the entries this graph has
        defaults = DEFAULT_MIX_KEEP_FP32 if mode == "allow_mix_precision" else ()
        keep_fp32 = [k for k in defaults if k in set(op_types.values())]
    keep = tuple(dict.fromkeys(str(k) for k in keep_fp32))
    unknown = [k for k in keep if k not in op_types and k not in set(op_types.values())]
    if unknown:
        present = sorted(set(op_types.values()) - _SKIP_OPS)
        raise UsageError(f"keep-fp32 names {unknown} match no op type or node of this graph "
                         f"(op types here: {', '.join(present)}; node names as in the ONNX file, e.g. "
                         f"{next((n.name for n in nodes if n.op_type == 'Conv'), '?')})")
    producer = {o: n for n in nodes for o in n.output}
    precision: Dict[str, str] = {}
    for node in nodes:
        if node.op_type in _SKIP_OPS or not any(types.get(o) == FLOAT for o in node.output):
            continue
        kept = node.name in keep or node.op_type in keep
        if mode == "must_keep_origin_dtype":
            p = "fp32"
        elif mode == "force_fp16":
            p = "fp32" if kept else "fp16"
        elif kept:
            p = "fp32"
        elif node.op_type in GRAY_OPS:
            p = "fp16"
            for i, name in enumerate(node.input):
                if name and types.get(name) == FLOAT and i not in NON_DATA_INPUTS.get(node.op_type, ()):
                    src = producer.get(name)
                    p = precision.get(src.name, "fp16") if src is not None else "fp16"
                    break
        else:
            p = "fp16"
        precision[node.name] = p
    return PrecisionPlan(mode, keep, precision, {n: op_types[n] for n in precision})


# ------------------------------------------------------------------ emulation
CAST_SUFFIXES = ("::to_fp16", "::to_fp32")  # names of the inserted rounding nodes


def original_name(tensor: str) -> str:
    """The float32 graph's name of an emulated node's output (``X::fp32`` is X before rounding)."""
    return tensor[: -len("::fp32")] if tensor.endswith("::fp32") else tensor


def _round_pair(source: str, target: str, tag: str) -> List[onnx.NodeProto]:
    half = f"{target}::fp16"
    return [helper.make_node("Cast", [source], [half], name=f"{tag}::to_fp16", to=TensorProto.FLOAT16),
            helper.make_node("Cast", [half], [target], name=f"{tag}::to_fp32", to=FLOAT)]


def emulate_fp16(model: Union[onnx.ModelProto, PathLike], mode: str = "force_fp16",
                 keep_fp32: Optional[Sequence[str]] = None, fold_batchnorm: bool = True
                 ) -> Tuple[onnx.ModelProto, PrecisionPlan]:
    """The fp16 emulation of a float32 ONNX model (a new ModelProto) and its plan.

    Output and input names are unchanged, so the result runs wherever the
    original does (``OnnxRuntimeBackend`` included) and its intermediate
    values carry the original names, rounded.
    """
    if isinstance(model, (str, Path)):
        path = Path(model)
        if not path.is_file():
            raise InputFileError(path, "ONNX model not found")
        out = onnx.load(str(path))
    else:
        out = onnx.ModelProto()
        out.CopyFrom(model)
    _check_mode(mode)
    _node_names(out)
    folded = fold_conv_batchnorm(out) if fold_batchnorm and mode != "must_keep_origin_dtype" else 0
    types = _value_types(out)
    plan = plan_precision(out, mode, keep_fp32, types)
    plan = PrecisionPlan(plan.mode, plan.keep_fp32, plan.precision, plan.op_types, folded)
    graph = out.graph
    inits = {t.name: t for t in graph.initializer}
    users = node_consumers(graph.node)
    fp16 = {n for n, p in plan.precision.items() if p == "fp16"}
    # values that are already fp16-exact: outputs of fp16 nodes (rounded below)
    rounded = {o for n in graph.node if n.name in fp16 for o in n.output if types.get(o) == FLOAT}
    # weights: rounded in place when only fp16 nodes read them, else copied
    for name, tensor in inits.items():
        if tensor.data_type != FLOAT:
            continue
        readers = [(node, i) for node in users.get(name, []) for i, x in enumerate(node.input) if x == name]
        data_readers = [(node, i) for node, i in readers if i not in NON_DATA_INPUTS.get(node.op_type, ())]
        half_readers = [(node, i) for node, i in data_readers if node.name in fp16]
        if not half_readers:
            continue
        values = round_fp16(numpy_helper.to_array(tensor))
        if len(half_readers) == len(readers):
            tensor.CopyFrom(numpy_helper.from_array(values, name))
        else:
            copy_name = f"{name}::fp16"
            graph.initializer.append(numpy_helper.from_array(values, copy_name))
            for node, i in half_readers:
                node.input[i] = copy_name
        rounded.add(name)
    new_nodes: List[onnx.NodeProto] = []
    input_casts: Dict[str, str] = {}
    for node in list(graph.node):
        if node.name in fp16:
            for i, name in enumerate(node.input):
                if (not name or name in rounded or types.get(name) != FLOAT
                        or i in NON_DATA_INPUTS.get(node.op_type, ())):
                    continue
                if name not in input_casts:
                    input_casts[name] = f"{name}::rounded"
                    new_nodes.extend(_round_pair(name, input_casts[name], f"{name}::in"))
                node.input[i] = input_casts[name]
            renamed = []
            for k, name in enumerate(node.output):
                if types.get(name) == FLOAT:
                    raw = f"{name}::fp32"
                    node.output[k] = raw
                    renamed.append((raw, name))
            new_nodes.append(node)
            for raw, name in renamed:
                new_nodes.extend(_round_pair(raw, name, f"{node.name}::out{name}"))
        else:
            new_nodes.append(node)
    del graph.node[:]
    graph.node.extend(new_nodes)
    out.metadata_props.add(key="m2det.precision_emulation", value=f"{mode}; keep_fp32={','.join(plan.keep_fp32)}")
    return out, plan


# ------------------------------------------------------------------ layers
