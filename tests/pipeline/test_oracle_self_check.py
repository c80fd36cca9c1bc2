"""The NMS oracle (tests/oracles/spec_nms.py) proven against the reference.

An oracle is only worth trusting after it has been checked against the thing it
claims to imitate. Three kinds of evidence, all cpu-only:

1. Golden data: the oracle reproduces every soft-NMS array of
   ``fixtures/golden/nms_cases.npz`` bit for bit and every hard-NMS kept list
   (tied scores compared as sets, as golden/README.md asks).
2. Mutation checks: plausible wrong roundings of the same algorithm do NOT
   reproduce the golden data. Without these, "bit-exact" might only mean the
   golden cases are too easy to tell roundings apart.
3. Hand-computed cases for the conventions the golden data cannot see (its
   boxes are random floats, so no IoU lands exactly on a threshold): each case
   is built from integer boxes whose IoU is an exact small fraction, and the
   expected outcome is derived in the comments from the reference's C code.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from tests.oracles.spec_nms import (
    REFERENCE_SOFT_NMS_ARGS,
    SoftNMSTrace,
    canonical_keep,
    cpu_nms_oracle,
    iou_f32,
    soft_nms_oracle,
)

pytestmark = pytest.mark.cpu

NMS_CASES = Path(__file__).resolve().parents[2] / "fixtures" / "golden" / "nms_cases.npz"
SOFT_KEY = re.compile(r"soft_m(?P<m>\d)_nt(?P<nt>[\d.]+)_s(?P<s>[\d.]+)_t(?P<t>[\d.]+)_(?P<k>\d+)$")
HARD_KEY = re.compile(r"hard_iou(?P<t>[\d.]+)_(?P<k>\d+)$")


def _golden() -> dict[str, np.ndarray]:
    with np.load(NMS_CASES) as data:
        return {k: data[k] for k in data.files}


GOLDEN = _golden()
SOFT_KEYS = sorted(k for k in GOLDEN if SOFT_KEY.match(k))
HARD_KEYS = sorted(k for k in GOLDEN if HARD_KEY.match(k))


def _soft_args(key: str) -> tuple[np.ndarray, dict]:
    m = SOFT_KEY.match(key)
    assert m is not None
    kwargs = {
        "sigma": float(m["s"]),
        "Nt": float(m["nt"]),
        "threshold": float(m["t"]),
        "method": int(m["m"]),
    }
    return GOLDEN[f"dets_{m['k']}"], kwargs


def test_golden_file_has_the_expected_cases():
    # 4 inputs x 4 soft-NMS settings and 4 x 2 hard thresholds (golden/README.md);
    # guards against silently testing nothing if the file changes.
    assert len(SOFT_KEYS) == 16
    assert len(HARD_KEYS) == 8
    assert all(GOLDEN[f"dets_{k}"].dtype == np.float32 for k in range(4))


@pytest.mark.parametrize("key", SOFT_KEYS)
def test_soft_nms_oracle_is_bit_exact_on_golden(key):
    dets, kwargs = _soft_args(key)
    before = dets.copy()
    out = soft_nms_oracle(dets, **kwargs)
    assert out.dtype == np.float32
    assert out.shape == GOLDEN[key].shape
    assert np.array_equal(out, GOLDEN[key])
    assert np.array_equal(dets, before), "the oracle must not modify its input"


@pytest.mark.parametrize("k", range(4))
def test_reference_call_is_the_pipeline_setting(k):
    # docs/reference.md 7: the pipeline's call is cpu_soft_nms(dets, 0.45, method=1); the
    # golden key for it is soft_m1_nt0.3_s0.45_t0.001_k.
    out = soft_nms_oracle(GOLDEN[f"dets_{k}"], **REFERENCE_SOFT_NMS_ARGS)
    assert np.array_equal(out, GOLDEN[f"soft_m1_nt0.3_s0.45_t0.001_{k}"])


@pytest.mark.parametrize("key", HARD_KEYS)
def test_cpu_nms_oracle_matches_golden(key):
    m = HARD_KEY.match(key)
    dets = GOLDEN[f"dets_{m['k']}"]
    keep = cpu_nms_oracle(dets, float(m["t"]))
    expected = GOLDEN[key]
    assert expected.dtype == np.int64
    # Ties in score follow numpy's non-stable argsort: compare them as sets.
    assert canonical_keep(keep, dets[:, 4]) == canonical_keep(expected, dets[:, 4])


# ------------------------------------------------------------ mutation checks
@pytest.mark.parametrize("mutation", ["union_inter_double", "exp_float32", "all_double"])
def test_golden_rejects_wrong_roundings(mutation):
    """Each plausible mis-rounding changes at least one golden soft-NMS array.

    ``union_inter_double`` is the reading of docs/reference.md 7's prose ("the products for
    the areas and the union in double") that computes ``iw*ih`` in double inside
    the union: the golden data rules it out, so ``iw*ih`` is a float32 product.
    """
    mismatched = []
    for key in SOFT_KEYS:
        dets, kwargs = _soft_args(key)
        out = soft_nms_oracle(dets, **kwargs, _mutations=frozenset({mutation}))
        if not np.array_equal(out, GOLDEN[key]):
            mismatched.append(key)
    assert mismatched, f"golden data cannot distinguish mutation {mutation!r}"


def test_golden_rejects_the_modern_convention():
    soft_mismatch = [
        key
        for key in SOFT_KEYS
        if not np.array_equal(
            soft_nms_oracle(_soft_args(key)[0], **_soft_args(key)[1], plus_one=False), GOLDEN[key]
        )
    ]
    hard_mismatch = []
    for key in HARD_KEYS:
        m = HARD_KEY.match(key)
        dets = GOLDEN[f"dets_{m['k']}"]
        keep = cpu_nms_oracle(dets, float(m["t"]), plus_one=False)
        if canonical_keep(keep, dets[:, 4]) != canonical_keep(GOLDEN[key], dets[:, 4]):
            hard_mismatch.append(key)
    assert soft_mismatch and hard_mismatch


# ---------------------------------------------- hand-computed conventions
def _rows(*rows) -> np.ndarray:
    return np.array(rows, dtype=np.float32)


def test_cpu_nms_compares_float32_iou_with_double_threshold():
    # A = x 0..19, y 0..0 -> +1 area 20; B = x 0..8, y 0..0 -> area 9, inside A.
    # IoU = 9 / 20 exactly; in float32 it rounds to 0.449999988 (float32(0.45)).
    # The reference compares that float32 with the Python float 0.45 (double):
    # 0.449999988 >= 0.45 is False, so B is KEPT although IoU == threshold
    # mathematically. A float32 comparison would suppress it.
    dets = _rows([0, 0, 19, 0, 0.9], [0, 0, 8, 0, 0.8])
    assert iou_f32(dets)[0, 1] == np.float32(0.45)
    assert cpu_nms_oracle(dets, 0.45) == [0, 1]
    # IoU exactly 1/2 (representable): suppressed, the test is ">=".
    dets = _rows([0, 0, 9, 0, 0.9], [0, 0, 4, 0, 0.8])
    assert iou_f32(dets)[0, 1] == 0.5
    assert cpu_nms_oracle(dets, 0.5) == [0]
    assert cpu_nms_oracle(dets, 0.5000001) == [0, 1]


def test_cpu_nms_plus_one_convention():
    # A = [0,0,9,9], B = [5,0,14,9]: with +1, inter 5*10=50, union 150 -> 1/3;
    # without +1, inter 4*9=36, union 81+81-36=126 -> 0.2857.
    dets = _rows([0, 0, 9, 9, 0.9], [5, 0, 14, 9, 0.8])
    assert cpu_nms_oracle(dets, 0.3) == [0]
    assert cpu_nms_oracle(dets, 0.3, plus_one=False) == [0, 1]
    # A zero-size box has +1 area 1; two such identical boxes have IoU 1.
    dets = _rows([3, 3, 3, 3, 0.9], [3, 3, 3, 3, 0.8])
    assert cpu_nms_oracle(dets, 0.99) == [0]


def test_cpu_nms_zero_union_raises_like_the_reference():
    # Without +1, two zero-area boxes give 0 / 0: Cython raises ZeroDivisionError.
    dets = _rows([3, 3, 3, 3, 0.9], [3, 3, 3, 3, 0.8])
    with pytest.raises(ZeroDivisionError):
        cpu_nms_oracle(dets, 0.5, plus_one=False)


def test_soft_nms_nt_is_a_float32_parameter():
    # A = x 0..9, y 0..0 (area 10); B = x 0..2 (area 3) inside A: ov = 3/10,
    # float32(0.3) = 0.30000001192. The reference's Nt is a C float, also
    # float32(0.3), so "ov > Nt" is False and B keeps its score (weight 1).
    # With Nt kept in double (0.3), B would be decayed to 0.8 * 0.7.
    dets = _rows([0, 0, 9, 0, 0.9], [0, 0, 2, 0, 0.8])
    out = soft_nms_oracle(dets, sigma=0.45, Nt=0.3, threshold=0.001, method=1)
    assert np.array_equal(out, dets)
    out = soft_nms_oracle(dets, Nt=0.3, method=0)  # hard variant: not removed either
    assert np.array_equal(out, dets)


def test_soft_nms_linear_weight_and_removal():
    # A = [0,0,9,9] (area 100), B = [0,0,9,4] (area 50, inside A): ov = 1/2.
    # Linear: weight 1 - 0.5 = 0.5, score 0.8 -> 0.4.
    dets = _rows([0, 0, 9, 9, 0.9], [0, 0, 9, 4, 0.8])
    out = soft_nms_oracle(dets, Nt=0.3, method=1)
    assert np.array_equal(out, _rows([0, 0, 9, 9, 0.9], [0, 0, 9, 4, 0.4]))
    # Threshold 0.5: the re-scored 0.4 < 0.5, B is dropped.
    out = soft_nms_oracle(dets, Nt=0.3, threshold=0.5, method=1)
    assert np.array_equal(out, dets[:1])
    # Gaussian: weight = exp(-(0.25)/0.5) in double, stored as float32.
    out = soft_nms_oracle(dets, sigma=0.5, method=2)
    assert out[1, 4] == np.float32(np.float32(np.exp(-0.5)) * np.float32(0.8))


def test_soft_nms_threshold_applies_only_to_overlapping_rows():
    # docs/reference.md 7 step 2: the threshold test is inside "only if iw > 0 and ih > 0".
    # A row scored below the threshold that overlaps no selected box survives;
    # one that overlaps (even with weight 1) is removed.
    far = _rows([0, 0, 9, 9, 0.9], [100, 100, 109, 109, 0.0005])
    assert np.array_equal(soft_nms_oracle(far, method=1), far)
    # Touching with ov = 1/10 <= Nt: weight 1, but 0.0005 < 0.001 -> removed.
    near = _rows([0, 0, 9, 9, 0.9], [0, 0, 9, 0, 0.0005])
    assert np.array_equal(soft_nms_oracle(near, method=1), near[:1])


def test_soft_nms_removal_copies_the_last_row_forward():
    # Rows: A (0.9), B = copy of A's box (0.5), C (0.4), D (0.4), C and D far away.
    # Selecting A removes B (hard method, ov = 1 > Nt): row 3 (D) is copied over
    # row 1, so D now sits before C and wins the tie at the next selection.
    # A "stable" compaction (delete B, shift C and D up) would output C first.
    dets = _rows(
        [0, 0, 9, 9, 0.9],
        [0, 0, 9, 9, 0.5],
        [200, 200, 209, 209, 0.4],
        [100, 100, 109, 109, 0.4],
    )
    trace = SoftNMSTrace()
    out = soft_nms_oracle(dets, method=0, trace=trace)
    assert np.array_equal(out, dets[[0, 3, 2]])
    assert trace.removed == 1
    assert trace.tied_selections == 1


def test_soft_nms_first_position_wins_ties():
    dets = _rows([0, 0, 9, 9, 0.7], [50, 50, 59, 59, 0.7], [100, 0, 109, 9, 0.7])
    trace = SoftNMSTrace()
    out = soft_nms_oracle(dets, method=1, trace=trace)
    assert np.array_equal(out, dets)
    assert trace.tied_selections == 2


def test_empty_and_single_inputs():
    empty = np.zeros((0, 5), np.float32)
    out = soft_nms_oracle(empty)
    assert out.shape == (0, 5) and out.dtype == np.float32
    assert cpu_nms_oracle(empty, 0.45) == []
    one = _rows([1.5, 2.5, 3.5, 4.5, 0.0001])  # below threshold, but alone: kept
    assert np.array_equal(soft_nms_oracle(one, method=1), one)
    assert cpu_nms_oracle(one, 0.45) == [0]


def test_oracle_refuses_non_float32_input():
    with pytest.raises(TypeError):
        soft_nms_oracle(np.zeros((1, 5), np.float64))
