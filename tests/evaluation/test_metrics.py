"""The per-output summaries over images: a non-finite output is never a perfect match."""

import math

import numpy as np
import pytest

from m2det_impl.evaluation.agreement import DetectionAgreement, agreement_totals
from m2det_impl.evaluation.metrics import output_metrics, worst_per_output

pytestmark = pytest.mark.cpu


def _pair(overflow: bool):
    b = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
    a = b + np.float32(1e-3)
    if overflow:
        a[1, 2] = np.inf  # what an fp16 overflow leaves in an output
    return a, b


@pytest.mark.parametrize("order", [(True, False), (False, True)])
def test_an_overflowing_output_is_reported_non_finite_whatever_the_image_order(order):
    metrics = [output_metrics(*_pair(o), "scores", i) for i, o in enumerate(order)]
    worst = worst_per_output(metrics)["scores"]
    assert math.isnan(worst["cosine"]), worst  # min(1.0, nan) would say 1.0
    assert worst["nonfinite"] == 1 and worst["max_abs"] == math.inf


def test_finite_outputs_report_the_worst_image():
    a, b = _pair(False)
    close = output_metrics(a, b, "loc", 0)
    far = output_metrics(b * 2, b, "loc", 1)
    worst = worst_per_output([close, far])["loc"]
    assert worst["cosine"] == pytest.approx(min(close.cosine, far.cosine))
    assert worst["rel_l2"] == pytest.approx(1.0)  # ||2b - b|| / ||b||, an independent formula
    assert worst["nonfinite"] == 0


def test_agreement_totals_count_over_all_images():
    agreements = [DetectionAgreement(image=0, image_id="a", count_a=3, count_b=4, matched=3),
                  DetectionAgreement(image=1, image_id="b", count_a=0, count_b=0, matched=0)]
    totals = agreement_totals(agreements, names=("fp16", "fp32"))
    assert totals == {"matched": 3, "detections_fp16": 3, "detections_fp32": 4, "fraction": 0.75,
                      "lowest_image_fraction": 0.75}
