"""A run's per-image results: COCO dicts, or the detections arrays they are built from.

With the host work in worker processes (pipeline.hostproc) a batch's
detections come back as ``[N, 6]`` arrays: a few kilobytes to take in, where
the calling thread feeds a GIL-holding runtime and every millisecond it spends
is a millisecond the device waits. Its COCO dicts (about 450 per image from a
trained M2Det512, about 0.3 ms per image to build here) are made from those
arrays by :func:`~m2det_impl.pipeline.coco.to_coco_results`, the function the
thread mode uses, while the calling thread would otherwise wait on the workers
(:meth:`RunResults.build_some`), and the rest at the end of the run.

Python's cyclic collector is paused while dicts are built: it would run every
700 new containers and walk every dict made so far, which more than doubles
the cost of a full run's hundreds of thousands of results.
"""

from __future__ import annotations

import gc
from collections import deque
from contextlib import contextmanager
from typing import Deque, Dict, Iterator, List, Sequence, Union

import numpy as np

__all__ = ["RunResults"]

PerImage = Union[list, np.ndarray]


@contextmanager
def _collector_paused() -> Iterator[None]:
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class RunResults:
    """Each image's results, kept in ``per_image`` (a journal's ``done``, or a
    fresh dict): COCO dicts, or a detections array until it is built."""

    def __init__(self, per_image: Dict[int, PerImage], category_ids: Sequence[int]):
        self.per_image = per_image
        self.category_ids = [int(c) for c in category_ids]
        self._unbuilt: Deque[int] = deque(i for i, found in per_image.items() if isinstance(found, np.ndarray))

    def add(self, image_id: int, results: PerImage) -> None:
        self.per_image[image_id] = results
        if isinstance(results, np.ndarray):
            self._unbuilt.append(image_id)

    def build_some(self, images: int = 2) -> bool:
        """Build the dicts of up to ``images`` images; False when none was left to build."""
        if not self._unbuilt:
            return False
        with _collector_paused():
            for _ in range(images):
                if not self._unbuilt:
                    break
                self._build(self._unbuilt.popleft())
        return True

    def _build(self, image_id: int) -> None:
        from m2det_impl.pipeline.coco import to_coco_results

        found = self.per_image.get(image_id)
        if isinstance(found, np.ndarray):
            self.per_image[image_id] = to_coco_results(found, image_id, self.category_ids)

    def coco_results(self, image_ids: Sequence[int]) -> List[dict]:
        """Every image's COCO result dicts, in ``image_ids`` order."""
        with _collector_paused():
            while self._unbuilt:
                self._build(self._unbuilt.popleft())
            results: List[dict] = []
            for image_id in image_ids:
                results.extend(self.per_image.get(image_id) or [])
        return results
