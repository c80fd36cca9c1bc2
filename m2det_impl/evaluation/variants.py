"""A precision variant (int8, the fp16 forecast) against float32, in the
figures a deployment decision needs: raw-output drift, detection agreement,
AP change and speed, as JSON and markdown.

Two detection criteria are reported. The tolerance layer's (same class,
IoU >= 0.99, score within 1e-3) says whether two runs are interchangeable; an
fp16 run should pass it, an int8 run does not (its scores move by about
1e-2). The object-level one (same class, IoU >= 0.5, score within 0.05) says
whether the variant still finds the same objects. The AP change on an
annotated set is the figure that decides; with the golden (random) weights it
is computed but says nothing.

Runs are compared image by image and only small results are kept (metrics,
detections), so a variant can be compared over all of minival2014.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from m2det_impl._io import PathLike, is_number, read_json_object, reading_fields
from m2det_impl.errors import InputFileError, UsageError
from m2det_impl.evaluation.agreement import DetectionAgreement, agreement_totals, match_detections
from m2det_impl.evaluation.metrics import OutputMetrics, compare_runs, worst_per_output
from m2det_impl.logs import get_logger

__all__ = [
    "STRICT",
    "OBJECT_LEVEL",
    "VariantComparison",
    "VariantAccumulator",
    "compare_backends",
    "compare_result_folders",
    "comparison_markdown",
    "forecast_markdown",
    "section_markdown",
    "write_comparison",
]

logger = get_logger(__name__)

STRICT = {"iou": 0.99, "score_tol": 1e-3}  # the tolerance layer's match
OBJECT_LEVEL = {"iou": 0.5, "score_tol": 0.05}  # the same objects, scores close


@dataclass
class VariantComparison:
    """A candidate run against a reference run of the same images."""

    candidate: str
    reference: str
    image_ids: List[str]
    outputs: List[OutputMetrics] = field(default_factory=list)
    strict: List[DetectionAgreement] = field(default_factory=list)
    object_level: List[DetectionAgreement] = field(default_factory=list)
    ap: Optional[Dict[str, float]] = None
    seconds_per_image: Dict[str, float] = field(default_factory=dict)
    #: True when both speeds come from one process, alternating image by image
    #: (same machine, same load); two runs made apart are not a paired measurement.
    paired_speed: bool = False
    extra: Dict[str, object] = field(default_factory=dict)

    @property
    def speed_ratio(self) -> Optional[float]:
        """How many times faster the candidate ran (reference s/img / candidate s/img)."""
        if not self.paired_speed:
            return None  # a ratio of two unpaired runs says more about the machine's load than the models
        ref, cand = self.seconds_per_image.get(self.reference), self.seconds_per_image.get(self.candidate)
        return ref / cand if ref and cand else None

    def as_dict(self) -> Dict[str, object]:
        return {
            "kind": "variant-comparison",
            "candidate": self.candidate,
            "reference": self.reference,
            "images": len(self.image_ids),
            "image_ids": self.image_ids,
            "outputs": worst_per_output(self.outputs),
            "outputs_per_image": [asdict(m) for m in self.outputs],
            "detections": {"strict": {**STRICT, **agreement_totals(self.strict)},
                           "object_level": {**OBJECT_LEVEL, **agreement_totals(self.object_level)}},
            "detections_per_image": [
                {"image_id": s.image_id, "count_candidate": s.count_a, "count_reference": s.count_b,
                 "strict": s.fraction, "object_level": o.fraction}
                for s, o in zip(self.strict, self.object_level)],
            "ap": self.ap,
            "seconds_per_image": self.seconds_per_image,
            "speed_ratio": self.speed_ratio,
            "paired_speed": self.paired_speed,
            **self.extra,
        }


class VariantAccumulator:
    """Collects the comparison image by image, keeping only small results."""

    def __init__(self, candidate: str, reference: str, cfg, category_ids: Optional[Sequence[int]] = None):
        from m2det_impl.network.priors import make_priors

        self.cfg = cfg
        self.priors = make_priors(cfg)
        self.category_ids = list(category_ids) if category_ids is not None else list(range(1, cfg.num_classes))
        self.result = VariantComparison(candidate, reference, [])
        self.coco: Dict[str, List[dict]] = {candidate: [], reference: []}
        self.coco_ids: List[int] = []

    def add(self, image_id, size: Tuple[int, int], candidate: Tuple[np.ndarray, np.ndarray],
            reference: Tuple[np.ndarray, np.ndarray]) -> None:
        """One image: ``(scores [P, C], loc [P, 4])`` of each run, original ``size`` (width, height)."""
        from m2det_impl.pipeline.coco import to_coco_results
        from m2det_impl.pipeline.postprocess import detect

        r = self.result
        index = len(r.image_ids)
        r.image_ids.append(str(image_id))
        a = {"scores": candidate[0][None], "loc": candidate[1][None]}
        b = {"scores": reference[0][None], "loc": reference[1][None]}
        for m in compare_runs(a, b, [str(image_id)]):
            r.outputs.append(OutputMetrics(**{**asdict(m), "image": index}))
        dets_a = detect(candidate[0], candidate[1], self.priors, float(size[0]), float(size[1]), self.cfg)
        dets_b = detect(reference[0], reference[1], self.priors, float(size[0]), float(size[1]), self.cfg)
        r.strict.append(match_detections(dets_a, dets_b, image=index, image_id=str(image_id), **STRICT))
        r.object_level.append(match_detections(dets_a, dets_b, image=index, image_id=str(image_id), **OBJECT_LEVEL))
        if isinstance(image_id, (int, np.integer)):
            self.coco_ids.append(int(image_id))
            self.coco[r.candidate].extend(to_coco_results(dets_a, int(image_id), self.category_ids))
            self.coco[r.reference].extend(to_coco_results(dets_b, int(image_id), self.category_ids))

    def finish(self, annotations: Optional[PathLike] = None) -> VariantComparison:
        """The comparison, with the AP of both runs when ``annotations`` are given."""
        r = self.result
        if annotations is not None and self.coco_ids:
            from m2det_impl.pipeline.coco import evaluate

            ap = {name: float(evaluate(annotations, self.coco[name], image_ids=self.coco_ids).ap)
                  for name in (r.reference, r.candidate)}
            r.ap = {"reference": ap[r.reference], "candidate": ap[r.candidate],
                    "change": ap[r.candidate] - ap[r.reference], "images": len(self.coco_ids)}
        return r


def compare_backends(records, cfg, candidate, reference, annotations: Optional[PathLike] = None,
                     category_ids: Optional[Sequence[int]] = None, progress: bool = False,
                     names: Optional[Tuple[str, str]] = None) -> VariantComparison:
    """Run ``candidate`` and ``reference`` backends on every record (one image
    at a time, alternating, so both see the same machine load) and compare."""
    from tqdm.auto import tqdm

    from m2det_impl.pipeline.stream import iter_preprocessed

    cand_name, ref_name = names or (getattr(candidate, "name", "candidate"), getattr(reference, "name", "reference"))
    if cand_name == ref_name:
        cand_name += " (candidate)"
    acc = VariantAccumulator(cand_name, ref_name, cfg, category_ids)
    spent = {cand_name: 0.0, ref_name: 0.0}
    warm = False
    for record, tensor, size, err in tqdm(iter_preprocessed(records, cfg), total=len(records), unit="img",
                                          desc="compare", disable=not progress):
        if err is not None:
            raise InputFileError(None, err)
        batch = tensor[None]
        if not warm:  # first calls set up kernels and buffers: keep them out of the timing
            reference.infer(batch)
            candidate.infer(batch)
            warm = True
        t0 = time.perf_counter()
        ref_scores, ref_loc = reference.infer(batch)
        t1 = time.perf_counter()
        cand_scores, cand_loc = candidate.infer(batch)
        t2 = time.perf_counter()
        spent[ref_name] += t1 - t0
        spent[cand_name] += t2 - t1
        acc.add(record.image_id, size, (cand_scores[0], cand_loc[0]), (ref_scores[0], ref_loc[0]))
    result = acc.finish(annotations)
    n = max(len(result.image_ids), 1)
    result.seconds_per_image = {k: v / n for k, v in spent.items()}
    result.paired_speed = True
    return result


# ------------------------------------------------------------------ run folders
def _results_by_image(path: Path) -> Dict[int, np.ndarray]:
    from m2det_impl.pipeline.coco import load_results

    rows: Dict[int, List[List[float]]] = {}
    for r in load_results(path):
        x, y, w, h = r["bbox"]
        rows.setdefault(int(r["image_id"]), []).append(
            [float(r["category_id"]), x, y, x + w - 1, y + h - 1, float(r["score"])])  # undo the +1 of to_coco_results
    return {k: np.asarray(v, dtype=np.float64) for k, v in rows.items()}


def _summary(folder: Path) -> dict:
    path = folder / "summary.json"
    if not path.is_file():
        return {}
    summary = read_json_object(path, "run summary")
    # the fields compare_result_folders reads, each optional, of the type m2det run writes (checked here, at the
    # file, so a damaged one is named rather than failing inside the comparison)
    with reading_fields(path, "a run summary written by m2det run", "'identity' an object, 'ap' and "
                                                                     "'images_per_second' finite numbers, "
                                                                     "'num_images' a count, 'image_ids' integers"):
        if not isinstance(summary.get("identity", {}), dict):
            raise TypeError(f"'identity' is {type(summary['identity']).__name__}, not an object")
        [int(i) for i in summary.get("image_ids") or []]
        for key in ("ap", "images_per_second", "num_images"):
            if key in summary and not (is_number(summary[key]) and math.isfinite(summary[key])):
                raise TypeError(f"{key!r} is {summary[key]!r}, not a finite number")
    return summary


def compare_result_folders(candidate: PathLike, reference: PathLike) -> VariantComparison:
    """Two ``m2det run`` folders (``results.json``, ``summary.json``) of the same
    images: detection agreement per image and the AP change, without a model."""
    folders = [Path(candidate), Path(reference)]
    for f in folders:
        if not (f / "results.json").is_file():
            raise InputFileError(f, "not an m2det run folder (no results.json)")
    dets = [_results_by_image(f / "results.json") for f in folders]
    sums = [_summary(f) for f in folders]
    names = [str(s.get("identity", {}).get("backend") or f.name) for s, f in zip(sums, folders)]
    if names[0] == names[1]:
        names = [f"{names[0]} ({folders[0].name})", f"{names[1]} ({folders[1].name})"]
    ids_a = set(dets[0]) | {int(i) for i in sums[0].get("image_ids", [])}
    ids_b = set(dets[1]) | {int(i) for i in sums[1].get("image_ids", [])}
    if sums[0].get("num_images") and sums[1].get("num_images") and sums[0]["num_images"] != sums[1]["num_images"]:
        raise UsageError(f"{folders[0]} scored {sums[0]['num_images']} images, {folders[1]} "
                         f"{sums[1]['num_images']}: compare runs of the same images")
    ids = sorted(ids_a | ids_b)
    empty = np.zeros((0, 6))
    result = VariantComparison(names[0], names[1], [str(i) for i in ids])
    for k, i in enumerate(ids):
        a, b = dets[0].get(i, empty), dets[1].get(i, empty)
        result.strict.append(match_detections(a, b, image=k, image_id=str(i), **STRICT))
        result.object_level.append(match_detections(a, b, image=k, image_id=str(i), **OBJECT_LEVEL))
    if "ap" in sums[0] and "ap" in sums[1]:
        result.ap = {"reference": float(sums[1]["ap"]), "candidate": float(sums[0]["ap"]),
                     "change": float(sums[0]["ap"]) - float(sums[1]["ap"]), "images": sums[1].get("num_images")}
    for name, s in zip(names, sums):
        if s.get("images_per_second"):
            result.seconds_per_image[name] = 1.0 / float(s["images_per_second"])
    result.extra["folders"] = {"candidate": str(folders[0]), "reference": str(folders[1])}
    return result


# ------------------------------------------------------------------ markdown
def _output_rows(outputs: Mapping[str, Mapping[str, float]]) -> List[str]:
    rows = ["| output | lowest cosine | largest rel. Euclidean | max abs error | max abs / largest |",
            "|---|---|---|---|---|"]
    for name, w in outputs.items():
        rows.append(f"| {name} | {w['cosine']:.6f} | {w['rel_l2']:.4g} | {w['max_abs']:.4g} | {w['peak_rel']:.4g} |")
    return rows


def comparison_markdown(data: Mapping[str, object], title: Optional[str] = None) -> str:
    """Markdown of :meth:`VariantComparison.as_dict`."""
    lines = [f"## {title or data['candidate']} against {data['reference']} ({data['images']} images)", ""]
    if data.get("outputs"):
        lines += _output_rows(data["outputs"]) + [""]
    det = data["detections"]
    for key, label in (("strict", "interchangeable"), ("object_level", "same objects")):
        d = det[key]
        lines.append(f"- detections, {label} (same class, IoU >= {d['iou']}, score within {d['score_tol']}): "
                     f"**{d['fraction']:.4f}** ({d['matched']} matched of {d['detections_candidate']} / "
                     f"{d['detections_reference']}; lowest image {d['lowest_image_fraction']:.4f})")
    ap = data.get("ap")
    if ap:
        lines.append(f"- AP@[.50:.95] over {ap['images']} images: {data['reference']} {ap['reference']:.4f}, "
                     f"{data['candidate']} {ap['candidate']:.4f}, change **{ap['change'] * 100:+.2f} points**")
    spi = data.get("seconds_per_image") or {}
    if spi:
        speed = ", ".join(f"{k} {v:.3f} s/img" for k, v in spi.items())
        ratio = data.get("speed_ratio")
        if data.get("paired_speed"):
            lines.append(f"- speed (paired: one process, alternating image by image): {speed}"
                         + (f"; **{ratio:.2f}x**" if ratio else ""))
        else:
            lines.append(f"- speed as each run recorded it (two separate runs, not paired: no ratio, since "
                         f"machine load differs between runs): {speed}")
    return "\n".join(lines) + "\n"


def forecast_markdown(data: Mapping[str, object]) -> str:
    """Markdown of an fp16 forecast (``Fp16Forecast.as_dict`` plus its comparison)."""
    plan = data["plan"]
    th = data["thresholds"]
    lines = [f"## fp16 forecast: `{plan['mode']}`" + (f", kept in float32: {', '.join(plan['keep_fp32'])}"
                                                     if plan["keep_fp32"] else ""), "",
             f"{plan['fp16_nodes']} nodes in fp16, {plan['fp32_nodes']} in float32 "
             f"({plan['folded_batchnorms']} BatchNormalization folded into their Conv first), "
             f"{len(data['images'])} images.", ""]
    lines += _output_rows(data["outputs"]) + [""]
    det = data["detections"]
    lines.append(f"- detections, interchangeable (same class, IoU >= 0.99, score within 1e-3): "
                 f"**{det['fraction']:.4f}** ({det['matched']} matched of {det['detections_fp16']} / "
                 f"{det['detections_fp32']})")
    comparison = data.get("comparison")
    if comparison:
        ol = comparison["detections"]["object_level"]
        lines.append(f"- detections, same objects (IoU >= 0.5, score within 0.05): **{ol['fraction']:.4f}**")
        if comparison.get("ap"):
            ap = comparison["ap"]
            lines.append(f"- AP@[.50:.95] over {ap['images']} images: float32 {ap['reference']:.4f}, "
                         f"fp16 forecast {ap['candidate']:.4f}, change **{ap['change'] * 100:+.2f} points**")
    if data["layers_reported"]:
        lines += ["", f"Layers measured: {data['layers_reported']}; over Ascend's comparison thresholds "
                      f"(cosine < {th['cosine_min']} or relative Euclidean distance > {th['rel_l2_max']}): "
                      f"**{data['layers_over_threshold']}**.", ""]
    else:  # --no-layers: a count of 0 over thresholds would claim a check that was not made
        lines += ["", "Layers: not measured (--no-layers); no layer was held to Ascend's comparison thresholds.", ""]
    first = data.get("first_over_threshold") or []
    if first:
        lines += ["First layers over the thresholds (execution order; keep them in float32 with atc "
                  "`--keep_dtype keep_dtype.cfg`, or forecast that with `--keep-fp32 NAME`):", "",
                  "| # | layer | op | cosine | rel. Euclidean | max abs | fp16 overflows |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {d['index']} | `{d['name']}` | {d['op_type']}{'+' + d['fused'] if d['fused'] else ''} | "
                  f"{d['cosine']:.6f} | {d['rel_l2']:.4g} | {d['max_abs']:.4g} | {d['overflow']} |" for d in first]
    elif data["layers_reported"]:
        worst = min(data["layers"], key=lambda d: d["cosine"] if d["cosine"] == d["cosine"] else -1)
        lines.append(f"No layer crosses them; the lowest cosine is {worst['cosine']:.6f} at `{worst['name']}` "
                     f"(relative Euclidean distance {worst['rel_l2']:.4g}).")
    return "\n".join(lines) + "\n"


def section_markdown(data: Mapping[str, object]) -> str:
    """The markdown section of a ``compare.json`` written by ``m2det compare``."""
    kind = data.get("kind")
    if kind == "fp16-forecast":
        return forecast_markdown(data)
    if kind in ("variant-comparison", "int8"):
        return comparison_markdown(data)
    raise UsageError(f"not a comparison written by m2det compare (kind {kind!r})")


def write_comparison(out: PathLike, data: Mapping[str, object]
                     ) -> List[Path]:
    """``compare.json`` and ``compare.md`` in folder ``out``."""
    from m2det_impl._io import atomic_write_json, atomic_write_text

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [atomic_write_json(out / "compare.json", dict(data), indent=1),
             atomic_write_text(out / "compare.md", "# m2det compare\n\n" + section_markdown(data))]
    logger.info("-> " + ", ".join(str(p) for p in paths))
    return paths
