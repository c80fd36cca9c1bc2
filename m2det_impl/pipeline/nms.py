"""Soft-NMS and greedy NMS, bit-exact with the reference's Cython (reference section 7).

The reference compiles ``cpu_soft_nms`` / ``cpu_nms`` with Cython, so its
numerics are C's: coordinates and scores are ``float``, while every ``+ 1``
becomes the C double literal ``1.0`` and drags that sub-expression into double
before the result is stored back into a ``float`` variable. The published AP
depends on those exact scores (a box whose decayed score lands just below the
discard threshold disappears), so the kernels below spell out every rounding
step instead of trusting numpy's or numba's type promotion. One detail the
docs/reference.md's wording leaves open is settled by the golden data: in the union
``ua = area_i + area_pos - iw * ih`` the product ``iw * ih`` is a float
product (C evaluates ``float * float`` in float) promoted to double for the
sum. Both an all-float32 variant and one with ``iw * ih`` in double fail 6 of
the 16 soft-NMS cases of ``golden/nms_cases.npz``; this one matches all 16.

The loops are compiled with numba (``cache=True``; the first call in a fresh
environment compiles for a second or two, later processes load the cache).
``error_model="numpy"`` keeps IEEE semantics (``x / 0`` gives inf/nan, like C)
instead of raising ``ZeroDivisionError``.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import numpy as np
from numba import njit

__all__ = [
    "soft_nms",
    "nms",
    "soft_nms_segments",
    "SOFT_NMS_METHODS",
]

SOFT_NMS_METHODS = {0: "hard", 1: "linear", 2: "gaussian"}

_F32 = np.float32


def _as_dets(dets: np.ndarray, name: str = "dets") -> np.ndarray:
    """A private C-contiguous float32 copy of ``dets`` [N, 5]; never the input itself."""
    arr = np.asarray(dets)
    if arr.ndim != 2 or arr.shape[1] != 5:
        raise ValueError(
            f"{name} must have shape [N, 5] (x1, y1, x2, y2, score), got {arr.shape}"
        )
    return np.array(arr, dtype=np.float32, order="C", copy=True)


def _check_method(method: int) -> int:
    if int(method) != method or int(method) not in SOFT_NMS_METHODS:
        raise ValueError(
            f"soft-NMS method must be 0 (hard), 1 (linear) or 2 (gaussian), got {method!r}"
        )
    return int(method)


# ------------------------------------------------------------------ kernels
# Soft-NMS is a transcription of the reference's ``cpu_soft_nms`` reorganised
# for speed without changing a single rounding: each pass (one selected row
# against all later rows) is split into
#   A. the decay of every later row -- independent per row, so it is written
#      branch-free over structure-of-arrays copies and LLVM vectorises it;
#   B. the removal of rows that fell below the threshold (the reference copies
#      the last row over them and looks at that position again), fused with
#      the search for the next maximum (first position wins ties).
# The reference decays each row exactly once per pass and only compares rows
# that overlapped the selected row with the threshold; A and B do the same.


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _overlap(tx1, ty1, tx2, ty2, tarea, x1, y1, x2, y2, area, offset):
    """(overlaps?, ov) of a row with the selected row, C float/double rules:
    ``iw = (float)((double)(min(x2) - max(x1)) + 1.0)``, ``ua`` summed in double
    from the double area product of the selected row, the stored float area of
    this row and the float product ``iw * ih``; ``ov = (iw * ih) / ua`` in float.
    min/max are the reference's inline ``a if a <= b else b`` / ``a if a >= b else b``."""
    mn = tx2 if tx2 <= x2 else x2
    mx = tx1 if tx1 >= x1 else x1
    iw = np.float32(np.float64(mn - mx) + offset)
    mn = ty2 if ty2 <= y2 else y2
    mx = ty1 if ty1 >= y1 else y1
    ih = np.float32(np.float64(mn - mx) + offset)
    inter = iw * ih
    ua = np.float32(tarea + np.float64(area) - np.float64(inter))
    return (iw > 0) & (ih > 0), inter / ua


@njit(cache=True, nogil=True, error_model="numpy")
def _decay_step(x1, y1, x2, y2, s, ar, ns, hit, lo, n, tx1, ty1, tx2, ty2, tarea, nt, offset,
                linear):
    """Pass A for method 1 (weight ``(float)(1.0 - (double)ov)`` above Nt) and
    method 0 (weight 0 above Nt); branch-free so that it vectorises."""
    one = np.float32(1.0)
    zero = np.float32(0.0)
    for p in range(lo, n):
        h, ov = _overlap(tx1, ty1, tx2, ty2, tarea, x1[p], y1[p], x2[p], y2[p], ar[p], offset)
        lin = np.float32(1.0 - np.float64(ov))
        wo = lin if linear else zero
        w = wo if ov > nt else one
        ns[p] = w * s[p] if h else s[p]
        hit[p] = h


@njit(cache=True, nogil=True, error_model="numpy")
def _decay_gauss(x1, y1, x2, y2, s, ar, ns, hit, lo, n, tx1, ty1, tx2, ty2, tarea, sigma, offset):
    """Pass A for method 2: ``exp`` in double of the float ``-(ov * ov) / sigma``,
    stored in a float weight."""
    for p in range(lo, n):
        h, ov = _overlap(tx1, ty1, tx2, ty2, tarea, x1[p], y1[p], x2[p], y2[p], ar[p], offset)
        if h:
            ns[p] = np.float32(math.exp(np.float64(-(ov * ov) / sigma))) * s[p]
        else:
            ns[p] = s[p]
        hit[p] = h


@njit(cache=True, nogil=True, error_model="numpy")
def _soft_nms_segment(boxes, lo, hi, sigma, nt, threshold, method, offset, max_keep,
                      x1, y1, x2, y2, s, ar, ns, hit):
    """Soft-NMS of rows ``boxes[lo:hi]`` in place; returns how many rows are
    output (capped at ``max_keep`` when ``max_keep >= 0``). The other arrays are
    scratch space of at least ``hi - lo`` entries."""
    n = hi - lo
    if n <= 0:
        return 0
    for k in range(n):
        r = lo + k
        x1[k] = boxes[r, 0]
        y1[k] = boxes[r, 1]
        x2[k] = boxes[r, 2]
        y2[k] = boxes[r, 3]
        s[k] = boxes[r, 4]
        # "area" of a row: double product of the double "+1" widths, stored as float
        ar[k] = np.float32((np.float64(x2[k] - x1[k]) + offset) * (np.float64(y2[k] - y1[k]) + offset))
    limit = n if (max_keep < 0 or max_keep > n) else max_keep
    maxpos = 0
    maxscore = s[0]
    for p in range(1, n):
        if maxscore < s[p]:
            maxscore = s[p]
            maxpos = p
    i = 0
    while i < n and i < limit:
        # step 1: the maximum found so far becomes row i (swap)
        if maxpos != i:
            t = x1[i]; x1[i] = x1[maxpos]; x1[maxpos] = t  # noqa: E702
            t = y1[i]; y1[i] = y1[maxpos]; y1[maxpos] = t  # noqa: E702
            t = x2[i]; x2[i] = x2[maxpos]; x2[maxpos] = t  # noqa: E702
            t = y2[i]; y2[i] = y2[maxpos]; y2[maxpos] = t  # noqa: E702
            t = s[i]; s[i] = s[maxpos]; s[maxpos] = t  # noqa: E702
            t = ar[i]; ar[i] = ar[maxpos]; ar[maxpos] = t  # noqa: E702
        sel = i
        i += 1
        if i >= limit or i >= n:
            break  # rows after max_keep are never output: no need to decay them
        tx1 = x1[sel]
        ty1 = y1[sel]
        tx2 = x2[sel]
        ty2 = y2[sel]
        tarea = (np.float64(tx2 - tx1) + offset) * (np.float64(ty2 - ty1) + offset)
        # step 2, pass A: decay
        if method == 2:
            _decay_gauss(x1, y1, x2, y2, s, ar, ns, hit, i, n, tx1, ty1, tx2, ty2, tarea, sigma,
                         offset)
        else:
            _decay_step(x1, y1, x2, y2, s, ar, ns, hit, i, n, tx1, ty1, tx2, ty2, tarea, nt,
                        offset, method == 1)
        # step 2, pass B: drop rows below the threshold, find the next maximum
        p = i
        maxpos = i
        maxscore = np.float32(0.0)
        first = True
        while p < n:
            if hit[p] and ns[p] < threshold:
                last = n - 1
                x1[p] = x1[last]
                y1[p] = y1[last]
                x2[p] = x2[last]
                y2[p] = y2[last]
                ns[p] = ns[last]
                ar[p] = ar[last]
                hit[p] = hit[last]
                n -= 1
                continue  # look at position p again: it holds the former last row
            v = ns[p]
            s[p] = v
            if first:
                maxscore = v
                maxpos = p
                first = False
            elif maxscore < v:
                maxscore = v
                maxpos = p
            p += 1
    if limit < n:
        n = limit
    for k in range(n):
        r = lo + k
        boxes[r, 0] = x1[k]
        boxes[r, 1] = y1[k]
        boxes[r, 2] = x2[k]
        boxes[r, 3] = y2[k]
        boxes[r, 4] = s[k]
    return n


@njit(cache=True, nogil=True, error_model="numpy")
def _soft_nms_segments_kernel(boxes, starts, ends, sigma, nt, threshold, method, offset, max_keep):
    size = 1
    for k in range(starts.shape[0]):
        size = max(size, ends[k] - starts[k])
    x1 = np.empty(size, np.float32)
    y1 = np.empty(size, np.float32)
    x2 = np.empty(size, np.float32)
    y2 = np.empty(size, np.float32)
    s = np.empty(size, np.float32)
    ar = np.empty(size, np.float32)
    ns = np.empty(size, np.float32)
    hit = np.empty(size, np.bool_)
    counts = np.empty(starts.shape[0], dtype=np.int64)
    for k in range(starts.shape[0]):
        counts[k] = _soft_nms_segment(boxes, starts[k], ends[k], sigma, nt, threshold, method,
                                      offset, max_keep, x1, y1, x2, y2, s, ar, ns, hit)
    return counts


@njit(cache=True, nogil=True, error_model="numpy")
def _greedy_nms_kernel(boxes, order, thresh, offset):
    """The reference's ``cpu_nms`` after its numpy prologue: ``areas`` are a
    float32 numpy expression there, the per-pair maths float32 except the
    ``+ 1.0`` literal; ``ovr >= thresh`` compares against the double threshold."""
    n = order.shape[0]
    one = np.float32(offset)
    areas = np.empty(n, dtype=np.float32)
    for k in range(n):
        areas[k] = (boxes[k, 2] - boxes[k, 0] + one) * (boxes[k, 3] - boxes[k, 1] + one)
    suppressed = np.zeros(n, dtype=np.uint8)
    keep = np.empty(n, dtype=np.int64)
    nkeep = 0
    zero = np.float32(0.0)
    for _i in range(n):
        i = order[_i]
        if suppressed[i] == 1:
            continue
        keep[nkeep] = i
        nkeep += 1
        ix1 = boxes[i, 0]
        iy1 = boxes[i, 1]
        ix2 = boxes[i, 2]
        iy2 = boxes[i, 3]
        iarea = areas[i]
        for _j in range(_i + 1, n):
            j = order[_j]
            if suppressed[j] == 1:
                continue
            xx1 = ix1 if ix1 >= boxes[j, 0] else boxes[j, 0]
            yy1 = iy1 if iy1 >= boxes[j, 1] else boxes[j, 1]
            xx2 = ix2 if ix2 <= boxes[j, 2] else boxes[j, 2]
            yy2 = iy2 if iy2 <= boxes[j, 3] else boxes[j, 3]
            w = np.float32(np.float64(xx2 - xx1) + offset)
            w = zero if zero >= w else w
            h = np.float32(np.float64(yy2 - yy1) + offset)
            h = zero if zero >= h else h
            inter = w * h
            ovr = inter / (iarea + areas[j] - inter)
            if np.float64(ovr) >= thresh:
                suppressed[j] = 1
    return keep[:nkeep]


# --------------------------------------------------------------- public API
def _params(sigma: float, Nt: float, threshold: float, method: int, plus_one: bool
            ) -> Tuple[np.float32, np.float32, np.float32, int, float]:
    return (_F32(sigma), _F32(Nt), _F32(threshold), _check_method(method),
            1.0 if plus_one else 0.0)


def _check_max_keep(max_keep: Optional[int]) -> int:
    if max_keep is None:
        return -1
    if int(max_keep) != max_keep or max_keep < 0:
        raise ValueError(f"max_keep must be None or a non-negative integer, got {max_keep!r}")
    return int(max_keep)


def soft_nms(
    dets: np.ndarray,
    sigma: float = 0.5,
    Nt: float = 0.3,
    threshold: float = 0.001,
    method: int = 0,
    *,
    plus_one: bool = True,
    max_keep: Optional[int] = None,
) -> np.ndarray:
    """Soft-NMS of ``dets`` [N, 5] (x1, y1, x2, y2, score); returns the surviving
    rows, re-scored, in output order, as a new float32 array.

    Defaults are those of the reference's ``cpu_soft_nms`` signature (method 0 =
    hard); the M2Det pipeline runs ``sigma=0.45, method=1`` (reference section 7).
    ``sigma``, ``Nt`` and ``threshold`` are rounded to float32 as the reference
    does. ``plus_one=False`` drops the "+1 pixel" of widths and heights.
    ``max_keep`` stops after that many selections and returns at most that many
    rows: they equal the first rows of a full run, because a selected row is
    final. The input is never modified. NaN values follow C's comparison rules,
    as in the reference (no special-casing).
    """
    boxes = _as_dets(dets)
    sig, nt, thr, meth, offset = _params(sigma, Nt, threshold, method, plus_one)
    keep = _check_max_keep(max_keep)
    counts = _soft_nms_segments_kernel(
        boxes, np.zeros(1, np.int64), np.full(1, boxes.shape[0], np.int64),
        sig, nt, thr, meth, offset, keep,
    )
    n = int(counts[0])
    return boxes[:n].copy() if n < boxes.shape[0] else boxes


def soft_nms_segments(
    boxes: np.ndarray,
    starts: np.ndarray,
    ends: np.ndarray,
    sigma: float = 0.5,
    Nt: float = 0.3,
    threshold: float = 0.001,
    method: int = 0,
    *,
    plus_one: bool = True,
    max_keep: Optional[int] = None,
) -> np.ndarray:
    """Soft-NMS of several independent groups of rows in ONE compiled call.

    ``boxes`` is a C-contiguous float32 [M, 5] array that is modified IN PLACE:
    rows ``starts[k]:ends[k]`` form group k (one class of one image). Returns the
    number of surviving rows per group (int64); group k's output is
    ``boxes[starts[k]:starts[k] + counts[k]]``. This is what the pipeline uses to
    avoid one Python-level call per class.
    """
    if not (isinstance(boxes, np.ndarray) and boxes.dtype == np.float32
            and boxes.ndim == 2 and boxes.shape[1] == 5 and boxes.flags.c_contiguous
            and boxes.flags.writeable):
        raise ValueError(
            "boxes must be a writeable C-contiguous float32 array of shape [M, 5], got "
            f"{getattr(boxes, 'dtype', type(boxes))} {getattr(boxes, 'shape', '')}"
        )
    starts = np.ascontiguousarray(starts, dtype=np.int64)
    ends = np.ascontiguousarray(ends, dtype=np.int64)
    if starts.shape != ends.shape or starts.ndim != 1:
        raise ValueError(f"starts {starts.shape} and ends {ends.shape} must be equal 1-D shapes")
    if starts.size and (starts.min() < 0 or ends.max() > boxes.shape[0] or np.any(ends < starts)):
        raise ValueError(f"segments must satisfy 0 <= start <= end <= {boxes.shape[0]}")
    sig, nt, thr, meth, offset = _params(sigma, Nt, threshold, method, plus_one)
    keep = _check_max_keep(max_keep)
    return _soft_nms_segments_kernel(boxes, starts, ends, sig, nt, thr, meth, offset, keep)


def nms(dets: np.ndarray, thresh: float, *, plus_one: bool = True) -> np.ndarray:
    """Greedy hard NMS (the reference's ``cpu_nms``): kept row indices, int64, in
    output order.

    Rows are visited in ``scores.argsort()[::-1]`` order (numpy's default,
    non-stable sort, exactly as the reference, so equal scores come out in
    whatever order that gives); a row is suppressed when its IoU with a kept row
    is ``>= thresh`` (IoU in float32, compared with ``thresh`` as a double).
    Takes [N, 5] or wider; only columns 0-4 are read.
    """
    arr = np.asarray(dets)
    if arr.ndim != 2 or arr.shape[1] < 5:
        raise ValueError(f"dets must have shape [N, >=5] (x1, y1, x2, y2, score), got {arr.shape}")
    boxes = np.ascontiguousarray(arr[:, :5], dtype=np.float32)
    order = np.ascontiguousarray(boxes[:, 4].argsort()[::-1], dtype=np.int64)
    return _greedy_nms_kernel(boxes, order, float(thresh), 1.0 if plus_one else 0.0)
