"""Raw-output metrics between two runs of M2Det, per output and per image.

Two runs (PyTorch, ONNX Runtime on CPU/CUDA/CANN, an ``.om`` on a 310P) never
agree bit for bit; the question is whether they differ by what their
arithmetic explains. The metrics here (max and mean absolute error, relative
errors, cosine, relative Euclidean distance, non-finite counts) are what the
tolerance layer (evaluation.tolerances) bounds and the fp16 forecast
(precision.forecast) reports.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from numba import njit

__all__ = [
    "worst_per_output",
    "OutputMetrics",
    "output_metrics",
    "compare_runs",
]




# ------------------------------------------------------------------ raw outputs
@dataclass(frozen=True)
class OutputMetrics:
    """How one output of one image differs between a candidate run ``a`` and a
    reference run ``b``.

    ``max_rel`` is elementwise ``|a-b| / |b|`` (infinite where ``b == 0`` and
    ``a != b``): near-zero scores make it large, so it is reported, not bounded
    by default. ``peak_rel`` is ``max|a-b| / max|b|``, the golden README's
    "relative to the largest magnitude". ``cosine`` is over the flattened
    output, in float64, the figure Ascend's comparison tools report; it is
    blind to scale (``2 * b`` has cosine 1 with ``b``), so ``rel_l2``,
    ``||a - b|| / ||b||`` (Ascend's "relative Euclidean distance"), comes with
    it. ``nonfinite`` counts elements where either run is NaN or infinite.
    """

    output: str
    image: int
    image_id: str
    max_abs: float
    mean_abs: float
    max_rel: float
    peak_rel: float
    cosine: float
    rel_l2: float
    worst_index: Tuple[int, ...]
    worst_a: float
    worst_b: float
    nonfinite: int = 0

    def value(self, metric: str) -> float:
        return float(getattr(self, metric))


@njit(cache=True, nogil=True)
def _metric_sums(a, b):
    """One pass over float32 ``a`` (candidate) and ``b`` (reference), in float64."""
    nonfinite = 0
    max_abs = -1.0
    worst = 0
    sum_abs = 0.0
    max_rel = 0.0
    rel_nan = False
    peak = 0.0
    dot = 0.0
    na2 = 0.0
    nb2 = 0.0
    nd2 = 0.0
    for i in range(a.size):
        x = np.float64(a[i])
        y = np.float64(b[i])
        if np.isfinite(x) and np.isfinite(y):
            d = abs(x - y)
            dot += x * y
            na2 += x * x
            nb2 += y * y
            nd2 += d * d
            ay = abs(y)
            if ay > peak:
                peak = ay
            if d > 0.0:
                r = d / ay if ay > 0.0 else np.inf
                if r > max_rel:
                    max_rel = r
        else:
            nonfinite += 1
            d = np.inf
            nd2 = np.inf
            if not np.isfinite(abs(y)):
                rel_nan = True
            else:
                max_rel = np.inf
        sum_abs += d
        if d > max_abs:
            max_abs = d
            worst = i
    return nonfinite, max(max_abs, 0.0), worst, sum_abs, max_rel, rel_nan, peak, dot, na2, nb2, nd2


def _as_float_array(x: np.ndarray) -> np.ndarray:
    """Flattened float32 or float64 (kept as given; anything else widened to float64)."""
    x = np.asarray(x)
    dtype = x.dtype if x.dtype in (np.float32, np.float64) else np.float64
    return np.ascontiguousarray(x, dtype=dtype).ravel()


def output_metrics(a: np.ndarray, b: np.ndarray, output: str, image: int = 0,
                   image_id: Optional[str] = None) -> OutputMetrics:
    """Metrics of candidate ``a`` against reference ``b`` (one image's output).

    One compiled pass in float64 (:func:`_metric_sums`): a forecast measures
    about 130 million values per image, which a numpy version took 10 s over.
    The definitions are those of :class:`OutputMetrics`; an independent numpy
    oracle (tests/oracles/output_metrics.py) holds this to them.
    """
    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"output {output!r}, image {image}: shapes differ: {list(a.shape)} vs {list(b.shape)}")
    ident = str(image if image_id is None else image_id)
    if a.size == 0:
        return OutputMetrics(output=output, image=int(image), image_id=ident, max_abs=0.0, mean_abs=0.0,
                             max_rel=0.0, peak_rel=0.0, cosine=1.0, rel_l2=0.0, worst_index=(), worst_a=0.0,
                             worst_b=0.0, nonfinite=0)
    fa, fb = _as_float_array(a), _as_float_array(b)
    nonfinite, max_abs, worst, sum_abs, max_rel, rel_nan, peak, dot, na2, nb2, nd2 = _metric_sums(fa, fb)
    norm_b, norm_d = float(np.sqrt(nb2)), float(np.sqrt(nd2))
    if nonfinite:
        cosine = float("nan")
    elif na2 == 0.0 and nb2 == 0.0:
        cosine = 1.0
    elif na2 == 0.0 or nb2 == 0.0:
        cosine = 0.0
    else:
        cosine = float(dot / (np.sqrt(na2) * np.sqrt(nb2)))
    return OutputMetrics(
        output=output, image=int(image), image_id=ident,
        max_abs=float(max_abs), mean_abs=float(sum_abs / fa.size),
        max_rel=float("nan") if rel_nan else float(max_rel),
        peak_rel=(max_abs / peak) if peak > 0 else (0.0 if max_abs == 0 else float("inf")),
        cosine=cosine,
        rel_l2=norm_d / norm_b if norm_b > 0 else (0.0 if norm_d == 0 else float("inf")),
        worst_index=tuple(int(i) for i in np.unravel_index(int(worst), a.shape)),
        worst_a=float(fa[worst]), worst_b=float(fb[worst]), nonfinite=int(nonfinite),
    )


def compare_runs(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray],
                 image_ids: Optional[Sequence[str]] = None,
                 outputs: Sequence[str] = ("scores", "loc")) -> List[OutputMetrics]:
    """Per-output, per-image metrics of run ``a`` against run ``b``.

    Each run maps an output name to a batch ``[N, ...]``; image ``i`` is row ``i``.
    """
    result = []
    for name in outputs:
        if name not in a or name not in b:
            raise ValueError(f"output {name!r} missing from a run (have {sorted(a)} and {sorted(b)})")
        xa, xb = np.asarray(a[name]), np.asarray(b[name])
        if xa.shape != xb.shape:
            raise ValueError(f"output {name!r}: shapes differ: {list(xa.shape)} vs {list(xb.shape)}")
        if image_ids is not None and len(image_ids) != xa.shape[0]:
            raise ValueError(f"{len(image_ids)} image ids for {xa.shape[0]} images")
        for i in range(xa.shape[0]):
            result.append(output_metrics(xa[i], xb[i], name, i, None if image_ids is None else image_ids[i]))
    return result


# ------------------------------------------------------------------ detections


#: The per-output summary :func:`worst_per_output` reports, with the value of a perfect match.
WORST_DEFAULTS = {"cosine": 1.0, "rel_l2": 0.0, "max_abs": 0.0, "peak_rel": 0.0, "max_rel": 0.0, "mean_abs": 0.0,
                  "nonfinite": 0}


def _worse(pick, current: float, new: float) -> float:
    """``pick(current, new)``, except that NaN wins: ``min(1.0, nan)`` is 1.0 in Python, and a
    non-finite output must never be reported as a perfect match."""
    if np.isnan(current) or np.isnan(new):
        return float("nan")
    return pick(current, new)


def worst_per_output(metrics: Sequence[OutputMetrics]) -> Dict[str, Dict[str, float]]:
    """Per output, the worst value of each metric over the images: the lowest
    cosine, the largest of the others; NaN (a non-finite output) is worst of all."""
    out: Dict[str, Dict[str, float]] = {}
    for m in metrics:
        w = out.setdefault(m.output, dict(WORST_DEFAULTS))
        w["cosine"] = _worse(min, w["cosine"], m.cosine)
        for k in WORST_DEFAULTS:
            if k != "cosine":
                w[k] = _worse(max, w[k], getattr(m, k))
    return out
