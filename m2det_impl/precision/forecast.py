"""Forecast the 310P's fp16 drift on a laptop: run the float32 model and its fp16 emulation
(precision.fp16) on the same images and report the drift of each output, each layer and the detections.

Uses the tolerance layer's metrics (m2det_impl.evaluation.metrics.output_metrics)
and names the first layers whose drift crosses the thresholds of Ascend's
model-comparison tools (cosine < 0.99 or relative Euclidean distance > 0.05).
Those names are what atc's --keep_dtype takes.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import onnx
from onnx import helper

from m2det_impl._io import PathLike
from m2det_impl.backends.base import default_threads
from m2det_impl.errors import InputFileError
from m2det_impl.evaluation.agreement import DetectionAgreement, agreement_totals, detection_agreement
from m2det_impl.evaluation.metrics import OutputMetrics, compare_runs, output_metrics, worst_per_output
from m2det_impl.logs import get_logger
from m2det_impl.precision.fp16 import (
    ASCEND_COSINE_MIN,
    ASCEND_REL_L2_MAX,
    CAST_SUFFIXES,
    FLOAT,
    FP16_MAX,
    LAYER_OPS,
    PrecisionPlan,
    emulate_fp16,
    node_consumers,
    original_name,
)

__all__ = [
    "Layer",
    "layer_taps",
    "LayerDrift",
    "Fp16Forecast",
    "forecast_fp16",
    "forecast_fp16_stream",
    "keep_dtype_lines",
]

logger = get_logger(__name__)


@dataclass(frozen=True)
class Layer:
    """One reported layer: a compute node and the tensor that carries its result
    (its ReLU's output when a ReLU is its only reader, as the device fuses them)."""

    index: int
    name: str  # the node name, what atc's --keep_dtype takes
    op_type: str
    tensor: str
    precision: str
    fused: str = ""


def layer_taps(model: onnx.ModelProto, plan: PrecisionPlan) -> List[Layer]:
    """The layers of an (emulated or not) graph, in execution order."""
    nodes = [n for n in model.graph.node if not n.name.endswith(CAST_SUFFIXES)]  # not the inserted casts
    readers = node_consumers(nodes)
    layers: List[Layer] = []
    for node in nodes:
        if node.op_type not in LAYER_OPS or node.name not in plan.precision:
            continue
        tensor = original_name(node.output[0])
        fused = ""
        after = readers.get(tensor, []) + readers.get(f"{tensor}::rounded", [])
        if len(after) == 1 and after[0].op_type == "Relu":
            tensor, fused = original_name(after[0].output[0]), "Relu"
        layers.append(Layer(len(layers), node.name, node.op_type, tensor, plan.precision[node.name], fused))
    return layers


def _with_outputs(model: onnx.ModelProto, names: Sequence[str]) -> bytes:
    """``model`` serialised with ``names`` added as float outputs (the model is
    modified and restored)."""
    existing = {o.name for o in model.graph.output}
    added = [helper.make_tensor_value_info(n, FLOAT, None) for n in names if n not in existing]
    model.graph.output.extend(added)
    try:
        return model.SerializeToString()
    finally:
        for _ in added:
            model.graph.output.pop()


def _session(model_bytes: bytes, threads: Optional[int], optimise: bool = True):
    """An ONNX Runtime CPU session on ``model_bytes``: ``threads`` intra-op threads, else
    ``$M2DET_THREADS`` (:func:`default_threads`, as every backend sizes its pool), else one per core;
    ``optimise=False`` turns every graph optimisation off (no fusion may move a compared value)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if not optimise:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    threads = threads or default_threads()
    if threads:
        options.intra_op_num_threads = int(threads)
    return ort.InferenceSession(model_bytes, sess_options=options, providers=["CPUExecutionProvider"])


# ------------------------------------------------------------------ forecast
@dataclass
class LayerDrift:
    """A layer's drift over the images: the worst value of each metric."""

    layer: Layer
    cosine: float = 1.0
    rel_l2: float = 0.0
    max_abs: float = 0.0
    peak_rel: float = 0.0
    mean_abs: float = 0.0
    overflow: int = 0  # float32 values beyond fp16's range (they become infinite)
    worst_image: str = ""

    def add(self, m: OutputMetrics, overflow: int) -> None:
        if not self.worst_image or m.rel_l2 > self.rel_l2:
            self.worst_image = m.image_id
        self.cosine = min(self.cosine, m.cosine) if np.isfinite(m.cosine) else float("nan")
        self.rel_l2 = max(self.rel_l2, m.rel_l2)
        self.max_abs = max(self.max_abs, m.max_abs)
        self.peak_rel = max(self.peak_rel, m.peak_rel)
        self.mean_abs = max(self.mean_abs, m.mean_abs)
        self.overflow += int(overflow)

    @property
    def over_threshold(self) -> bool:
        return not (self.cosine >= ASCEND_COSINE_MIN) or self.rel_l2 > ASCEND_REL_L2_MAX

    def as_dict(self) -> Dict[str, object]:
        return {**asdict(self.layer), "cosine": self.cosine, "rel_l2": self.rel_l2, "max_abs": self.max_abs,
                "peak_rel": self.peak_rel, "mean_abs": self.mean_abs, "overflow": self.overflow,
                "worst_image": self.worst_image, "over_threshold": self.over_threshold}


@dataclass
class Fp16Forecast:
    """What the emulation predicts for one model, mode and image set."""

    plan: PrecisionPlan
    image_ids: List[str]
    image_sizes: List[Tuple[int, int]]
    outputs: List[OutputMetrics]
    agreements: List[DetectionAgreement]
    layers: List[LayerDrift] = field(default_factory=list)
    reference: Dict[str, np.ndarray] = field(default_factory=dict)  # float32 outputs
    candidate: Dict[str, np.ndarray] = field(default_factory=dict)  # emulated fp16 outputs
    seconds: float = 0.0

    def first_over(self, limit: int = 5) -> List[LayerDrift]:
        """The first ``limit`` layers, in execution order, over Ascend's thresholds."""
        return [d for d in self.layers if d.over_threshold][:limit]

    def worst_outputs(self) -> Dict[str, Dict[str, float]]:
        """Per output: the lowest cosine and the largest other metrics over the
        images (an fp16 overflow shows as NaN cosine and a non-finite count)."""
        return worst_per_output(self.outputs)

    def agreement(self) -> Dict[str, float]:
        return agreement_totals(self.agreements, names=("fp16", "fp32"))

    def as_dict(self, first: int = 5) -> Dict[str, object]:
        return {
            "kind": "fp16-forecast",
            "plan": self.plan.summary(),
            "thresholds": {"cosine_min": ASCEND_COSINE_MIN, "rel_l2_max": ASCEND_REL_L2_MAX},
            "images": self.image_ids,
            "outputs": self.worst_outputs(),
            "outputs_per_image": [asdict(m) for m in self.outputs],
            "detections": self.agreement(),
            "detections_per_image": [{"image_id": a.image_id, "matched": a.matched, "count_fp16": a.count_a,
                                      "count_fp32": a.count_b, "fraction": a.fraction} for a in self.agreements],
            "layers_reported": len(self.layers),
            "layers_over_threshold": sum(d.over_threshold for d in self.layers),
            "first_over_threshold": [d.as_dict() for d in self.first_over(first)],
            "layers": [d.as_dict() for d in self.layers],
            "seconds": self.seconds,
        }


def keep_dtype_lines(names: Iterable[str]) -> str:
    """An ``atc --keep_dtype`` file keeping these nodes (original ONNX node
    names, one per line) in float32."""
    return "".join(f"{name}\n" for name in names)


def forecast_fp16(fp32_model: PathLike, images: np.ndarray, sizes: Sequence[Tuple[int, int]], cfg,
                  mode: str = "force_fp16", keep_fp32: Optional[Sequence[str]] = None, layers: bool = True,
                  image_ids: Optional[Sequence[str]] = None, threads: Optional[int] = None,
                  progress: bool = False) -> Fp16Forecast:
    """Run the float32 model and its fp16 emulation on ``images`` [N,3,S,S]
    (original ``sizes`` [(width, height)]) and measure the drift; the raw
    outputs of both are kept in the result (see :func:`forecast_fp16_stream`)."""
    images = np.asarray(images, dtype=np.float32)
    ids = [str(i) for i in (image_ids if image_ids is not None else range(len(images)))]
    if len(ids) != len(images) or len(sizes) != len(images):
        raise ValueError(f"{len(images)} images, {len(ids)} ids and {len(sizes)} sizes")
    items = ((ids[i], images[i], tuple(sizes[i])) for i in range(len(images)))
    return forecast_fp16_stream(fp32_model, items, cfg, mode, keep_fp32, layers, threads=threads,
                                progress=progress, total=len(images))


def forecast_fp16_stream(fp32_model: PathLike, items: Iterable[Tuple[object, np.ndarray, Tuple[int, int]]], cfg,
                         mode: str = "force_fp16", keep_fp32: Optional[Sequence[str]] = None, layers: bool = True,
                         on_image: Optional[Callable[..., None]] = None, keep_outputs: bool = True,
                         threads: Optional[int] = None, progress: bool = False, total: Optional[int] = None) -> Fp16Forecast:
    """The forecast over ``items`` ``(image_id, tensor [3,S,S], (width, height))``,
    one image at a time: with ``layers`` every layer's tensor is fetched from
    both models (about 1 GB per image at 512), measured and dropped.

    ``on_image(image_id, size, fp16 (scores, loc), fp32 (scores, loc))`` sees
    each image's raw outputs (e.g. :class:`m2det_impl.variants.VariantAccumulator`);
    without ``keep_outputs`` they are not kept, so any number of images fits.
    """
    from tqdm.auto import tqdm

    start = time.perf_counter()
    path = Path(fp32_model)
    if not path.is_file():
        raise InputFileError(path, "ONNX model not found")
    logger.info(f"building the fp16 emulation ({mode}) of {path} ...")
    reference_proto = onnx.load(str(path))
    emulated, plan = emulate_fp16(reference_proto, mode, keep_fp32)
    taps = layer_taps(emulated, plan) if layers else []
    known = {o for n in reference_proto.graph.node for o in n.output}
    taps = [t for t in taps if t.tensor in known]
    names = ["scores", "loc"] + [t.tensor for t in taps if t.tensor not in ("scores", "loc")]
    reference = _session(_with_outputs(reference_proto, names), threads)
    del reference_proto
    candidate = _session(_with_outputs(emulated, names), threads)
    del emulated
    logger.info(f"sessions ready in {time.perf_counter() - start:.1f} s; {len(plan.fp16_nodes)} nodes in fp16, "
        f"{len(plan.fp32_nodes)} in float32, {plan.folded_batchnorms} BatchNormalization folded; "
        f"{len(taps)} layers measured")
    drifts = [LayerDrift(t) for t in taps]
    input_name = reference.get_inputs()[0].name
    ids: List[str] = []
    sizes: List[Tuple[int, int]] = []
    metrics: List[OutputMetrics] = []
    agreements: List[DetectionAgreement] = []
    kept: Dict[str, Dict[str, List[np.ndarray]]] = {"ref": {"scores": [], "loc": []}, "cand": {"scores": [], "loc": []}}
    for image_id, tensor, size in tqdm(items, total=total, unit="img", desc="fp16 forecast", disable=not progress):
        i = len(ids)
        ids.append(str(image_id))
        sizes.append((int(size[0]), int(size[1])))
        feed = {input_name: np.asarray(tensor, dtype=np.float32)[None]}
        ref = dict(zip(names, reference.run(names, feed)))
        cand = dict(zip(names, candidate.run(names, feed)))
        for d in drifts:
            a, b = cand.get(d.layer.tensor), ref.get(d.layer.tensor)
            if a is None or b is None:
                continue
            d.add(output_metrics(a, b, d.layer.name, i, ids[i]), int(np.count_nonzero(np.abs(b) > FP16_MAX)))
        one_a = {"scores": cand["scores"], "loc": cand["loc"]}
        one_b = {"scores": ref["scores"], "loc": ref["loc"]}
        for m in compare_runs(one_a, one_b, [ids[i]]):
            metrics.append(OutputMetrics(**{**asdict(m), "image": i}))
        [agreement] = detection_agreement(one_a, one_b, [sizes[i]], cfg, [ids[i]])
        agreements.append(DetectionAgreement(**{**asdict(agreement), "image": i}))
        if on_image is not None:
            on_image(image_id, sizes[i], (cand["scores"][0], cand["loc"][0]), (ref["scores"][0], ref["loc"][0]))
        if keep_outputs:
            for key in ("scores", "loc"):
                kept["ref"][key].append(ref[key][0])
                kept["cand"][key].append(cand[key][0])
        del ref, cand
    if not ids:
        raise ValueError("no images to forecast on")
    stack = (lambda run: {k: np.stack(v) for k, v in run.items()}) if keep_outputs else (lambda run: {})
    return Fp16Forecast(plan, ids, sizes, metrics, agreements, drifts, stack(kept["ref"]), stack(kept["cand"]),
                        time.perf_counter() - start)
