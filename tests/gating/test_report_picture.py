"""detections.png says what it shows: ground truth and detections apart, a legend, a banner for golden weights."""

import numpy as np
import pytest

from m2det_impl.gating.report import BANNER_COLOUR, DET_COLOUR, GT_COLOUR, draw_detections

pytestmark = pytest.mark.cpu


def _picture(golden: bool, results=()):
    image = np.full((200, 300, 3), 128, np.uint8)
    gt = [{"bbox": [50, 40, 100, 80], "category_id": 1}]
    return draw_detections(image, list(results), {1: "person"}, ground_truth=gt, title="x.jpg", golden=golden)


def _has(canvas, colour) -> bool:
    return bool(np.all(canvas == np.array(colour, np.uint8), axis=-1).any())


def test_ground_truth_and_detections_are_drawn_apart():
    det = [{"bbox": [150, 100, 60, 60], "category_id": 1, "score": 0.9}]
    canvas = _picture(False, det)
    assert _has(canvas, GT_COLOUR) and _has(canvas, DET_COLOUR)
    assert not _has(_picture(False), DET_COLOUR)  # no detection, no orange


def test_golden_weights_get_a_banner():
    assert _has(_picture(True), BANNER_COLOUR) and not _has(_picture(False), BANNER_COLOUR)
    assert _picture(True).shape[0] > _picture(False).shape[0] > 200  # title, banner and legend rows


def test_labels_are_capped_and_never_overlap():
    crowd = [{"bbox": [10 + i, 10 + i, 50, 50], "category_id": 1, "score": 0.9 - i / 100} for i in range(30)]
    canvas = draw_detections(np.zeros((200, 300, 3), np.uint8), crowd, {1: "person"}, max_labels=6)
    labelled = np.all(canvas == np.array(DET_COLOUR, np.uint8), axis=-1)
    # 30 boxes shifted by one pixel: overlapping labels are skipped, so far fewer than 6 filled label boxes
    rows_with_label_fill = int((labelled.sum(axis=1) > 40).sum())
    assert rows_with_label_fill < 6 * 14
