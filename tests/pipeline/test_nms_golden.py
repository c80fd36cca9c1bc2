"""Soft-NMS and greedy NMS against the reference's own outputs (golden/nms_cases.npz),
plus small cases whose expected values are worked out by hand in the comments.

The golden soft-NMS rows must match bit for bit (reference section 7 and the golden
README: an independent re-implementation managed that); greedy NMS is compared
as sets within groups of equal scores, because the reference visits tied rows
in whatever order numpy's non-stable argsort gives.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from m2det_impl.pipeline.nms import nms, soft_nms, soft_nms_segments

pytestmark = pytest.mark.cpu

_SOFT_KEY = re.compile(r"soft_m(\d)_nt([\d.]+)_s([\d.]+)_t([\d.]+)_(\d+)$")
_HARD_KEY = re.compile(r"hard_iou([\d.]+)_(\d+)$")


@pytest.fixture(scope="module")
def cases(golden_dir):
    with np.load(golden_dir / "nms_cases.npz") as data:
        return {k: data[k] for k in data.files}


def _keys(pattern, cases):
    return sorted(k for k in cases if pattern.match(k))


def _soft_params(key):
    method, nt, sigma, thresh, case = _SOFT_KEY.match(key).groups()
    return dict(sigma=float(sigma), Nt=float(nt), threshold=float(thresh), method=int(method)), case


def test_golden_file_has_every_method_and_case(cases):
    """Guards the parametrised tests below against silently testing nothing."""
    soft = _keys(_SOFT_KEY, cases)
    assert {_SOFT_KEY.match(k).group(1) for k in soft} == {"0", "1", "2"}
    assert len(soft) == 16 and len(_keys(_HARD_KEY, cases)) == 8
    assert "soft_m1_nt0.3_s0.45_t0.001_2" in soft  # what the pipeline runs


def test_soft_nms_bit_exact_all_keys(cases):
    mismatches = []
    for key in _keys(_SOFT_KEY, cases):
        params, case = _soft_params(key)
        dets = cases[f"dets_{case}"]
        before = dets.copy()
        got = soft_nms(dets, **params)
        assert np.array_equal(dets, before), f"{key}: input modified"
        expected = cases[key]
        if got.dtype != np.float32 or not np.array_equal(got, expected):
            same_shape = got.shape == expected.shape
            diff = np.abs(got.astype(np.float64) - expected).max() if same_shape else None
            mismatches.append(
                f"{key}: got {got.shape} {got.dtype}, expected {expected.shape}, max diff {diff}"
            )
    assert not mismatches, "\n".join(mismatches)


@pytest.mark.parametrize("max_keep", [0, 1, 2, 7, 50, 1000])
def test_soft_nms_max_keep_is_a_prefix_of_the_reference(cases, max_keep):
    for key in _keys(_SOFT_KEY, cases):
        params, case = _soft_params(key)
        got = soft_nms(cases[f"dets_{case}"], **params, max_keep=max_keep)
        assert np.array_equal(got, cases[key][:max_keep]), key


def test_soft_nms_segments_equals_separate_calls(cases):
    """Several groups in one compiled call (what the pipeline does per class)
    give each group's golden output, whatever the neighbours."""
    params, _ = _soft_params("soft_m1_nt0.3_s0.45_t0.001_0")
    groups = [cases[f"dets_{c}"] for c in ("2", "0", "3", "1")]
    boxes = np.ascontiguousarray(np.concatenate(groups))
    ends = np.cumsum([len(g) for g in groups])
    starts = ends - [len(g) for g in groups]
    counts = soft_nms_segments(boxes, starts, ends, **params, max_keep=50)
    for start, count, case in zip(starts, counts, ("2", "0", "3", "1")):
        expected = cases[f"soft_m1_nt0.3_s0.45_t0.001_{case}"][:50]
        assert np.array_equal(boxes[start:start + count], expected), case


def _score_groups(scores, indices):
    """[(score, {indices with that score}), ...] in output order."""
    groups = []
    for i in indices:
        s = scores[i]
        if groups and groups[-1][0] == s:
            groups[-1][1].add(int(i))
        else:
            groups.append((s, {int(i)}))
    return groups


def test_greedy_nms_matches_reference_up_to_tie_order(cases):
    for key in _keys(_HARD_KEY, cases):
        thresh, case = _HARD_KEY.match(key).groups()
        dets = cases[f"dets_{case}"]
        got = nms(dets, float(thresh))
        assert got.dtype == np.int64
        expected = cases[key]
        assert sorted(got.tolist()) == sorted(expected.tolist()), key
        scores = dets[:, 4]
        assert _score_groups(scores, got) == _score_groups(scores, expected), key


def test_golden_inputs_exercise_ties(cases):
    """README: row 1 has exactly the score of row 0, row 3 the box of row 2."""
    dets = cases["dets_2"]
    assert dets[1, 4] == dets[0, 4]
    assert np.array_equal(dets[3, :4], dets[2, :4])


# ------------------------------------------------------- hand-worked cases
def test_linear_decay_by_hand():
    # A = [0,0,9,9] -> 10x10 = 100 with the +1; B = [0,0,9,4] -> 10x5 = 50.
    # Intersection 10x5 = 50, union 100 + 50 - 50 = 100, IoU 0.5 > Nt 0.3,
    # so B's score becomes 0.8 * (1 - 0.5) = 0.4 (exact in float32).
    dets = np.array([[0, 0, 9, 4, 0.8], [0, 0, 9, 9, 0.9]], dtype=np.float32)
    out = soft_nms(dets, sigma=0.45, Nt=0.3, threshold=0.001, method=1)
    expected = np.array([[0, 0, 9, 9, 0.9], [0, 0, 9, 4, np.float32(0.8) * np.float32(0.5)]], np.float32)
    assert np.array_equal(out, expected)


def test_plus_one_matters_by_hand():
    # A = [0,0,10,10], B = [0,5,10,15]: with "+1": 11x11 boxes overlapping in 11x6,
    # IoU = 66 / (121 + 121 - 66) = 0.375 > 0.3 -> B decays to 0.5 * 0.625 = 0.3125.
    # Without: 10x10 boxes, overlap 10x5, IoU = 50 / 150 = 1/3 > 0.3 -> 0.5 * (1 - 1/3).
    dets = np.array([[0, 0, 10, 10, 0.9], [0, 5, 10, 15, 0.5]], dtype=np.float32)
    with_one = soft_nms(dets, 0.45, 0.3, 0.001, 1)
    assert with_one[1, 4] == np.float32(0.3125)
    without = soft_nms(dets, 0.45, 0.3, 0.001, 1, plus_one=False)
    iou = np.float32(50) / np.float32(150)
    assert without[1, 4] == np.float32(0.5) * np.float32(1.0 - np.float64(iou))
    # greedy NMS at 0.35: suppressed with the +1 (0.375 >= 0.35), kept without (1/3)
    assert nms(dets, 0.35).tolist() == [0]
    assert nms(dets, 0.35, plus_one=False).tolist() == [0, 1]


def test_discarded_rows_are_replaced_by_the_last_row():
    # Row 1 duplicates row 0 (IoU 1 -> linear weight 0 -> discarded) and the
    # reference copies the LAST row over it. Rows 2 and 3 tie at 0.6, and ties
    # go to the first position: after the copy, row 3 sits at position 1, so it
    # comes out before row 2. (A removal that kept the order would give 2, 3.)
    dets = np.array(
        [[0, 0, 9, 9, 0.9], [0, 0, 9, 9, 0.8], [50, 50, 59, 59, 0.6], [100, 100, 109, 109, 0.6]],
        dtype=np.float32,
    )
    out = soft_nms(dets, 0.45, 0.3, 0.001, 1)
    assert np.array_equal(out, dets[[0, 3, 2]])


def test_equal_scores_keep_the_first_position():
    dets = np.array([[0, 0, 1, 1, 0.5], [10, 10, 11, 11, 0.5], [20, 20, 21, 21, 0.5]], np.float32)
    assert np.array_equal(soft_nms(dets, method=1), dets)


def test_gaussian_weight_by_hand():
    # The same pair as test_linear_decay_by_hand: IoU 0.5, sigma 0.5:
    # weight = exp(-0.25 / 0.5) = exp(-0.5), applied even below Nt.
    dets = np.array([[0, 0, 9, 9, 0.9], [0, 0, 9, 4, 0.8]], dtype=np.float32)
    out = soft_nms(dets, sigma=0.5, Nt=0.3, threshold=0.001, method=2)
    assert out[1, 4] == np.float32(0.8) * np.float32(np.exp(-0.5))


def test_empty_and_single_inputs():
    empty = np.zeros((0, 5), np.float32)
    assert soft_nms(empty).shape == (0, 5)
    assert nms(empty, 0.5).shape == (0,)
    one = np.array([[1, 2, 3, 4, 0.5]], np.float64)
    out = soft_nms(one, method=1)
    assert out.dtype == np.float32 and np.array_equal(out, one.astype(np.float32))


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: soft_nms(np.zeros((3, 4))), r"\[N, 5\].*\(3, 4\)"),
        (lambda: soft_nms(np.zeros(5)), r"\(5,\)"),
        (lambda: soft_nms(np.zeros((1, 5)), method=3), "method"),
        (lambda: soft_nms(np.zeros((1, 5)), max_keep=-1), "max_keep"),
        (lambda: nms(np.zeros((2, 4)), 0.5), r"\(2, 4\)"),
    ],
)
def test_bad_arguments_raise_clear_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()
