"""Property tests of ``m2det_impl.pipeline.nms`` and ``m2det_impl.pipeline.postprocess.{encode,decode}``.

Every property is checked against something that is not the code under test:

* ``tests/oracles/spec_nms.py``: a plain-Python transcription of docs/reference.md 7, proven
  bit-exact against the golden reference data by ``test_oracle_self_check.py``;
* ONNX Runtime's ``NonMaxSuppression`` operator and OpenCV's
  ``cv2.dnn.NMSBoxes`` for the modern (no "+1") hard NMS;
* algebraic facts that hold for any correct implementation (rows come from the
  input, scores never increase, translation and permutation invariance);
* a float64 evaluation of docs/reference.md 5 with an error bound derived below for decode.

Conventions of the external oracles (measured on onnxruntime 1.32 and
OpenCV 5.0.0 by probing hand-made cases; the probes are kept below as
``test_onnxruntime_conventions`` and ``test_opencv_conventions`` so that a
version change that alters them is noticed):

* ORT NonMaxSuppression: no +1; IoU in float32; suppresses when IoU > threshold
  (strict) where ``cpu_nms`` suppresses at IoU >= threshold; equal scores are
  taken in ascending index order; boxes of zero area never suppress nor get
  suppressed; corners are re-ordered (min/max) so an inverted box is the same
  as the upright one; scores must be > score_threshold.
* cv2.dnn.NMSBoxes (boxes as [x, y, w, h] doubles, Rect2d): no +1; IoU in
  double, then ``overlap = 1.f - (float)(1 - IoU)``; keeps a box when
  overlap <= threshold (suppresses when >); equal scores in ascending index
  order (stable sort); scores must be > score_threshold; two zero-area boxes
  count as IoU 1 (``jaccardDistance`` returns 0 when both areas are 0).

So both agree with the modern ``cpu_nms`` only away from the edges: the
strategies for those comparisons draw distinct scores, boxes of positive size,
and reject inputs where any pair's IoU lies within 1e-4 of the threshold
(float32 IoU errors are ~1e-7, so the margin leaves no doubt about which side
of the threshold a pair is on).
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from tests.oracles.spec_nms import (
    REFERENCE_SOFT_NMS_ARGS,
    SoftNMSTrace,
    canonical_keep,
    cpu_nms_oracle,
    iou_f32,
    soft_nms_oracle,
)

pytestmark = pytest.mark.cpu

import m2det_impl.pipeline.nms as nms_mod  # noqa: E402 - a broken import must fail, never skip

soft_nms = nms_mod.soft_nms
nms = nms_mod.nms

GOLDEN = Path(__file__).resolve().parents[2] / "fixtures" / "golden"
U32 = 2.0**-24  # unit roundoff of float32 (half an ulp of 1.0)


def f32(x: float) -> float:
    return float(np.float32(x))


# ------------------------------------------------------------------ strategies
# Scores: mostly arbitrary float32 in [0, 1], plus values chosen to create
# ties and to sit at / below / above the default discard threshold 0.001.
SPECIAL_SCORES = [0.9, 0.5, 0.5, 0.3, 0.05, 0.001, f32(0.001), 0.0009, 0.0005, 0.0, 1.0]
score_st = st.one_of(
    st.sampled_from([f32(s) for s in SPECIAL_SCORES]),
    st.floats(min_value=0.0, max_value=1.0, width=32),
)
# Pixel coordinates of an image up to ~1000 px, slightly outside it too
# (decoded boxes are not clipped).
coord_st = st.floats(min_value=-64.0, max_value=1024.0, width=32)
jitter_st = st.floats(min_value=-40.0, max_value=40.0, width=32)


@st.composite
def dets_st(
    draw,
    max_n: int = 40,
    min_size: float = 0.0,
    max_size: float = 300.0,
    inverted: bool = False,
    scores=score_st,
    duplicates: bool = True,
    distinct: bool = False,
) -> np.ndarray:
    """``[N, 5]`` float32 rows clustered around a few centres (so that boxes
    overlap a lot, as the candidates of one class do), with exact duplicates
    of boxes (same or other score) and, optionally, inverted boxes
    (x2 < x1 by up to 2 px, for which the +1 width is still >= -1).

    ``distinct=True`` replaces the scores by distinct multiples of 2**-20, for
    the properties that only hold without ties."""
    n = draw(st.integers(min_value=0, max_value=max_n))
    centres = draw(st.lists(st.tuples(coord_st, coord_st), min_size=1, max_size=4))
    size_lo = -2.0 if inverted else min_size
    size_st = st.floats(min_value=size_lo, max_value=max_size, width=32)
    rows: list[list[float]] = []
    for _ in range(n):
        if duplicates and rows and draw(st.integers(0, 7)) == 0:
            src = draw(st.sampled_from(rows))
            rows.append(src[:4] + [draw(scores)])
            continue
        cx, cy = draw(st.sampled_from(centres))
        x1 = f32(cx + draw(jitter_st))
        y1 = f32(cy + draw(jitter_st))
        x2 = f32(x1 + draw(size_st))
        y2 = f32(y1 + draw(size_st))
        rows.append([x1, y1, x2, y2, draw(scores)])
    out = np.array(rows, dtype=np.float32).reshape(n, 5)
    if distinct:
        ranks = draw(st.lists(st.integers(1, 2**20), min_size=n, max_size=n, unique=True))
        out[:, 4] = np.array(ranks, dtype=np.float64).reshape(n) * 2.0**-20
    return out


@st.composite
def grid_dets_st(draw, max_n: int = 30) -> np.ndarray:
    """Boxes on a 1/4-pixel grid within about [-80, 1100] px, sides up to 400 px.

    Every difference, area, intersection and union (with or without +1) is then
    exact in float32: areas are at most 401*401 in units of 1/16 px^2, i.e.
    < 2.6e6 units, unions twice that, all below 2**24. Only the IoU division,
    the weights and the score products round, and those docs/reference.md 7 defines.
    """
    n = draw(st.integers(min_value=0, max_value=max_n))
    centres = draw(st.lists(st.integers(0, 800), min_size=1, max_size=3))
    rows = []
    for _ in range(n):
        c = draw(st.sampled_from(centres))
        x1 = c + draw(st.integers(-320, 320)) * 0.25
        y1 = c + draw(st.integers(-320, 320)) * 0.25
        w = draw(st.integers(0, 1600)) * 0.25
        h = draw(st.integers(0, 1600)) * 0.25
        rows.append([x1, y1, x1 + w, y1 + h, draw(score_st)])
    return np.array(rows, dtype=np.float32).reshape(n, 5)


soft_params_st = st.one_of(
    # The fixed settings of the golden file, the pipeline's first.
    st.sampled_from(
        [
            (0.45, 0.3, 0.001),
            (0.5, 0.3, 0.001),
            (0.5, 0.45, 0.001),
            (0.5, 0.5, 0.05),
        ]
    ),
    st.tuples(
        st.floats(min_value=0.05, max_value=2.0),  # sigma
        st.floats(min_value=0.0, max_value=0.95),  # Nt
        st.floats(min_value=0.0, max_value=0.5),  # threshold
    ),
)
method_st = st.sampled_from([0, 1, 2])
thresh_st = st.one_of(st.sampled_from([0.3, 0.45, 0.5, 0.7]), st.floats(min_value=0.05, max_value=0.95))


def _call_soft(dets, params, method, **kw):
    sigma, nt, thr = params
    return soft_nms(dets, sigma=sigma, Nt=nt, threshold=thr, method=method, **kw)


def _as_keep(result) -> np.ndarray:
    keep = np.asarray(result)
    assert keep.dtype == np.int64, f"kept indices must be int64, got {keep.dtype}"
    assert keep.ndim == 1
    return keep


# ------------------------------------------------------------------ soft-NMS
@given(dets=dets_st(inverted=True), params=soft_params_st, method=method_st)
def test_soft_nms_equals_oracle(dets, params, method):
    """Bit-exact agreement with the reference (docs/reference.md) 7 transcription (docs/reference.md demands "soft-NMS
    exact on identical input"), ties, duplicates and degenerate boxes included."""
    sigma, nt, thr = params
    expected = soft_nms_oracle(dets, sigma, nt, thr, method)
    out = _call_soft(dets, params, method)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    assert out.shape == expected.shape
    assert np.array_equal(out, expected)


@given(dets=dets_st(max_n=80), data=st.data())
def test_soft_nms_max_keep_is_a_prefix(dets, data):
    """Rows are final once selected (docs/reference.md 7), so keeping the first k outputs is
    the same as truncating the full output, whatever the implementation does
    to stop early."""
    k = data.draw(st.integers(min_value=0, max_value=len(dets) + 2))
    full = soft_nms_oracle(dets, **REFERENCE_SOFT_NMS_ARGS)
    out = soft_nms(dets, **REFERENCE_SOFT_NMS_ARGS, max_keep=k)
    assert out.dtype == np.float32
    assert np.array_equal(out, full[:k])


@given(dets=grid_dets_st(), params=soft_params_st, method=method_st, plus_one=st.booleans())
def test_soft_nms_equals_oracle_on_exact_grid(dets, params, method, plus_one):
    """Quarter-pixel boxes make IoUs exact fractions, so an IoU can land exactly
    on Nt here, which random floats never do (it stays rare, so the Nt tie is
    also pinned by a hand-made case, ``nt_is_float32``). This also covers
    plus_one=False, the modern variant: docs/reference.md does not
    define its rounding, but on this grid every area, intersection and union
    is exact, and the remaining roundings (the IoU division, the weight, the
    score product) are those of docs/reference.md 7."""
    sigma, nt, thr = params
    expected = soft_nms_oracle(dets, sigma, nt, thr, method, plus_one=plus_one)
    out = _call_soft(dets, params, method, plus_one=plus_one)
    assert out.dtype == np.float32
    assert np.array_equal(out, expected)


def _dominated(out: np.ndarray, dets: np.ndarray) -> None:
    """Each output row is a distinct input row with the same box and a score
    no larger. Grouped by box, sorting both score lists in descending order and
    comparing elementwise decides whether such a one-to-one matching exists."""
    def groups(a):
        g: dict[tuple, list[float]] = {}
        for row in a:
            g.setdefault(tuple(row[:4].tolist()), []).append(float(row[4]))
        return {k: sorted(v, reverse=True) for k, v in g.items()}

    gin, gout = groups(dets), groups(out)
    for box, out_scores in gout.items():
        assert box in gin, f"output box {box} is not an input box"
        in_scores = gin[box]
        assert len(out_scores) <= len(in_scores), f"box {box} output more often than input"
        for o, i in zip(out_scores, in_scores):
            assert o <= i, f"score of box {box} increased: {i} -> {o}"


@given(dets=dets_st(inverted=True), params=soft_params_st, method=method_st)
def test_soft_nms_rows_come_from_input_and_scores_never_increase(dets, params, method):
    out = _call_soft(dets, params, method)
    _dominated(out, dets)


@given(dets=dets_st(inverted=True), params=soft_params_st, method=method_st)
def test_soft_nms_output_scores_are_non_increasing(dets, params, method):
    """docs/reference.md 7 step 1 selects the maximum of the remaining re-scored rows, and
    every weight is in [0, 1] (1 - ov with ov > Nt >= 0; exp of a non-positive
    number; 0 or 1), so with non-negative input scores no later row can
    outscore an earlier one."""
    out = _call_soft(dets, params, method)
    assert np.all(np.diff(out[:, 4].astype(np.float64)) <= 0)


@given(dets=dets_st(inverted=True), params=soft_params_st, method=method_st)
def test_soft_nms_does_not_modify_input(dets, params, method):
    # The reference works in place on its argument; the API promises not to.
    before = dets.copy()
    _call_soft(dets, params, method)
    assert np.array_equal(dets, before)
    # A read-only input must be accepted too (the API copies, it does not write).
    frozen = dets.copy()
    frozen.flags.writeable = False
    assert np.array_equal(_call_soft(frozen, params, method), soft_nms_oracle(dets, *params, method))


# ------------------------------------------------------------------ hard NMS
@given(dets=dets_st(), thresh=thresh_st, plus_one=st.booleans())
def test_nms_equals_oracle(dets, thresh, plus_one):
    """Equal to the cpu_nms transcription: as lists when the scores are
    distinct, tied scores compared as sets (the reference orders ties by
    numpy's non-stable argsort). Zero-size boxes are drawn; with plus_one=False
    two zero-area boxes would make the reference divide 0 by 0, so those
    inputs are skipped."""
    try:
        expected = cpu_nms_oracle(dets, thresh, plus_one=plus_one)
    except ZeroDivisionError:
        assume(False)
    keep = _as_keep(nms(dets, thresh, plus_one=plus_one))
    if len(np.unique(dets[:, 4])) == len(dets):
        assert keep.tolist() == expected
    else:
        assert canonical_keep(keep, dets[:, 4]) == canonical_keep(expected, dets[:, 4])


@given(dets=dets_st(), thresh=thresh_st)
def test_nms_kept_pairwise_below_threshold_and_suppressed_covered(dets, thresh):
    """Greedy NMS invariants, with the reference's own IoU (float32, +1) and
    comparison (float32 IoU against the double threshold): kept boxes overlap
    each other below the threshold, and every dropped box overlaps, at or
    above the threshold, some kept box scored at least as high."""
    keep = _as_keep(nms(dets, thresh)).tolist()
    assert len(set(keep)) == len(keep)
    assert all(0 <= k < len(dets) for k in keep)
    iou = iou_f32(dets)
    for a in range(len(keep)):
        for b in range(a + 1, len(keep)):
            assert float(iou[keep[a], keep[b]]) < thresh
    scores = dets[:, 4]
    for j in set(range(len(dets))) - set(keep):
        assert any(float(iou[k, j]) >= thresh and scores[k] >= scores[j] for k in keep), j
    # Output order is descending score.
    assert np.all(np.diff(scores[keep].astype(np.float64)) <= 0)


@given(dets=dets_st(), thresh=thresh_st)
def test_nms_does_not_modify_input(dets, thresh):
    before = dets.copy()
    frozen = dets.copy()
    frozen.flags.writeable = False
    a = _as_keep(nms(dets, thresh))
    b = _as_keep(nms(frozen, thresh))
    assert np.array_equal(dets, before)
    assert np.array_equal(a, b)


def _iou64(dets: np.ndarray, plus_one: bool) -> np.ndarray:
    """Exact-enough IoU in float64, written independently of both the oracle
    and the implementation (numpy broadcasting), to find near-threshold pairs."""
    b = dets[:, :4].astype(np.float64)
    one = 1.0 if plus_one else 0.0
    area = (b[:, 2] - b[:, 0] + one) * (b[:, 3] - b[:, 1] + one)
    w = np.maximum(0.0, np.minimum(b[:, None, 2], b[None, :, 2]) - np.maximum(b[:, None, 0], b[None, :, 0]) + one)
    h = np.maximum(0.0, np.minimum(b[:, None, 3], b[None, :, 3]) - np.maximum(b[:, None, 1], b[None, :, 1]) + one)
    inter = w * h
    return inter / (area[:, None] + area[None, :] - inter)


def _clear_of_edges(dets: np.ndarray, thresh: float, plus_one: bool) -> bool:
    """Distinct scores and no pair's IoU within 1e-4 of the threshold."""
    if len(np.unique(dets[:, 4])) != len(dets):
        return False
    if len(dets) < 2:
        return True
    iou = _iou64(dets, plus_one)
    off = ~np.eye(len(dets), dtype=bool)
    return bool(np.all(np.abs(iou[off] - thresh) > 1e-4))


# Distinct positive scores (cv2 keeps only scores > score_threshold = 0).
clean_dets_st = dets_st(max_n=30, min_size=0.5, distinct=True)


@functools.lru_cache(maxsize=1)
def _ort_nms_session():
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    node = helper.make_node(
        "NonMaxSuppression",
        ["boxes", "scores", "max_out", "iou", "score_thr"],
        ["selected"],
        center_point_box=0,  # corners [y1, x1, y2, x2]
    )
    graph = helper.make_graph(
        [node],
        "nms_oracle",
        [
            helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, None, 4]),
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 1, None]),
            helper.make_tensor_value_info("max_out", TensorProto.INT64, [1]),
            helper.make_tensor_value_info("iou", TensorProto.FLOAT, [1]),
            helper.make_tensor_value_info("score_thr", TensorProto.FLOAT, [1]),
        ],
        [helper.make_tensor_value_info("selected", TensorProto.INT64, [None, 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    onnx.checker.check_model(model)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def ort_nms(dets: np.ndarray, thresh: float, score_threshold: float = -1.0) -> list[int]:
    """Kept indices from ORT's NonMaxSuppression (one batch, one class)."""
    sess = _ort_nms_session()
    boxes = np.ascontiguousarray(dets[:, [1, 0, 3, 2]], dtype=np.float32)[None]
    scores = np.ascontiguousarray(dets[:, 4], dtype=np.float32)[None, None]
    (sel,) = sess.run(
        None,
        {
            "boxes": boxes,
            "scores": scores,
            "max_out": np.array([max(len(dets), 1)], np.int64),
            "iou": np.array([thresh], np.float32),
            "score_thr": np.array([score_threshold], np.float32),
        },
    )
    return sel[:, 2].tolist()


def cv2_nms(dets: np.ndarray, thresh: float, score_threshold: float = 0.0) -> list[int]:
    """Kept indices from cv2.dnn.NMSBoxes; boxes as [x, y, w, h] doubles."""
    cv2 = pytest.importorskip("cv2")
    b = dets[:, :4].astype(np.float64)
    rects = [[x1, y1, x2 - x1, y2 - y1] for x1, y1, x2, y2 in b.tolist()]
    res = cv2.dnn.NMSBoxes(rects, dets[:, 4].astype(float).tolist(), score_threshold, float(thresh))
    return np.asarray(res, dtype=np.int64).reshape(-1).tolist()


@given(dets=clean_dets_st, thresh=thresh_st)
def test_nms_modern_equals_onnxruntime(dets, thresh):
    assume(_clear_of_edges(dets, thresh, plus_one=False))
    keep = _as_keep(nms(dets, thresh, plus_one=False)).tolist()
    assert keep == ort_nms(dets, thresh)


@given(dets=clean_dets_st, thresh=thresh_st)
def test_nms_modern_equals_opencv(dets, thresh):
    assume(_clear_of_edges(dets, thresh, plus_one=False))
    keep = _as_keep(nms(dets, thresh, plus_one=False)).tolist()
    assert keep == cv2_nms(dets, thresh)


def test_onnxruntime_conventions():
    """The ORT behaviours the docstring relies on, probed on exact cases."""
    pair = np.array([[0, 0, 10, 10, 0.9], [5, 0, 15, 10, 0.8]], np.float32)  # IoU 1/3
    assert ort_nms(pair, 0.34) == [0, 1]
    assert ort_nms(pair, 0.3) == [0]
    assert ort_nms(pair, f32(1 / 3)) == [0, 1]  # IoU == threshold: kept (">")
    assert cpu_nms_oracle(pair, f32(1 / 3), plus_one=False) == [0]  # cpu_nms: ">="
    ties = np.array([[0, 0, 10, 10, 0.8]] * 3, np.float32)
    assert ort_nms(ties, 0.5) == [0]  # lowest index first
    zero = np.array([[0, 0, 0, 0, 0.8], [0, 0, 0, 0, 0.7]], np.float32)
    assert ort_nms(zero, 0.5) == [0, 1]  # zero-area boxes are never suppressed
    flipped = np.array([[10, 10, 0, 0, 0.8], [0, 0, 10, 10, 0.7]], np.float32)
    assert ort_nms(flipped, 0.5) == [0]  # corners re-ordered
    assert ort_nms(np.zeros((0, 5), np.float32), 0.5) == []


def test_opencv_conventions():
    """The OpenCV behaviours the docstring relies on, probed on exact cases."""
    pair = np.array([[0, 0, 10, 10, 0.9], [5, 0, 15, 10, 0.8]], np.float32)  # IoU 1/3 without +1
    assert cv2_nms(pair, 0.34) == [0, 1]
    assert cv2_nms(pair, 0.3) == [0]  # no +1: with +1 the IoU would be 0.375
    # Fractional boxes are not rounded to integers (Rect2d): IoU 52/154 = 0.3377.
    frac = np.array([[0, 0, 10.6, 10, 0.9], [5.4, 0, 15.4, 10, 0.8]], np.float32)
    assert cv2_nms(frac, 0.335) == [0]
    assert cv2_nms(frac, 0.34) == [0, 1]
    # IoU exactly 1/3: 1 - float(2/3) = 0.33333331 <= float32(1/3): kept.
    assert cv2_nms(pair, f32(1 / 3)) == [0, 1]
    ties = np.array([[0, 0, 10, 10, 0.8]] * 3, np.float32)
    assert cv2_nms(ties, 0.5) == [0]
    zero = np.array([[0, 0, 0, 0, 0.8], [0, 0, 0, 0, 0.7]], np.float32)
    assert cv2_nms(zero, 0.5) == [0]  # two zero areas: IoU counted as 1
    scored = np.array([[0, 0, 1, 1, 0.5], [5, 5, 6, 6, 0.4]], np.float32)
    assert cv2_nms(scored, 0.5, score_threshold=0.4) == [0]  # strict ">"


# ---------------------------------------------------------- invariances
@given(
    data=st.data(),
    ox=st.integers(min_value=-512, max_value=512),
    oy=st.integers(min_value=-512, max_value=512),
    params=soft_params_st,
    method=method_st,
    thresh=thresh_st,
    plus_one=st.booleans(),
)
def test_translation_invariance(data, ox, oy, params, method, thresh, plus_one):
    """Shift every box by integer offsets. Coordinates are on a 1/16 pixel grid
    within +-2048, so both the originals and the shifted values are exact in
    float32 and every difference the algorithms compute is bit-identical: the
    results must be identical, not merely close."""
    n = data.draw(st.integers(0, 30))
    grid = st.integers(min_value=-16 * 256, max_value=16 * 1024).map(lambda v: v / 16.0)
    size = st.integers(min_value=0, max_value=16 * 300).map(lambda v: v / 16.0)
    rows = []
    for _ in range(n):
        x1, y1 = data.draw(grid), data.draw(grid)
        rows.append([x1, y1, x1 + data.draw(size), y1 + data.draw(size), data.draw(score_st)])
    dets = np.array(rows, np.float32).reshape(n, 5)
    shifted = dets.copy()
    shifted[:, [0, 2]] += np.float32(ox)
    shifted[:, [1, 3]] += np.float32(oy)
    assert np.array_equal(shifted[:, [0, 2]].astype(np.float64) - ox, dets[:, [0, 2]])  # exact

    out = _call_soft(dets, params, method, plus_one=plus_one)
    out_s = _call_soft(shifted, params, method, plus_one=plus_one)
    back = out_s.copy()
    back[:, [0, 2]] -= np.float32(ox)
    back[:, [1, 3]] -= np.float32(oy)
    assert np.array_equal(back, out)

    try:
        cpu_nms_oracle(dets, thresh, plus_one=plus_one)
    except ZeroDivisionError:
        return  # the reference itself fails on this input (two zero-area boxes)
    assert np.array_equal(_as_keep(nms(shifted, thresh, plus_one=plus_one)), _as_keep(nms(dets, thresh, plus_one=plus_one)))


@given(dets=dets_st(inverted=True, distinct=True), params=soft_params_st, method=method_st, data=st.data())
def test_soft_nms_permutation_invariance(dets, params, method, data):
    """Only ties at a selection step make the output depend on row order
    ("the first such position"); the oracle's trace says when none occurred,
    and then a permuted input must give the very same output rows."""
    trace = SoftNMSTrace()
    soft_nms_oracle(dets, *params, method, trace=trace)
    assume(trace.tied_selections == 0)
    perm = np.array(data.draw(st.permutations(range(len(dets)))), dtype=np.int64)
    out = _call_soft(dets, params, method)
    out_p = _call_soft(dets[perm] if len(dets) else dets, params, method)
    assert np.array_equal(out_p, out)


@given(dets=dets_st(distinct=True), thresh=thresh_st, data=st.data())
def test_nms_permutation_invariance(dets, thresh, data):
    perm = np.array(data.draw(st.permutations(range(len(dets)))), dtype=np.int64)
    keep = _as_keep(nms(dets, thresh))
    keep_p = _as_keep(nms(dets[perm] if len(dets) else dets, thresh))
    # Row r of the permuted input is row perm[r] of the original.
    assert perm[keep_p].tolist() == keep.tolist()


# ------------------------------------------------------------------ edge sizes
@pytest.mark.parametrize("method", [0, 1, 2])
@pytest.mark.parametrize("plus_one", [True, False])
def test_empty_input(method, plus_one):
    empty = np.zeros((0, 5), np.float32)
    out = soft_nms(empty, method=method, plus_one=plus_one)
    assert out.shape == (0, 5) and out.dtype == np.float32
    keep = _as_keep(nms(empty, 0.45, plus_one=plus_one))
    assert keep.shape == (0,)


@given(
    row=st.tuples(coord_st, coord_st, coord_st, coord_st, score_st),
    params=soft_params_st,
    method=method_st,
    plus_one=st.booleans(),
)
def test_single_box(row, params, method, plus_one):
    """One row is selected at step 1 and nothing is compared with it: it comes
    back unchanged even when its score is below the discard threshold, and
    even if the box is inverted."""
    dets = np.array([row], np.float32)
    assert np.array_equal(_call_soft(dets, params, method, plus_one=plus_one), dets)
    assert _as_keep(nms(dets, 0.45, plus_one=plus_one)).tolist() == [0]


# ------------------------------------------------ hand-made convention cases
def _rows(*rows) -> np.ndarray:
    return np.array(rows, dtype=np.float32)


# Each case isolates one convention of docs/reference.md 7 that random data rarely hits; the
# oracle's answer for each is derived by hand in test_oracle_self_check.py.
SOFT_CASES = {
    # Removal copies the LAST row over the removed one: D then overtakes C on
    # their tie (a stable compaction would output C first).
    "copy_last_row_tie": (
        _rows([0, 0, 9, 9, 0.9], [0, 0, 9, 9, 0.5], [200, 200, 209, 209, 0.4], [100, 100, 109, 109, 0.4]),
        dict(method=0),
    ),
    # ov = 3/10 rounds to float32(0.3) == Nt as a C float: not decayed.
    "nt_is_float32": (_rows([0, 0, 9, 0, 0.9], [0, 0, 2, 0, 0.8]), dict(sigma=0.45, Nt=0.3, threshold=0.001, method=1)),
    # Threshold test only for overlapping rows: the far low-score row survives.
    "threshold_only_when_overlapping": (
        _rows([0, 0, 9, 9, 0.9], [100, 100, 109, 109, 0.0005], [0, 0, 9, 0, 0.0005]),
        dict(method=1),
    ),
    # Equal scores: the first position wins.
    "first_position_wins": (_rows([0, 0, 9, 9, 0.7], [50, 50, 59, 59, 0.7], [100, 0, 109, 9, 0.7]), dict(method=1)),
    # +1 pixel areas: ov = 50/150 = 1/3 > 0.3 (without +1 it would be 0.2857).
    "plus_one_areas": (_rows([0, 0, 9, 9, 0.9], [5, 0, 14, 9, 0.8]), dict(Nt=0.3, method=0)),
    # Gaussian on ov = 1/2: exp(-0.25/0.5) in double, stored in float32.
    "gaussian_half": (_rows([0, 0, 9, 9, 0.9], [0, 0, 9, 4, 0.8]), dict(sigma=0.5, method=2)),
    # Zero-size boxes (+1 area 1) and an inverted one (+1 width 0: no overlap).
    "degenerate": (
        _rows([3, 3, 3, 3, 0.9], [3, 3, 3, 3, 0.8], [5, 5, 4, 6, 0.7], [3, 3, 4, 4, 0.6]),
        dict(method=1),
    ),
}


@pytest.mark.parametrize("name", sorted(SOFT_CASES))
def test_soft_nms_convention_cases(name):
    dets, kw = SOFT_CASES[name]
    expected = soft_nms_oracle(dets, **kw)
    assert np.array_equal(soft_nms(dets, **kw), expected)


HARD_CASES = {
    # IoU 9/20 -> float32(0.45) = 0.449999988 < 0.45 (double): NOT suppressed.
    "iou_equals_thresh_in_float32": (_rows([0, 0, 19, 0, 0.9], [0, 0, 8, 0, 0.8]), 0.45, [0, 1]),
    # IoU exactly 1/2 at threshold 0.5: suppressed (">=").
    "iou_equals_thresh_exactly": (_rows([0, 0, 9, 0, 0.9], [0, 0, 4, 0, 0.8]), 0.5, [0]),
    # +1 areas: IoU 1/3 > 0.3.
    "plus_one": (_rows([0, 0, 9, 9, 0.9], [5, 0, 14, 9, 0.8]), 0.3, [0]),
    # Zero-size identical boxes: +1 areas 1, IoU 1.
    "zero_size": (_rows([3, 3, 3, 3, 0.9], [3, 3, 3, 3, 0.8]), 0.99, [0]),
}


@pytest.mark.parametrize("name", sorted(HARD_CASES))
def test_nms_convention_cases(name):
    dets, thresh, expected = HARD_CASES[name]
    assert cpu_nms_oracle(dets, thresh) == expected  # the oracle, for the record
    assert _as_keep(nms(dets, thresh)).tolist() == expected


# ------------------------------------------------------------ encode / decode
def _postprocess():
    # A plain import: a broken module of our own must fail these tests, never skip them.
    import m2det_impl.pipeline.postprocess as postprocess

    return postprocess


def _golden_priors() -> np.ndarray:
    with np.load(GOLDEN / "priors.npz") as d:
        return d["priors_512"]


PRIORS_512 = _golden_priors()
prior_idx_st = st.lists(st.integers(min_value=0, max_value=len(PRIORS_512) - 1), min_size=1, max_size=64)


def _decode_bound(priors: np.ndarray, loc: np.ndarray, variances=(0.1, 0.2)) -> tuple[np.ndarray, np.ndarray]:
    """Float64 value of docs/reference.md 5 and a rigorous-in-spirit float32 error bound.

    With u = 2**-24, every float32 operation adds a relative error <= u; an
    ulp is at most 2u relative, and numpy documents its SIMD float32 ``exp``
    within 2.52 ulp (<= 5.04u, counted as 6u; a float64 exp rounded once is
    within u). Writing t = l0*v0*pw (centre offset) and a = l2*v1 (exp argument):
      cx:  (l0*v0) and (*pw) give 2u|t| (+ u|t| for float32(0.1) != 0.1),
           (+ pcx) gives u|cx|                   -> E_c = u (|cx| + 3|t|)
      w:   (l2*v1) 2u|a| in the argument (both rounding and float32(0.2)),
           exp 6u, (*pw) u                      -> E_w = w u (7 + 2|a|)
      x1 = cx - w/2: E_x1 = E_c + E_w/2 + u|x1|
      x2 = x1 + w:   E_x2 = E_x1 + E_w + u|x2|  (x2 is built from x1, docs/reference.md 5)
    First-order terms only; the neglected O(u^2) terms are 1e-6 of these, so
    the bound is used as is, without a fudge factor.
    """
    p = priors.astype(np.float64)
    offsets = loc.astype(np.float64)
    v0, v1 = variances
    t = offsets[:, :2] * v0 * p[:, 2:]
    c = p[:, :2] + t
    a = offsets[:, 2:] * v1
    w = p[:, 2:] * np.exp(a)
    x1 = c - w / 2
    x2 = x1 + w
    e_c = U32 * (np.abs(c) + 3 * np.abs(t))
    e_w = w * U32 * (7 + 2 * np.abs(a))
    e1 = e_c + e_w / 2 + U32 * np.abs(x1)
    e2 = e1 + e_w + U32 * np.abs(x2)
    return np.concatenate([x1, x2], axis=1), np.concatenate([e1, e2], axis=1)


@given(
    idx=prior_idx_st,
    data=st.data(),
)
def test_decode_matches_spec_formula(idx, data):
    priors = PRIORS_512[idx]
    n = len(idx)
    offs = st.floats(min_value=-5.0, max_value=5.0, width=32)
    loc = np.array([[data.draw(offs) for _ in range(4)] for _ in range(n)], np.float32)
    out = _postprocess().decode(loc, priors, (0.1, 0.2))
    assert out.dtype == np.float32 and out.shape == (n, 4)
    exact, bound = _decode_bound(priors, loc)
    err = np.abs(out.astype(np.float64) - exact)
    assert np.all(err <= bound), (err / bound).max()


def _round_trip_bound(boxes: np.ndarray, priors: np.ndarray) -> np.ndarray:
    """Error bound of decode(encode(b)) - b, float32 arithmetic on both sides.

    encode (the SSD inverse of docs/reference.md 5): c = (x1 + x2)/2, d = c - pc,
    l0 = d / (v0 * pw); w = x2 - x1, l2 = log(w / pw) / v1.
    Centre: (x1+x2) u|c|, (-pc) u|d|, (v0*pw) and (/) 2u|d|, then decode's
    two products 2u|d| and float32(0.1) u|d|, (+pc) u|c|: E_c = u (2|c| + 6|d|).
    Width, with r = w/pw: (x2-x1) u and (w/pw) u, which log turns into an
    absolute 2u; log itself 8u|ln r| (numpy's SIMD float32 log is documented
    within 3.83 ulp <= 7.66u); (/v1), decode's (*v1) and float32(0.2) != 0.2
    3u|ln r|; exp 6u (2.52 ulp); (*pw) u:  E_w = w u (9 + 11|ln r|).
    Then E_x1 = E_c + E_w/2 + u|x1| and E_x2 = E_x1 + E_w + u|x2|.
    An encode done in float64 is strictly more accurate, so the bound holds
    for it too.
    """
    b = boxes.astype(np.float64)
    p = priors.astype(np.float64)
    c = (b[:, :2] + b[:, 2:]) / 2
    d = c - p[:, :2]
    w = b[:, 2:] - b[:, :2]
    lnr = np.abs(np.log(w / p[:, 2:]))
    e_c = U32 * (2 * np.abs(c) + 6 * np.abs(d))
    e_w = w * U32 * (9 + 11 * lnr)
    e1 = e_c + e_w / 2 + U32 * np.abs(b[:, :2])
    e2 = e1 + e_w + U32 * np.abs(b[:, 2:])
    return np.concatenate([e1, e2], axis=1)


@given(idx=prior_idx_st, data=st.data())
def test_decode_encode_round_trip(idx, data):
    """decode(encode(b)) == b within the bound above, for normalised boxes of
    positive size anywhere in (and a little outside) the image, matched to
    arbitrary priors of the 512 model: |ln(w/pw)| reaches ~5.5 here."""
    priors = PRIORS_512[idx]
    n = len(idx)
    pos = st.floats(min_value=f32(-0.1), max_value=1.0, width=32)
    size = st.floats(min_value=f32(0.005), max_value=1.0, width=32)
    rows = []
    for _ in range(n):
        x1, y1 = data.draw(pos), data.draw(pos)
        rows.append([x1, y1, f32(x1 + data.draw(size)), f32(y1 + data.draw(size))])
    boxes = np.array(rows, np.float32)
    assume(np.all(boxes[:, 2:] > boxes[:, :2]))
    loc = _postprocess().encode(boxes, priors, (0.1, 0.2))
    assert loc.shape == (n, 4)
    back = _postprocess().decode(np.asarray(loc, np.float32), priors, (0.1, 0.2))
    err = np.abs(back.astype(np.float64) - boxes.astype(np.float64))
    bound = _round_trip_bound(boxes, priors)
    assert np.all(err <= bound), (err / bound).max()
