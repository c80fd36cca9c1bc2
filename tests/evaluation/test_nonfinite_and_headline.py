"""Two judgements that must not be fooled: a run with NaN or infinite elements
fails its tolerances even when the statistic over the finite elements is
perfect, and the headline AP is AP@[.50:.95] (stats[0]), not AP50."""

from dataclasses import replace

import numpy as np
import pytest

from m2det_impl.evaluation.metrics import output_metrics
from m2det_impl.evaluation.tolerances import Tolerances
from m2det_impl.pipeline.coco import STAT_NAMES, evaluate, load_annotations

pytestmark = pytest.mark.cpu

BOUNDS = Tolerances({"pairs": {"default": {"default": {
    "max_abs": {"max": 1e-3, "reason": "test bound"},
    "cosine": {"min": 0.999, "reason": "test bound"},
}}}})


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_elements_fail_the_tolerances(bad):
    b = np.linspace(0.0, 1.0, 1000, dtype=np.float32)
    a = b.copy()
    a[17] = bad
    m = output_metrics(a, b, "scores", image=0, image_id="img")
    assert m.nonfinite == 1
    report = BOUNDS.check("om/onnxruntime", [m])
    assert not report.ok and report.checked == 2
    assert {v.bound.metric for v in report.violations} == {"max_abs", "cosine"}
    assert "non-finite" in report.message()


def test_a_record_with_nonfinite_elements_fails_even_with_finite_statistics():
    # Tolerances.check judges OutputMetrics from any producer (a forecast, a saved report): a count of
    # NaN/Inf elements fails every bound, whatever statistics were computed over the finite ones
    clean = output_metrics(np.ones(8, np.float32), np.ones(8, np.float32), "loc", image=3, image_id="x")
    assert BOUNDS.check("om/onnxruntime", [clean]).ok
    flagged = replace(clean, nonfinite=2)
    report = BOUNDS.check("om/onnxruntime", [flagged])
    assert len(report.violations) == 2 and report.checked == 2
    assert all("2 non-finite elements" in v.worst for v in report.violations)
    assert all(v.image == 3 and v.output == "loc" for v in report.violations)


def test_identical_outputs_pass():
    b = np.linspace(0.0, 1.0, 1000, dtype=np.float32)
    report = BOUNDS.check("om/onnxruntime", [output_metrics(b.copy(), b, "scores")])
    assert report.ok and report.checked == 2


def _gt(tmp_path):
    import json

    path = tmp_path / "instances.json"
    path.write_text(json.dumps({
        "images": [{"id": 1, "width": 200, "height": 200, "file_name": "a.jpg"}],
        "categories": [{"id": 3, "name": "car"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [0, 0, 100, 100], "area": 10000,
                         "iscrowd": 0}],
    }))
    return load_annotations(path)


def test_headline_ap_is_the_mean_over_iou_thresholds(tmp_path):
    # IoU 0.62 with the only ground-truth box: a hit at IoU .50, .55, .60 and a miss above
    results = [{"image_id": 1, "category_id": 3, "bbox": [0, 0, 100, 62], "score": 0.9}]
    summary = evaluate(_gt(tmp_path), results)
    stats = summary.as_dict()
    assert stats["AP50"] == pytest.approx(1.0)
    assert stats["AP75"] == pytest.approx(0.0)
    assert summary.ap == pytest.approx(0.3) == stats["AP"]
    assert summary.ap == summary.stats[0] and STAT_NAMES[0] == "AP"
    assert summary.num_images == 1 and summary.num_detections == 1
