"""A run's per-image results (pipeline.run_results): arrays from the worker
processes become the same COCO dicts the thread mode makes, in image-id order,
some while the run waits and the rest at the end."""

from __future__ import annotations

import gc

import numpy as np
import pytest

from m2det_impl.pipeline.run_results import RunResults

pytestmark = pytest.mark.cpu

CATS = [1, 2, 3, 5]


def _dets(image_id: int) -> np.ndarray:
    """Two detections [class, x1, y1, x2, y2, score] that differ by image."""
    return np.array([[1, image_id, 2.5, image_id + 10, 20.5, 0.9],
                     [4, 0.0, 1.0, 3.0, 7.0, 0.25]], dtype=np.float64)


def _expected(image_id: int) -> list:
    """The COCO dicts of _dets, written out: bbox [x1, y1, x2 - x1 + 1, y2 - y1 + 1], class 4 -> id 5."""
    return [{"image_id": image_id, "category_id": 1, "bbox": [float(image_id), 2.5, 11.0, 19.0], "score": 0.9},
            {"image_id": image_id, "category_id": 5, "bbox": [0.0, 1.0, 4.0, 7.0], "score": 0.25}]


def test_arrays_and_dicts_come_out_as_dicts_in_image_id_order():
    resumed = {7: [{"image_id": 7, "category_id": 2, "bbox": [1, 1, 1, 1], "score": 0.5}]}
    results = RunResults(dict(resumed), CATS)
    results.add(3, _dets(3))
    results.add(9, _dets(9))
    results.add(4, [])  # an image with no detection
    assert results.coco_results([9, 7, 4, 3, 11]) == _expected(9) + resumed[7] + _expected(3)


def test_build_some_builds_a_few_and_says_when_none_is_left():
    per_image = {1: _dets(1)}  # an array already there (a journal's done) counts too
    results = RunResults(per_image, CATS)
    for image_id in (2, 3):
        results.add(image_id, _dets(image_id))
    assert results.build_some(2) is True
    assert isinstance(per_image[1], list) and isinstance(per_image[2], list)
    assert isinstance(per_image[3], np.ndarray)
    assert results.build_some(2) is True and per_image[3] == _expected(3)
    assert results.build_some(2) is False
    assert results.coco_results([1, 2, 3]) == _expected(1) + _expected(2) + _expected(3)


@pytest.mark.parametrize("enabled", [True, False])
def test_the_collector_is_left_as_it_was(enabled):
    was = gc.isenabled()
    try:
        gc.enable() if enabled else gc.disable()
        results = RunResults({}, CATS)
        results.add(1, _dets(1))
        results.build_some()
        results.add(2, _dets(2))
        results.coco_results([1, 2])
        assert gc.isenabled() is enabled
    finally:
        gc.enable() if was else gc.disable()
