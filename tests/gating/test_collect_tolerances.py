"""Tolerance figures collected for the nightly (m2det_impl.gating.collect) are all
lower-is-better, so one rule, "may not grow", gates them: the cosine is stored
as a distance, 1 - cosine, the worst image's."""

import numpy as np
import pytest

from m2det_impl.evaluation.tolerances import save_run
from m2det_impl.gating.collect import tolerance_figures

pytestmark = pytest.mark.cpu


def _cosine(a, b):
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_cosine_is_collected_as_a_distance_of_the_worst_image(tmp_path):
    rng = np.random.default_rng(3)
    scores = rng.random((2, 30, 81), dtype=np.float32) + 0.1
    loc = rng.standard_normal((2, 30, 4)).astype(np.float32)
    noisy = scores.copy()
    noisy[1] += rng.standard_normal(noisy[1].shape).astype(np.float32) * 0.5  # image 1 is the worse one
    ids, sizes = ["a", "b"], [(640, 480), (640, 480)]
    save_run(tmp_path, "onnxruntime__mini__golden0", scores, loc, ids, sizes)
    save_run(tmp_path, "om__mini__golden0", noisy, loc, ids, sizes)
    figures = tolerance_figures(tmp_path, detections=False)
    distance = figures["om-vs-onnxruntime@mini/scores/cosine_distance"]
    assert distance == pytest.approx(1.0 - _cosine(noisy[1], scores[1]), rel=1e-6)
    assert 0.0 < distance < 1.0
    assert figures["om-vs-onnxruntime@mini/loc/cosine_distance"] == pytest.approx(0.0, abs=1e-12)
    assert figures["om-vs-onnxruntime@mini/scores/max_abs"] == pytest.approx(float(np.abs(noisy - scores).max()))
