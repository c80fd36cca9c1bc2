"""Plain-Python oracle for reference section 7: soft-NMS and the greedy hard NMS.

Why this exists
---------------
The implementation under test (``m2det_impl.pipeline.nms``) is vectorised / compiled for
speed. This module is the opposite: a line-by-line transcription of the
reference's Cython ``cpu_soft_nms`` and ``cpu_nms`` (VDIGPKU/M2Det
``utils/nms/cpu_nms.pyx``, as described in reference section 7) using Python loops,
so that it is easy to audit and shares no code with the implementation. It is
proven bit-exact against ``fixtures/golden/nms_cases.npz`` by
``tests/pipeline/test_oracle_self_check.py``.

Float32 emulation
-----------------
The reference is compiled C: coordinates and scores are C ``float`` (IEEE
binary32), some intermediates are ``double``. Here every value is a Python
``float`` (binary64) and every operation the reference performs in float32 is
written ``_f32(a op b)``: the operation is done in double and the result rounded
to the nearest float32. For +, -, *, / of two float32 operands this *is* the
correctly rounded float32 result, because binary64 has 53 >= 2*24 + 2 bits of
precision, which makes the double rounding innocuous (Figueroa, "When is double
rounding innocuous?", 1995). Operations the reference performs in double are
written without ``_f32`` and rounded only where the C code stores them into a
``float`` variable or array element.

The exact rounding points, read off the Cython-generated C of the reference
(``cpu_nms.c``, Cython 0.25.2) and matching reference section 7:

soft-NMS, for the selected row t and a candidate row p::

    area = (float)(((double)(x2 - x1) + 1.0) * ((double)(y2 - y1) + 1.0))
    iw   = (float)((double)(min(tx2, x2) - max(tx1, x1)) + 1.0)     # min/max in float
    ih   = likewise
    ua   = (float)((((double)(tx2 - tx1) + 1.0) * ((double)(ty2 - ty1) + 1.0)
                    + (double)area) - (double)(iw * ih))             # iw*ih is a *float* product
    ov   = (iw * ih) / ua                                            # float / float
    linear:   weight = (float)(1.0 - (double)ov)          if ov > Nt else 1
    gaussian: weight = (float)np.exp((double)(-(ov * ov) / sigma))   # exponent in float
    hard:     weight = 0 if ov > Nt else 1
    score = weight * score                                           # float * float
    drop the row if score < threshold                                # float compare

``sigma``, ``Nt`` and ``threshold`` are C ``float`` parameters, so the Python
values passed in are first rounded to float32 (0.3 -> 0.30000001192...).

Note on ``iw * ih`` inside ``ua``: docs/reference.md's prose says "the products for the
areas and the union in double", which can be read as computing ``iw * ih`` in
double there too. The C code multiplies the two ``float`` variables ``iw`` and
``ih`` in float (C does not promote float*float) and only then widens the
product to double for the subtraction. We follow the C code, and the golden
file decides it: the double-product reading mismatches 6 of the 16 golden
soft-NMS arrays (``tests/pipeline/test_oracle_self_check.py`` keeps that mutation as a
test, so the sensitivity is on record).

cpu_nms (greedy hard NMS)::

    areas = (x2 - x1 + 1) * (y2 - y1 + 1)     # numpy float32 arrays, every op float32
    order = scores.argsort()[::-1]            # numpy's default (non-stable) argsort
    w = max(0, (float)((double)(xx2 - xx1) + 1.0)), h likewise
    inter = w * h; ovr = inter / (iarea + areas[j] - inter)          # all float32
    suppress j if (double)ovr >= thresh       # thresh is a Python float (double):
                                              # the C code compares PyFloat objects

The double comparison matters: an IoU whose float32 value is float32(0.45) =
0.449999988... is *not* suppressed at ``thresh=0.45``, even though the exact
IoU may be 9/20. Both functions raise ``ZeroDivisionError`` where the reference
does (a zero union), instead of inventing a convention.

"Modern" variants (``plus_one=False``)
--------------------------------------
Widths and heights are ``x2 - x1`` instead of ``x2 - x1 + 1`` (the convention of
ONNX NonMaxSuppression, OpenCV's ``dnn.NMSBoxes`` and torchvision). docs/reference.md does
not define their rounding; here exactly the same rounding points are kept with
the ``+ 1`` replaced by ``+ 0``, so the only thing that changes is the
convention. Tests that compare an implementation's modern variant against this
oracle bit for bit use coordinates for which every area and intersection is
exact in float32, so that the comparison does not depend on this choice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

__all__ = [
    "SoftNMSTrace",
    "soft_nms_oracle",
    "cpu_nms_oracle",
    "iou_f32",
    "REFERENCE_SOFT_NMS_ARGS",
    "canonical_keep",
]

#: What the reference pipeline actually runs (docs/reference.md 7): ``cpu_soft_nms(dets, 0.45,
#: method=1)``, i.e. sigma=0.45 (unused by the linear method), Nt=0.3 default,
#: threshold=0.001 default, linear decay.
REFERENCE_SOFT_NMS_ARGS = {"sigma": 0.45, "Nt": 0.3, "threshold": 0.001, "method": 1}


def _f32(x: float) -> float:
    """Round a Python float to the nearest binary32 value (ties to even)."""
    return float(np.float32(x))


def _rows_f32(dets: np.ndarray | Sequence[Sequence[float]]) -> list[list[float]]:
    """Copy ``dets`` into a list of rows of Python floats holding float32 values.

    The reference requires a float32 ``[N, 5]`` array; we refuse anything else
    rather than silently converting (a float64 input would otherwise be rounded
    here and the test would not notice that the caller forgot to cast).
    """
    arr = np.asarray(dets)
    if arr.dtype != np.float32:
        raise TypeError(f"the reference takes float32 rows, got {arr.dtype}")
    if arr.ndim != 2 or arr.shape[1] != 5:
        raise ValueError(f"expected [N, 5] rows (x1, y1, x2, y2, score), got {arr.shape}")
    return [[float(v) for v in row] for row in arr]


@dataclass
class SoftNMSTrace:
    """Optional side information from :func:`soft_nms_oracle`.

    ``tied_selections`` counts the selection steps (step 1 of docs/reference.md 7) at which
    the maximum score was held by more than one remaining row. Only then does
    the output depend on the input order ("the first such position"), so a
    permutation-invariance property must exclude exactly those inputs.
    """

    tied_selections: int = 0
    removed: int = 0
    selections: list[float] = field(default_factory=list)


def soft_nms_oracle(
    dets: np.ndarray,
    sigma: float = 0.5,
    Nt: float = 0.3,
    threshold: float = 0.001,
    method: int = 0,
    *,
    plus_one: bool = True,
    trace: SoftNMSTrace | None = None,
    _mutations: frozenset[str] = frozenset(),
) -> np.ndarray:
    """Soft-NMS exactly as the reference's ``cpu_soft_nms`` (docs/reference.md 7).

    Returns the re-scored rows ``[M, 5]`` float32 in output order (the rows
    ``0..N-1`` of the reference's in-place array after the loop). The input is
    not modified (the reference works in place; we work on a copy).

    ``_mutations`` exists only for the self-check's mutation tests, which show
    that the golden data can tell the right rounding from plausible wrong ones:
    ``"union_inter_double"`` (``iw * ih`` in double inside ``ua``),
    ``"exp_float32"`` (the gaussian ``exp`` in float32), ``"all_double"`` (no
    float32 rounding at all, parameters included).

    The signature and defaults are those of the reference (sigma=0.5, Nt=0.3,
    threshold=0.001, method=0); the pipeline's call is
    ``REFERENCE_SOFT_NMS_ARGS``.
    """
    unknown = set(_mutations) - {"union_inter_double", "exp_float32", "all_double"}
    if unknown:
        raise ValueError(f"unknown mutations {sorted(unknown)}")
    rows = _rows_f32(dets)
    r32 = (lambda x: x) if "all_double" in _mutations else _f32
    # C ``float`` parameters: the Python values are rounded to float32 on entry.
    sigma32 = r32(sigma)
    nt32 = r32(Nt)
    thr32 = r32(threshold)
    method = int(method)
    if method < 0:
        raise ValueError("method is an unsigned int in the reference")
    one = 1.0 if plus_one else 0.0

    n = len(rows)
    i = 0
    # The reference loops ``for i in range(N)`` with N evaluated once; the
    # iterations with i >= (shrunken) N do nothing, so ``while i < n`` is the
    # same loop.
    while i < n:
        # Step 1: the first row with the largest score among i..n-1.
        maxpos = i
        maxscore = rows[i][4]
        for pos in range(i + 1, n):
            if maxscore < rows[pos][4]:  # strict: the first one wins on ties
                maxscore = rows[pos][4]
                maxpos = pos
        if trace is not None:
            if sum(1 for pos in range(i, n) if rows[pos][4] == maxscore) > 1:
                trace.tied_selections += 1
            trace.selections.append(maxscore)
        rows[i], rows[maxpos] = rows[maxpos], rows[i]
        tx1, ty1, tx2, ty2, _ts = rows[i]
        # Area of the selected box, in double, exactly as the C expression
        # ``(tx2 - tx1 + 1) * (ty2 - ty1 + 1)``: float subtraction, then double.
        area_t = (r32(tx2 - tx1) + one) * (r32(ty2 - ty1) + one)

        # Step 2: re-score the remaining rows against row i.
        pos = i + 1
        while pos < n:
            x1, y1, x2, y2, score = rows[pos]
            area = r32((r32(x2 - x1) + one) * (r32(y2 - y1) + one))
            iw = r32(r32(min(tx2, x2) - max(tx1, x1)) + one)
            if iw > 0.0:
                ih = r32(r32(min(ty2, y2) - max(ty1, y1)) + one)
                if ih > 0.0:
                    inter = r32(iw * ih)  # float * float in the C code
                    inter_u = iw * ih if "union_inter_double" in _mutations else inter
                    ua = r32((area_t + area) - inter_u)
                    if ua == 0.0:  # the reference raises here too
                        raise ZeroDivisionError("float division")
                    ov = r32(inter / ua)
                    if method == 1:  # linear
                        weight = r32(1.0 - ov) if ov > nt32 else 1.0
                    elif method == 2:  # gaussian
                        exponent = r32(r32(-(ov * ov)) / sigma32)
                        if "exp_float32" in _mutations:
                            weight = float(np.exp(np.float32(exponent)))
                        else:  # np.exp of a Python float: float64, then stored as float
                            weight = r32(float(np.exp(exponent)))
                    else:  # 0 (and any other value): hard
                        weight = 0.0 if ov > nt32 else 1.0
                    score = r32(weight * score)
                    rows[pos][4] = score
                    if score < thr32:
                        # Discard: copy the last live row over this one and look
                        # at this position again.
                        rows[pos] = list(rows[n - 1])
                        n -= 1
                        if trace is not None:
                            trace.removed += 1
                        continue
            pos += 1
        i += 1

    out = np.array(rows[:n], dtype=np.float32)
    return out.reshape(n, 5)


def _areas_f32(rows: list[list[float]], one: float) -> list[float]:
    """``(x2 - x1 + 1) * (y2 - y1 + 1)`` evaluated as numpy float32 arrays do:
    every operation rounded to float32 (``one`` is 1.0 or 0.0)."""
    return [_f32(_f32(_f32(r[2] - r[0]) + one) * _f32(_f32(r[3] - r[1]) + one)) for r in rows]


def _pair_iou_f32(a: list[float], b: list[float], area_a: float, area_b: float, one: float) -> float:
    """The IoU of ``cpu_nms`` (float32 throughout; the +1 done as in the C code)."""
    xx1 = max(a[0], b[0])
    yy1 = max(a[1], b[1])
    xx2 = min(a[2], b[2])
    yy2 = min(a[3], b[3])
    w = max(0.0, _f32(_f32(xx2 - xx1) + one))
    h = max(0.0, _f32(_f32(yy2 - yy1) + one))
    inter = _f32(w * h)
    denom = _f32(_f32(area_a + area_b) - inter)
    if denom == 0.0:  # Cython raises ZeroDivisionError("float division")
        raise ZeroDivisionError("float division")
    return _f32(inter / denom)


def iou_f32(dets: np.ndarray, *, plus_one: bool = True) -> np.ndarray:
    """Pairwise IoU matrix ``[N, N]`` (float32 values) computed like ``cpu_nms``.

    Used to check properties of kept sets with exactly the quantity the
    reference thresholds on.
    """
    rows = _rows_f32(np.ascontiguousarray(np.asarray(dets, dtype=np.float32)[:, :5]))
    one = 1.0 if plus_one else 0.0
    areas = _areas_f32(rows, one)
    n = len(rows)
    out = np.zeros((n, n), dtype=np.float32)
    for a in range(n):
        for b in range(n):
            out[a, b] = _pair_iou_f32(rows[a], rows[b], areas[a], areas[b], one)
    return out


def cpu_nms_oracle(dets: np.ndarray, thresh: float, *, plus_one: bool = True) -> list[int]:
    """Greedy hard NMS as the reference's ``cpu_nms`` (docs/reference.md 7, last paragraph).

    Returns the kept indices into ``dets`` in output order (descending score).
    Ties in score are ordered by ``scores.argsort()[::-1]``, numpy's default
    non-stable sort, like the reference: callers should compare tied entries
    as sets (see :func:`canonical_keep`).
    """
    rows = _rows_f32(dets)
    one = 1.0 if plus_one else 0.0
    n = len(rows)
    if n == 0:
        return []
    scores = np.asarray(dets, dtype=np.float32)[:, 4]
    order = [int(k) for k in scores.argsort()[::-1]]
    areas = _areas_f32(rows, one)
    thresh = float(thresh)  # compared as Python floats (double) in the reference

    suppressed = [False] * n
    keep: list[int] = []
    for _i in range(n):
        i = order[_i]
        if suppressed[i]:
            continue
        keep.append(i)
        for _j in range(_i + 1, n):
            j = order[_j]
            if suppressed[j]:
                continue
            ovr = _pair_iou_f32(rows[i], rows[j], areas[i], areas[j], one)
            if ovr >= thresh:
                suppressed[j] = True
    return keep


def canonical_keep(keep: Sequence[int], scores: np.ndarray) -> list[tuple[float, tuple[int, ...]]]:
    """Kept indices as runs of equal score, in the given order, each run sorted.

    ``[(score, (indices with that score, ascending)), ...]`` following ``keep``'s
    order. Two kept lists that differ only by the order of consecutive
    equal-score entries map to the same value; any other difference (another
    set, another order of distinct scores) survives.
    """
    scores = np.asarray(scores, dtype=np.float32)
    runs: list[tuple[float, list[int]]] = []
    for k in keep:
        s = float(scores[int(k)])
        if runs and runs[-1][0] == s:
            runs[-1][1].append(int(k))
        else:
            runs.append((s, [int(k)]))
    return [(s, tuple(sorted(idx))) for s, idx in runs]
