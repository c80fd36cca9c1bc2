"""Per-class selection at its boundaries (reference section 6): a candidate's
score must be STRICTLY above the threshold, compared in float32; background is
never a class."""

import numpy as np
import pytest

from m2det_impl.network.config import get_config
from m2det_impl.pipeline.postprocess import detect

pytestmark = pytest.mark.cpu

THR = np.float32(0.1)


def _case(values):
    """One prior per (class, score): far-apart boxes so soft-NMS keeps every row."""
    cfg = get_config(512)
    n = len(values)
    priors = np.array([[0.05 + 0.9 * i / max(n, 1), 0.5, 0.01, 0.01] for i in range(n)], np.float32)
    scores = np.zeros((n, cfg.num_classes), np.float32)
    scores[:, 0] = 0.5
    for i, (cls, score) in enumerate(values):
        scores[i, cls] = score
    return cfg, scores, np.zeros((n, 4), np.float32), priors


def test_a_score_equal_to_the_threshold_is_not_a_candidate():
    above = np.nextafter(THR, np.float32(1))
    cfg, scores, loc, priors = _case([(1, THR), (2, above), (3, THR), (4, np.float32(0.9))])
    dets = detect(scores, loc, priors, 100, 100, cfg)
    assert dets[:, 0].tolist() == [2, 4]
    assert dets[0, 5] == pytest.approx(float(above))


def test_the_threshold_is_compared_in_float32():
    # 0.1 as a double lies below float32(0.1): a double comparison would let float32(0.1) through
    assert float(THR) > 0.1
    cfg, scores, loc, priors = _case([(1, THR)])
    assert detect(scores, loc, priors, 100, 100, cfg).shape == (0, 6)


def test_background_scores_never_make_detections():
    cfg, scores, loc, priors = _case([(5, np.float32(0.8))])
    scores[:, 0] = 0.99
    dets = detect(scores, loc, priors, 100, 100, cfg)
    assert dets[:, 0].tolist() == [5]
