"""Boxes are scaled to the ORIGINAL image (reference sections 4-5), which
needs the original (width, height) carried from decoding to post-processing
in that order: held on a non-square image, end to end through run_pipeline."""

import cv2
import numpy as np
import pytest

from m2det_impl.network.config import get_config
from m2det_impl.network.priors import make_priors
from m2det_impl.pipeline.dataset import ImageRecord
from m2det_impl.pipeline.preprocess import image_size, load_and_preprocess
from m2det_impl.pipeline.stream import run_pipeline

pytestmark = pytest.mark.cpu

WIDTH, HEIGHT = 96, 40  # deliberately not square, not the network size


@pytest.fixture
def wide_image(tmp_path):
    path = tmp_path / "COCO_val2014_000000000042.jpg"
    image = np.random.default_rng(0).integers(0, 255, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    assert cv2.imwrite(str(path), image)
    return path


def test_load_and_preprocess_returns_width_then_height(wide_image):
    cfg = get_config(512)
    tensor, size = load_and_preprocess(wide_image, cfg)
    assert tensor.shape == (3, 512, 512)
    assert size == (WIDTH, HEIGHT) == image_size(wide_image)


class OneBoxNetwork:
    """Scores 0.9 for class 1 on one prior, zero offsets: the detection is that prior."""

    def __init__(self, cfg, prior):
        self.cfg, self.prior = cfg, prior

    def infer(self, batch):
        n, p, c = batch.shape[0], self.cfg.num_priors, self.cfg.num_classes
        scores = np.zeros((n, p, c), np.float32)
        scores[:, :, 0] = 1.0
        scores[:, self.prior, 0] = 0.1
        scores[:, self.prior, 1] = 0.9
        return scores, np.zeros((n, p, 4), np.float32)


def test_run_pipeline_scales_boxes_by_the_original_size(wide_image):
    cfg = get_config(512)
    prior = 20000  # an interior prior of the 16x16 map
    cx, cy, w, h = (float(v) for v in make_priors(cfg)[prior])
    records = [ImageRecord(42, wide_image)]
    outcome = run_pipeline(records, OneBoxNetwork(cfg, prior), cfg, list(range(1, 81)), progress=False)
    assert len(outcome.results) == 1
    result = outcome.results[0]
    assert result["image_id"] == 42 and result["category_id"] == 1
    assert result["score"] == pytest.approx(0.9)
    x1, y1 = (cx - w / 2) * WIDTH, (cy - h / 2) * HEIGHT
    expected = [x1, y1, w * WIDTH + 1, h * HEIGHT + 1]  # COCO [x, y, w + 1, h + 1]
    assert result["bbox"] == pytest.approx(expected, rel=1e-5, abs=1e-3)
