"""Detection agreement: two runs' detections matched one to one after the same post-processing (reference sections 5-7).

An fp16 .om differs in the raw outputs by more than float32 runtimes do while
its detections stay the same, so runs are also compared after post-processing:
the fraction of detections matched one to one (same class, IoU >= 0.99, score
within 1e-3).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

__all__ = [
    "agreement_totals",
    "DetectionAgreement",
    "match_detections",
    "run_detections",
    "detection_agreement",
]


@dataclass(frozen=True)
class DetectionAgreement:
    """One image's detections of run ``a`` matched one to one against ``b``.

    ``fraction`` is ``matched / max(count_a, count_b)`` (1.0 when both are empty):
    a detection missing from either side counts against it.
    """

    image: int
    image_id: str
    matched: int
    count_a: int
    count_b: int
    unmatched_a: Tuple[Tuple[float, ...], ...] = ()
    unmatched_b: Tuple[Tuple[float, ...], ...] = ()

    @property
    def fraction(self) -> float:
        most = max(self.count_a, self.count_b)
        return 1.0 if most == 0 else self.matched / most


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Plain (continuous) IoU of one box with many, in pixels."""
    x1 = np.maximum(box[0], boxes[:, 0])
    y1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[2], boxes[:, 2])
    y2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = lambda r: np.clip(r[..., 2] - r[..., 0], 0, None) * np.clip(r[..., 3] - r[..., 1], 0, None)  # noqa: E731
    union = area(box) + area(boxes) - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, inter / union, np.where(np.all(boxes == box, axis=1), 1.0, 0.0))
    return iou


def match_detections(a: np.ndarray, b: np.ndarray, iou: float = 0.99, score_tol: float = 1e-3,
                     image: int = 0, image_id: Optional[str] = None) -> DetectionAgreement:
    """Match rows ``(class, x1, y1, x2, y2, score)`` of ``a`` and ``b`` one to one.

    A pair qualifies with the same class, IoU >= ``iou`` and scores within
    ``score_tol``; pairs are taken greedily, best IoU first, then closest
    score (with IoU >= 0.99 two rows of one class rarely compete for a box).
    """
    a = np.asarray(a, dtype=np.float64).reshape(-1, 6)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 6)
    candidates = []
    for i, row in enumerate(a):
        same = np.flatnonzero(b[:, 0] == row[0])
        if same.size == 0:
            continue
        ious = _iou(row[1:5], b[same, 1:5])
        dscore = np.abs(b[same, 5] - row[5])
        for j, o, d in zip(same, ious, dscore):
            if o >= iou and d <= score_tol:
                candidates.append((-o, d, i, int(j)))
    candidates.sort()
    used_a, used_b = set(), set()
    for _, _, i, j in candidates:
        if i not in used_a and j not in used_b:
            used_a.add(i)
            used_b.add(j)
    rest_a = tuple(tuple(float(v) for v in a[i]) for i in range(len(a)) if i not in used_a)[:5]
    rest_b = tuple(tuple(float(v) for v in b[j]) for j in range(len(b)) if j not in used_b)[:5]
    return DetectionAgreement(int(image), str(image if image_id is None else image_id),
                              len(used_a), len(a), len(b), rest_a, rest_b)


def run_detections(scores: np.ndarray, loc: np.ndarray, sizes: Sequence[Tuple[int, int]],
                   cfg=None, priors: Optional[np.ndarray] = None) -> List[np.ndarray]:
    """The reference post-processing of a batch (``m2det_impl.pipeline.postprocess.detect``)
    with the ORIGINAL image ``sizes`` ``[(width, height), ...]``."""
    from m2det_impl.pipeline.postprocess import detect

    if len(sizes) != len(loc):
        raise ValueError(f"{len(sizes)} image sizes for {len(loc)} images")
    return [detect(scores[i], loc[i], priors, float(w), float(h), cfg) for i, (w, h) in enumerate(sizes)]


def detection_agreement(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray],
                        sizes: Sequence[Tuple[int, int]], cfg=None, image_ids: Optional[Sequence[str]] = None,
                        iou: float = 0.99, score_tol: float = 1e-3) -> List[DetectionAgreement]:
    """Post-process both runs and match their detections image by image."""
    det_a = run_detections(a["scores"], a["loc"], sizes, cfg)
    det_b = run_detections(b["scores"], b["loc"], sizes, cfg)
    ids = list(image_ids) if image_ids is not None else [str(i) for i in range(len(det_a))]
    return [match_detections(x, y, iou, score_tol, i, ids[i]) for i, (x, y) in enumerate(zip(det_a, det_b))]


# ------------------------------------------------------------------ tolerances


def agreement_totals(agreements: Sequence[DetectionAgreement],
                     names: Tuple[str, str] = ("candidate", "reference")) -> Dict[str, float]:
    """Detections matched over all images: the counts (keyed ``detections_<name>``),
    the overall fraction and the lowest fraction of any image."""
    matched = sum(a.matched for a in agreements)
    most = sum(max(a.count_a, a.count_b) for a in agreements)
    return {"matched": matched, f"detections_{names[0]}": sum(a.count_a for a in agreements),
            f"detections_{names[1]}": sum(a.count_b for a in agreements),
            "fraction": 1.0 if most == 0 else matched / most,
            "lowest_image_fraction": min((a.fraction for a in agreements), default=1.0)}
