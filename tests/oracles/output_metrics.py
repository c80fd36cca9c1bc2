"""An independent numpy definition of the tolerance layer's per-output metrics.

The package computes them in one compiled pass (m2det_impl.evaluation.metrics);
this vectorised version, written from the definitions in OutputMetrics'
docstring, is the oracle the compiled one is held to.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from m2det_impl.evaluation.metrics import OutputMetrics


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 and nb == 0.0:
        return 1.0
    if na == 0.0 or nb == 0.0:
        return 0.0
    return float(np.dot(a, b) / (na * nb))


def numpy_output_metrics(a: np.ndarray, b: np.ndarray, output: str, image: int = 0,
                   image_id: Optional[str] = None) -> OutputMetrics:
    """Metrics of candidate ``a`` against reference ``b`` (one image's output)."""
    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"output {output!r}, image {image}: shapes differ: {list(a.shape)} vs {list(b.shape)}")
    a64 = a.astype(np.float64).ravel()
    b64 = b.astype(np.float64).ravel()
    finite = np.isfinite(a64) & np.isfinite(b64)
    nonfinite = int(a64.size - np.count_nonzero(finite))
    diff = np.abs(a64 - b64)
    diff[~finite] = np.inf
    worst = int(np.argmax(diff)) if diff.size else 0
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(diff == 0, 0.0, diff / np.abs(b64))
    peak = float(np.max(np.abs(b64[finite]))) if np.any(finite) else 0.0
    max_abs = float(diff.max()) if diff.size else 0.0
    norm_b, norm_d = float(np.linalg.norm(b64[finite])), float(np.linalg.norm(diff))
    rel_l2 = norm_d / norm_b if norm_b > 0 else (0.0 if norm_d == 0 else float("inf"))
    return OutputMetrics(
        output=output,
        image=int(image),
        image_id=str(image if image_id is None else image_id),
        max_abs=max_abs,
        mean_abs=float(diff.mean()) if diff.size else 0.0,
        max_rel=float(rel.max()) if rel.size else 0.0,
        peak_rel=(max_abs / peak) if peak > 0 else (0.0 if max_abs == 0 else float("inf")),
        cosine=_cosine(a64[finite], b64[finite]) if nonfinite == 0 else float("nan"),
        rel_l2=rel_l2,
        worst_index=tuple(int(i) for i in np.unravel_index(worst, a.shape)) if a.size else (),
        worst_a=float(a64[worst]) if a64.size else 0.0,
        worst_b=float(b64[worst]) if b64.size else 0.0,
        nonfinite=nonfinite,
    )


