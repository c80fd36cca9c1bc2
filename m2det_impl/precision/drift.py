"""Where a 310P deployment drifts, layer by layer: the device's dump against ONNX Runtime, bounded by the fp16 forecast.

Why: when an ``.om``'s outputs fail their tolerance, the porting engineer's
next question is *where*. The device answers in its dump (one file per
executed op, ``backends.ascend.dump_format``); this module

1. **aligns** each dumped output with the ONNX output it stands for: the
   header's ``original_op`` (name, output index), else the ``atc --json``
   fusion map (``backends.ascend.om_json``). Outputs that match nothing are
   listed with the reason, never dropped;
2. runs the **golden**: the same ONNX file in ONNX Runtime on the CPU with
   graph optimisations off (``ORT_DISABLE_ALL``: no fusion may move a value
   the dump is compared with), every needed value exposed, on the same input;
3. runs the **forecast**: the project's fp16 emulation (``precision.fp16``) on
   the same input, which says how far fp16 arithmetic alone moves each of
   those values;
4. **measures** each dumped value against the golden with the tolerance
   layer's metrics (``evaluation.metrics.output_metrics``) and holds its
   relative Euclidean distance to ``max(floor, margin x forecast)``
   (``data/drift_bounds.json``): clean fp16 drift passes, a fault several
   times fp16's own does not;
5. names the **first divergent** node in graph order: faults propagate, so
   the first node out of bounds is where to look, not the worst one.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import onnx

from m2det_impl._io import PathLike
from m2det_impl.errors import InputFileError
from m2det_impl.evaluation.metrics import output_metrics
from m2det_impl.evaluation.tolerances import Bound
from m2det_impl.precision.forecast import _session, _with_outputs
from m2det_impl.precision.fp16 import emulate_fp16
from m2det_impl.resources import data_path

__all__ = [
    "DRIFT_BOUNDS_FILE",
    "DriftBounds",
    "Match",
    "Unmatched",
    "align",
    "Reference",
    "model_input",
    "read_input",
    "reference_run",
    "NodeDrift",
    "DriftReport",
    "measure_drift",
    "drift_markdown",
    "drift_png",
]

logger = logging.getLogger(__name__)

DRIFT_BOUNDS_FILE = data_path("drift_bounds.json")


# ------------------------------------------------------------------ bounds
@dataclass(frozen=True)
class DriftBounds:
    """``rel_l2 <= max(floor, margin * forecast rel_l2)``, with the reasons from the data file."""

    margin: float
    floor: float
    margin_reason: str = ""
    floor_reason: str = ""

    @classmethod
    def load(cls, path: PathLike = DRIFT_BOUNDS_FILE) -> "DriftBounds":
        from m2det_impl._io import read_json_object

        data = read_json_object(path, "drift bounds file")
        try:
            margin, floor = data["rel_l2_margin"], data["rel_l2_floor"]
            bounds = cls(float(margin["value"]), float(floor["value"]), str(margin.get("reason", "")),
                         str(floor.get("reason", "")))
        except (KeyError, TypeError, ValueError):
            raise InputFileError(path, "needs rel_l2_margin and rel_l2_floor, each {value, reason}") from None
        if not (bounds.margin >= 1.0 and bounds.floor > 0.0):
            raise InputFileError(path, f"rel_l2_margin must be >= 1 and rel_l2_floor > 0, got {bounds.margin} "
                                       f"and {bounds.floor}")
        return bounds

    def bound(self, forecast_rel_l2: Optional[float]) -> Bound:
        """The bound of one node, given its forecast drift (None: no forecast, the floor alone)."""
        if forecast_rel_l2 is None or not np.isfinite(forecast_rel_l2):
            return Bound("rel_l2", "max", self.floor, "no fp16 forecast for this value: the floor")
        value = max(self.floor, self.margin * float(forecast_rel_l2))
        why = "floor" if value == self.floor else f"{self.margin:g} x forecast {forecast_rel_l2:.3g}"
        return Bound("rel_l2", "max", value, why)


def implied_cosine_min(rel_l2_max: float) -> float:
    """The lowest cosine a value within ``rel_l2_max`` of the golden can have: ``sqrt(1 - b^2)``."""
    return float(np.sqrt(max(0.0, 1.0 - rel_l2_max ** 2)))


# ------------------------------------------------------------------ alignment
@dataclass(frozen=True)
class Match:
    """A dumped output and the ONNX value it stands for."""

    tensor: str  # the ONNX value name
    node: str  # its producer
    node_index: int  # position of the producer in the ONNX graph (graph order = execution order)
    op_type: str  # the producer's ONNX op type
    dump_op: str  # the device op's name
    dump: Any  # a dumped tensor of the device runtime (backends.ascend.dump_format.DumpTensor)
    how: str  # "original_op" or "om-json"


@dataclass(frozen=True)
class Unmatched:
    """A dumped output with no ONNX counterpart, and why."""

    op_name: str
    op_type: str
    output: int
    file: str
    reason: str

    def as_dict(self) -> Dict[str, object]:
        return {"op": self.op_name, "op_type": self.op_type, "output": self.output, "file": self.file,
                "reason": self.reason}


def _graph_index(model: onnx.ModelProto) -> Tuple[Dict[str, Tuple[int, onnx.NodeProto]], Dict[str, Tuple[int, onnx.NodeProto]]]:
    """Nodes by name and by each value they produce, with their graph position."""
    by_name, by_value = {}, {}
    for i, node in enumerate(model.graph.node):
        if node.name:
            by_name[node.name] = (i, node)
        for out in node.output:
            if out:
                by_value[out] = (i, node)
    return by_name, by_value


def align(dumps: Sequence[Any], model: onnx.ModelProto,
          fusion: Optional[Mapping[str, Any]] = None) -> Tuple[List[Match], List[Unmatched]]:
    """Match every dumped output to an ONNX value; returns the matches in graph order and the rest.

    A value claimed by two dumped outputs is kept for the first in execution
    order (the op that computed it; a later copy is a layout change) and the
    second is listed as unmatched, so nothing disappears from the report.
    """
    by_name, by_value = _graph_index(model)
    graph_outputs = set(by_value)
    matches: Dict[str, Match] = {}
    unmatched: List[Unmatched] = []

    def node_output(name: str, index: int) -> Optional[Tuple[int, onnx.NodeProto, str]]:
        if name in by_name:
            i, node = by_name[name]
            if 0 <= index < len(node.output) and node.output[index]:
                return i, node, node.output[index]
            return None
        if name in graph_outputs and index == 0:  # a converter that names values, not nodes
            i, node = by_value[name]
            return i, node, name
        return None

    for dump in dumps:
        fused = (fusion or {}).get(dump.op_name)
        for out in dump.outputs:
            found, how, reason = None, "", ""
            if out.original_name:
                found, how = node_output(out.original_name, out.original_index), "original_op"
                if found is None:
                    reason = (f"original_op {out.original_name}:{out.original_index} is no node output of the "
                              "ONNX model")
            if found is None and fused is not None:
                origin = fused.outputs[out.index] if out.index < len(fused.outputs) else ("", 0)
                if origin[0]:
                    found, how = node_output(*origin), "om-json"
                elif fused.original_names and len(dump.outputs) == 1:
                    # the fused op's result is that of its last ONNX node in graph order
                    known = [by_name[n] for n in fused.original_names if n in by_name]
                    if known:
                        i, node = max(known, key=lambda item: item[0])
                        found, how = (i, node, node.output[0]), "om-json"
                if found is None:
                    reason = (reason + "; " if reason else "") + (
                        f"the atc JSON maps it to {origin[0] or list(fused.original_names) or 'nothing'}, "
                        "which is not in the ONNX model")
            if found is None and not out.original_name and fused is None:
                # an op's own name is no guide: a fused op keeps its FIRST node's name but holds its LAST
                # node's result (Conv + ReLU), so matching by name would compare the wrong value
                reason = "no original_op in the header and " + (
                    "the atc JSON has no op of that name" if fusion else "no --om-json fusion map given")
            if found is None:
                unmatched.append(Unmatched(dump.op_name, dump.op_type, out.index, dump.path.name, reason))
                continue
            index, node, tensor = found
            if tensor in matches:
                first = matches[tensor]
                unmatched.append(Unmatched(dump.op_name, dump.op_type, out.index, dump.path.name,
                                           f"{tensor} is already compared from op {first.dump_op} "
                                           f"({first.dump.path.name})"))
                continue
            matches[tensor] = Match(tensor, node.name, index, node.op_type, dump.op_name, out, how)
    ordered = sorted(matches.values(), key=lambda m: (m.node_index, m.tensor))
    return ordered, unmatched


# ------------------------------------------------------------------ golden and forecast
def model_input(model: onnx.ModelProto) -> Tuple[str, Tuple[int, ...]]:
    """The model's one data input (not an initializer) and its shape, a dynamic batch read as 1."""
    inits = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise ValueError(f"the model has {len(inputs)} data inputs; m2det drift takes models with one")
    dims = inputs[0].type.tensor_type.shape.dim
    shape = tuple(int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else (1 if k == 0 else -1)
                  for k, d in enumerate(dims))
    return inputs[0].name, shape


def read_input(path: PathLike, shape: Sequence[int]) -> np.ndarray:
    """A raw float32 ``.bin`` (as ``m2det preprocess`` writes it) of the model's input shape."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(path, "input .bin file not found")
    if any(d < 1 for d in shape):
        raise InputFileError(path, f"the ONNX model's input shape {list(shape)} is not static; export with a "
                                   "static size")
    expected = int(np.prod(shape)) * 4
    actual = path.stat().st_size
    if actual != expected:
        raise InputFileError(path, f"wrong .bin size: {actual} bytes, expected {expected} (float32 "
                                   f"{'x'.join(map(str, shape))}, the ONNX model's input)")
    return np.fromfile(path, dtype="<f4").reshape(shape)


@dataclass
class Reference:
    """What the dump is held to, per ONNX value: the float32 golden and the fp16 forecast of it."""

    golden: Dict[str, np.ndarray]
    forecast: Dict[str, np.ndarray] = field(default_factory=dict)
    mode: str = "force_fp16"
    seconds: float = 0.0


def _run(model_bytes: bytes, feed: Dict[str, np.ndarray], names: Sequence[str], optimise: bool,
         threads: Optional[int]) -> Dict[str, np.ndarray]:
    session = _session(model_bytes, threads, optimise)
    return dict(zip(names, session.run(list(names), feed)))


def _forecast_source(tensor: str, produced: set, readers: Mapping[str, List[onnx.NodeProto]]) -> Optional[str]:
    """The emulation's value standing for ``tensor``: itself, or, where the emulation folded its
    producer away (Conv + BatchNormalization, as atc does), the value that replaced it."""
    seen = 0
    while tensor not in produced and seen < 4:
        after = readers.get(tensor, [])
        if not after or not after[0].output:
            return None
        tensor, seen = after[0].output[0], seen + 1
    return tensor if tensor in produced else None


def reference_run(model: onnx.ModelProto, image: np.ndarray, tensors: Sequence[str], mode: str = "force_fp16",
                  forecast: bool = True, threads: Optional[int] = None) -> Reference:
    """The golden (ONNX Runtime, optimisations off) and, with ``forecast``, the fp16 emulation's
    values of ``tensors`` on ``image`` (one forward pass each)."""
    start = time.perf_counter()
    input_name, _ = model_input(model)
    feed = {input_name: np.ascontiguousarray(image, dtype=np.float32)}
    names = list(dict.fromkeys(tensors))
    golden = _run(_with_outputs(model, names), feed, names, optimise=False, threads=threads)
    logger.info("golden run: %d values in %.1f s", len(names), time.perf_counter() - start)
    predicted: Dict[str, np.ndarray] = {}
    if forecast:
        emulated, _plan = emulate_fp16(model, mode)
        produced = {o for n in emulated.graph.node for o in n.output}
        readers: Dict[str, List[onnx.NodeProto]] = {}
        for node in model.graph.node:
            for name in node.input:
                readers.setdefault(name, []).append(node)
        sources = {t: _forecast_source(t, produced, readers) for t in names}
        wanted = sorted({s for s in sources.values() if s})
        values = _run(_with_outputs(emulated, wanted), feed, wanted, optimise=True, threads=threads)
        del emulated
        predicted = {t: values[s] for t, s in sources.items() if s and values[s].shape == golden[t].shape}
        logger.info("fp16 forecast (%s): %d values", mode, len(predicted))
    return Reference(golden, predicted, mode, time.perf_counter() - start)


# ------------------------------------------------------------------ measuring
@dataclass(frozen=True)
class NodeDrift:
    """One compared node: the device against the golden, and the bound it was held to."""

    depth: int  # the producer's position in the ONNX graph
    match: Match
    cosine: float
    max_abs: float
    max_rel: float
    rel_l2: float
    nonfinite: int
    forecast_rel_l2: Optional[float]
    forecast_cosine: Optional[float]
    bound: Bound

    @property
    def passed(self) -> bool:
        return self.nonfinite == 0 and self.bound.passes(self.rel_l2)

    def as_dict(self) -> Dict[str, object]:
        m, d = self.match, self.match.dump
        return {"node": m.node, "op_type": m.op_type, "tensor": m.tensor, "depth": self.depth,
                "dump_op": m.dump_op, "dump_file": d.path.name, "dump_output": d.index, "aligned_by": m.how,
                "format": d.format_name, "data_type": d.data_type_name,
                "cosine": _finite(self.cosine), "max_abs": _finite(self.max_abs), "max_rel": _finite(self.max_rel),
                "rel_l2": _finite(self.rel_l2), "nonfinite": self.nonfinite,
                "forecast": {"rel_l2": _finite(self.forecast_rel_l2), "cosine": _finite(self.forecast_cosine)},
                "bound": {"metric": "rel_l2", "max": self.bound.value, "why": self.bound.reason,
                          "implied_cosine_min": implied_cosine_min(self.bound.value)},
                "passed": self.passed}


def _finite(value: Optional[float]) -> Optional[object]:
    """JSON has no NaN or infinity: say so in words."""
    if value is None:
        return None
    value = float(value)
    if np.isnan(value):
        return "nan"
    if np.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value


@dataclass
class DriftReport:
    """Every compared node in graph order, the first out of bounds, and what could not be compared."""

    nodes: List[NodeDrift]
    unmatched: List[Unmatched]
    bounds: DriftBounds
    mode: str = "force_fp16"
    sources: Dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def first_divergent(self) -> Optional[NodeDrift]:
        return next((n for n in self.nodes if not n.passed), None)

    @property
    def passed(self) -> bool:
        return bool(self.nodes) and self.first_divergent is None

    def as_dict(self) -> Dict[str, object]:
        first = self.first_divergent
        return {
            "kind": "drift",
            **self.sources,
            "precision_mode": self.mode,
            "bounds": {"rule": "rel_l2 <= max(rel_l2_floor, rel_l2_margin * forecast rel_l2)",
                       "rel_l2_margin": self.bounds.margin, "rel_l2_floor": self.bounds.floor,
                       "margin_reason": self.bounds.margin_reason, "floor_reason": self.bounds.floor_reason},
            "compared": len(self.nodes),
            "out_of_bounds": sum(not n.passed for n in self.nodes),
            "first_divergent": None if first is None else {"node": first.match.node, "tensor": first.match.tensor,
                                                           "depth": first.depth, "dump_op": first.match.dump_op},
            "nodes": [n.as_dict() for n in self.nodes],
            "unmatched": [u.as_dict() for u in self.unmatched],
            "seconds": self.seconds,
        }


def measure_drift(matches: Sequence[Match], reference: Reference, unmatched: Sequence[Unmatched] = (),
                  bounds: Optional[DriftBounds] = None) -> DriftReport:
    """Convert each matched dump to NCHW and hold it to its bound, in graph order."""
    bounds = bounds or DriftBounds.load()
    nodes: List[NodeDrift] = []
    for match in sorted(matches, key=lambda m: (m.node_index, m.tensor)):
        golden = reference.golden.get(match.tensor)
        if golden is None:
            raise ValueError(f"the reference run has no value {match.tensor!r}")
        device = match.dump.to_nchw(golden.shape)
        if device.shape != golden.shape:
            raise InputFileError(match.dump.path, f"{match.dump.where}: shape {list(device.shape)} after conversion, "
                                                  f"the ONNX value {match.tensor} has {list(golden.shape)}")
        m = output_metrics(device, golden, match.node)
        predicted = reference.forecast.get(match.tensor)
        f = output_metrics(predicted, golden, match.node) if predicted is not None else None
        nodes.append(NodeDrift(match.node_index, match, m.cosine, m.max_abs, m.max_rel, m.rel_l2, m.nonfinite,
                               f.rel_l2 if f else None, f.cosine if f else None,
                               bounds.bound(f.rel_l2 if f else None)))
    return DriftReport(nodes, list(unmatched), bounds, reference.mode)


# ------------------------------------------------------------------ rendering
def _g(value: Optional[float], digits: int = 6) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}g}" if np.isfinite(value) else str(value)


def drift_markdown(report: DriftReport, png: Optional[str] = None) -> str:
    """The drift table for people: one row per compared node, graph order."""
    first = report.first_divergent
    lines = ["# Layer drift: device dump against ONNX Runtime float32", ""]
    if first is None:
        lines.append(f"All {len(report.nodes)} compared nodes within their bounds.")
    else:
        lines.append(f"**First divergent node: `{first.match.node}`** (depth {first.depth}, dumped as "
                     f"`{first.match.dump_op}`): rel_l2 {_g(first.rel_l2, 4)} > bound {_g(first.bound.value, 4)}. "
                     f"{sum(not n.passed for n in report.nodes)} of {len(report.nodes)} nodes out of bounds.")
    lines += ["", f"Bound per node: rel_l2 <= max({report.bounds.floor:g}, {report.bounds.margin:g} x the fp16 "
                  f"forecast's rel_l2) ({report.mode} emulation on the same input).", ""]
    lines += ["| depth | node | op | dumped as | layout | cosine | max abs | max rel | rel_l2 | bound | forecast rel_l2 | |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for n in report.nodes:
        d = n.match.dump
        layout = f"{d.format_name} {d.data_type_name}".replace("FORMAT_", "").replace("DT_", "")
        lines.append(f"| {n.depth} | `{n.match.node}` | {n.match.op_type} | `{n.match.dump_op}` | {layout} | "
                     f"{_g(n.cosine, 7)} | {_g(n.max_abs, 4)} | {_g(n.max_rel, 4)} | {_g(n.rel_l2, 4)} | "
                     f"{_g(n.bound.value, 4)} | {_g(n.forecast_rel_l2, 4)} | {'ok' if n.passed else '**OUT**'} |")
    if report.unmatched:
        lines += ["", f"## Dumped outputs with no ONNX counterpart ({len(report.unmatched)})", "",
                  "| op | type | output | file | why |", "|---|---|---|---|---|"]
        lines += [f"| `{u.op_name}` | {u.op_type} | {u.output} | `{u.file}` | {u.reason} |" for u in report.unmatched]
    if png:
        lines += ["", f"![cosine by layer depth]({png})"]
    return "\n".join(lines) + "\n"


def drift_png(report: DriftReport, width: int = 900, height: int = 420) -> bytes:
    """Cosine by layer depth (the ONNX node's position): device points, the cosine each bound
    implies as a grey line, the first divergent node ringed in red. Drawn with OpenCV, as the
    run report's picture is (no plotting library is a dependency)."""
    import cv2

    canvas = np.full((height, width, 3), 255, np.uint8)
    left, right, top, bottom = 70, 20, 30, 45
    nodes = report.nodes
    font = cv2.FONT_HERSHEY_SIMPLEX
    cv2.putText(canvas, "cosine to ONNX Runtime float32 by layer depth", (left, 20), font, 0.5, (0, 0, 0), 1,
                cv2.LINE_AA)
    if not nodes:
        ok, encoded = cv2.imencode(".png", canvas)
        return encoded.tobytes()
    cosines = np.array([n.cosine if np.isfinite(n.cosine) else 0.0 for n in nodes])
    limits = np.array([implied_cosine_min(n.bound.value) for n in nodes])
    depths = np.array([n.depth for n in nodes], dtype=np.float64)
    low = float(min(cosines.min(), limits.min()))
    low = max(-1.0, 1.0 - (1.0 - low) * 1.1) if low < 1.0 else 0.999
    x0, x1 = float(depths.min()), float(max(depths.max(), depths.min() + 1))

    def xy(depth: float, cos: float) -> Tuple[int, int]:
        x = left + (depth - x0) / (x1 - x0) * (width - left - right)
        y = top + (1.0 - min(1.0, max(low, cos))) / (1.0 - low) * (height - top - bottom)
        return int(round(x)), int(round(y))

    cv2.rectangle(canvas, (left, top), (width - right, height - bottom), (0, 0, 0), 1)
    for k in range(5):
        value = 1.0 - k * (1.0 - low) / 4
        _, y = xy(x0, value)
        cv2.line(canvas, (left - 4, y), (left, y), (0, 0, 0), 1)
        cv2.putText(canvas, f"{value:.5f}", (2, y + 4), font, 0.38, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(canvas, f"depth (ONNX node index) {x0:.0f} .. {x1:.0f}", (left, height - 15), font, 0.45,
                (0, 0, 0), 1, cv2.LINE_AA)
    bound_points = np.array([xy(d, c) for d, c in zip(depths, limits)], np.int32)
    cv2.polylines(canvas, [bound_points.reshape(-1, 1, 2)], False, (160, 160, 160), 1, cv2.LINE_AA)
    points = [xy(d, c) for d, c in zip(depths, cosines)]
    cv2.polylines(canvas, [np.array(points, np.int32).reshape(-1, 1, 2)], False, (200, 120, 40), 1, cv2.LINE_AA)
    for n, p in zip(nodes, points):
        cv2.circle(canvas, p, 3, (200, 120, 40) if n.passed else (0, 0, 220), -1, cv2.LINE_AA)
    first = report.first_divergent
    if first is not None:
        p = points[nodes.index(first)]
        cv2.circle(canvas, p, 9, (0, 0, 220), 2, cv2.LINE_AA)
        cv2.putText(canvas, f"first divergent: {first.match.node}"[:70], (left + 6, top + 16), font, 0.45,
                    (0, 0, 220), 1, cv2.LINE_AA)
    ok, encoded = cv2.imencode(".png", canvas)
    if not ok:  # pragma: no cover - OpenCV encodes any uint8 image
        raise RuntimeError("OpenCV could not encode the drift plot")
    return encoded.tobytes()


def dumped_values(dumps: Iterable[Any]) -> int:
    """How many outputs the dumps hold (compared or not)."""
    return sum(len(d.outputs) for d in dumps)
