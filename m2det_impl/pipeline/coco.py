"""COCO results and scoring (reference section 8), on top of pycocotools.

pycocotools is what the published 37.8% was measured with, so it stays the
scorer; this module only removes its sharp edges: it names the file when an
annotation or results file is missing or malformed, scores an empty result
list as AP 0 instead of crashing in ``loadRes([])``, does not mutate the
caller's result dicts (``loadRes`` adds keys to them), and captures the
summary table that pycocotools prints so that callers can log or show it.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from m2det_impl._io import PathLike, atomic_write_json, is_int, read_json
from m2det_impl.errors import InputFileError, UsageError
from m2det_impl.logs import RESULT, get_logger

if TYPE_CHECKING:  # imported where used: this module imports without pycocotools
    from pycocotools.coco import COCO

__all__ = [
    "STAT_NAMES",
    "CocoSummary",
    "load_annotations",
    "category_ids",
    "to_coco_results",
    "write_results",
    "load_results",
    "evaluate",
]

logger = get_logger(__name__)


#: The 12 numbers of ``COCOeval.summarize()`` for bounding boxes, in order.
STAT_NAMES: Tuple[str, ...] = (
    "AP",  # IoU .50:.95, area all, maxDets 100 -- the headline number
    "AP50",
    "AP75",
    "AP_small",
    "AP_medium",
    "AP_large",
    "AR1",
    "AR10",
    "AR100",
    "AR_small",
    "AR_medium",
    "AR_large",
)


@dataclass(frozen=True)
class CocoSummary:
    """What ``COCOeval.summarize()`` produced: the 12 stats, their names and the
    printed table. ``ap`` is ``stats[0]`` (AP@[.50:.95], all areas, 100 dets).
    A stat of -1 means "no ground truth in that category/area" (pycocotools)."""

    stats: Tuple[float, ...]
    text: str
    num_images: int
    num_detections: int
    names: Tuple[str, ...] = field(default=STAT_NAMES)

    @property
    def ap(self) -> float:
        return self.stats[0]

    def as_dict(self) -> Dict[str, float]:
        """``{"AP": ..., "AP50": ..., ...}``."""
        return dict(zip(self.names, self.stats))


# ------------------------------------------------------------------ files
def _quiet_coco(dataset: Dict[str, Any]) -> "COCO":
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def load_annotations(path: PathLike) -> "COCO":
    """A pycocotools ``COCO`` for an instances file (``instances_minival2014.json``).

    Raises :class:`~m2det_impl.errors.InputFileError` naming the file when it
    is missing, not JSON, or not a COCO instances dict. pycocotools' own
    progress prints are suppressed.
    """
    data = read_json(path, "annotation file")
    needed = ("images", "annotations", "categories")
    missing = [k for k in needed if not isinstance(data, dict) or k not in data]
    if missing:
        raise InputFileError(
            path, f"not a COCO instances file: missing {', '.join(repr(k) for k in missing)}"
        )
    problem = _instances_problem(data)
    if problem:
        raise InputFileError(path, f"malformed COCO annotations: {problem}")
    try:
        return _quiet_coco(data)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise InputFileError(path, f"malformed COCO annotations ({exc!r})") from exc


def _is_number(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, int) and not isinstance(value, bool)


def _is_box(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 4 and all(_is_number(v) for v in value)


def _unique_ids_problem(entries: Sequence[Any], key: str, what: str) -> Optional[str]:
    """Every entry of ``data[key]`` is an object with an integer 'id', no id twice."""
    seen: set = set()
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not is_int(entry.get("id")):
            return f"{key}[{i}] has no integer 'id'"
        if entry["id"] in seen:
            return f"{key}[{i}]: {what} id {entry['id']} appears twice"
        seen.add(entry["id"])
    return None


def _instances_problem(data: Dict[str, Any]) -> Optional[str]:
    """What pycocotools' bbox evaluation would trip over, in words, or None.

    pycocotools checks nothing and fails deep inside (a KeyError on 'area', a
    TypeError sorting mixed ids), so the fields it uses are checked here.
    """
    for key in ("images", "annotations", "categories"):
        if not isinstance(data[key], list):
            return f"'{key}' is not a list"
    for key, what in (("images", "image"), ("categories", "category")):
        problem = _unique_ids_problem(data[key], key, what)
        if problem:
            return problem
    ann_ids: set = set()
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict):
            return f"annotations[{i}] is not an object"
        for key in ("id", "image_id", "category_id"):
            if not is_int(ann.get(key)):
                return f"annotations[{i}] has no integer '{key}'"
        if ann["id"] in ann_ids:
            return f"annotations[{i}]: annotation id {ann['id']} appears twice"
        ann_ids.add(ann["id"])
        if not _is_box(ann.get("bbox")):
            return f"annotations[{i}] 'bbox' is not [x, y, width, height] of finite numbers"
        if not _is_number(ann.get("area")):
            return f"annotations[{i}] has no finite number 'area'"
        if ann.get("iscrowd") not in (0, 1) or isinstance(ann.get("iscrowd"), float):
            return f"annotations[{i}] 'iscrowd' is not 0 or 1"
    return None


def _results_problem(results: Sequence[Any]) -> Optional[str]:
    """What COCOeval would trip over in a results list, in words, or None."""
    for i, r in enumerate(results):
        if not isinstance(r, dict):
            return f"result {i} is not an object"
        for key in ("image_id", "category_id"):
            if not is_int(r.get(key)):
                return f"result {i} has no integer '{key}'"
        if not _is_box(r.get("bbox")):
            return f"result {i} 'bbox' is not [x, y, width, height] of finite numbers"
        if not _is_number(r.get("score")):
            return f"result {i} has no finite number 'score'"
    return None


def category_ids(coco: "COCO") -> List[int]:
    """COCO category ids in ``getCatIds()`` order: class index j (1-based; 0 is
    background) maps to ``category_ids(coco)[j - 1]``, as in the reference."""
    return [int(c) for c in coco.getCatIds()]


def to_coco_results(
    dets: np.ndarray, image_id: int, category_ids: Sequence[int]
) -> List[Dict[str, Any]]:
    """COCO result dicts for one image's detections [N, 6] ``(class_index, x1,
    y1, x2, y2, score)``, in row order.

    ``bbox`` is ``[x1, y1, x2 - x1 + 1, y2 - y1 + 1]`` computed in double (the
    reference's "+1" convention, which the published AP includes).
    """
    arr = np.asarray(dets, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 6:
        if arr.size == 0:
            return []
        raise UsageError(
            f"dets must have shape [N, 6] (class_index, x1, y1, x2, y2, score), got {arr.shape}"
        )
    if arr.shape[0] == 0:
        return []
    classes = arr[:, 0]
    ids = list(category_ids)
    bad = (classes != np.round(classes)) | (classes < 1) | (classes > len(ids))
    if np.any(bad):
        raise UsageError(
            f"class indices must be integers in 1..{len(ids)} (0 is background); "
            f"got {sorted(set(classes[bad].tolist()))[:5]}"
        )
    xs, ys = arr[:, 1], arr[:, 2]
    ws = arr[:, 3] - xs + 1
    hs = arr[:, 4] - ys + 1
    image_id = int(image_id)
    lookup = [int(c) for c in ids]
    cats = [lookup[c - 1] for c in classes.astype(np.int64).tolist()]
    # columns as Python floats in one C call each (tolist): about 0.3 us a row
    # instead of 1, which counts where a GIL-holding runtime waits on this thread
    return [
        {"image_id": image_id, "category_id": cat, "bbox": [x, y, w, h], "score": score}
        for cat, x, y, w, h, score in zip(cats, xs.tolist(), ys.tolist(), ws.tolist(), hs.tolist(),
                                          arr[:, 5].tolist())
    ]


def write_results(path: PathLike, results: Iterable[Dict[str, Any]]) -> Path:
    """Write a COCO results list as JSON, atomically (never a partial file)."""
    return atomic_write_json(path, list(results))


def load_results(path: PathLike) -> List[Dict[str, Any]]:
    """Read a COCO results list written by :func:`write_results` (or anyone)."""
    data = read_json(path, "results file")
    if not isinstance(data, list):
        raise InputFileError(path, f"a COCO results file holds a JSON list, got {type(data).__name__}")
    problem = _results_problem(data)  # every reader of the file gets checked entries, not only COCOeval
    if problem is not None:
        raise InputFileError(path, problem)
    return data


# ---------------------------------------------------------------- scoring
def _empty_results(gt: "COCO") -> "COCO":
    """What ``gt.loadRes`` would build for an empty list, had it not crashed."""
    return _quiet_coco(
        {
            "images": list(gt.dataset.get("images", [])),
            "categories": list(gt.dataset.get("categories", [])),
            "annotations": [],
        }
    )


def _check_result_images(results: List[Dict[str, Any]], gt: "COCO", source: Optional[PathLike] = None) -> None:
    problem = _results_problem(results)
    if problem is None:
        unknown = {r["image_id"] for r in results} - set(gt.getImgIds())
        if unknown:
            problem = (f"{len(unknown)} result image id(s) are not in the annotations, "
                       f"e.g. {sorted(unknown)[:5]}")
    if problem is not None:
        if source is not None:
            raise InputFileError(source, problem)
        raise UsageError(problem)


def evaluate(
    annotations: Union[PathLike, "COCO"],
    results: Union[PathLike, Sequence[Dict[str, Any]]],
    image_ids: Optional[Iterable[int]] = None,
    *,
    verbose: bool = False,
) -> CocoSummary:
    """pycocotools bbox evaluation: ``COCOeval(gt, dt, "bbox")`` evaluate,
    accumulate, summarize (reference section 8).

    ``annotations`` is a path or a ``COCO``; ``results`` a list of result dicts
    or a path to one. ``image_ids`` restricts the evaluation (default: every
    image in the annotations, as pycocotools does). An empty result list is
    valid and scores 0 wherever there is ground truth. pycocotools' prints are
    captured into ``CocoSummary.text`` (the summary table); ``verbose=True``
    also logs the table as a result line.
    """
    from pycocotools.cocoeval import COCOeval

    gt = load_annotations(annotations) if isinstance(annotations, (str, os.PathLike)) else annotations
    source = None
    if isinstance(results, (str, os.PathLike)):
        source = results
        results = load_results(results)
    if not isinstance(results, (list, tuple)):
        results = list(results)
    _check_result_images(results, gt, source)
    results = [dict(r) for r in results]  # loadRes adds keys to the dicts it gets
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        dt = gt.loadRes(results) if results else _empty_results(gt)
        evaluator = COCOeval(gt, dt, "bbox")
        if image_ids is not None:
            evaluator.params.imgIds = sorted(int(i) for i in image_ids)
        evaluator.evaluate()
        evaluator.accumulate()
    table = io.StringIO()
    with contextlib.redirect_stdout(table):
        evaluator.summarize()
    text = table.getvalue()
    if verbose:
        logger.log(RESULT, text.rstrip("\n"))
    stats = tuple(float(v) for v in evaluator.stats)
    return CocoSummary(
        stats=stats,
        text=text,
        num_images=len(evaluator.params.imgIds),
        num_detections=len(results),
    )
