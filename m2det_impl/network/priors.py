"""Prior (default) boxes, numpy only (reference section 3).

Computed in double precision like the reference, stored as float32 and clipped
to [0, 1]. No torch here: post-processing on an NPU host needs only numpy.
"""

from __future__ import annotations

from functools import lru_cache
from math import sqrt

import numpy as np

from m2det_impl.network.config import M2DetConfig

__all__ = [
    "make_priors",
]


def make_priors(cfg: M2DetConfig) -> np.ndarray:
    """Prior boxes ``[P, 4]`` float32 in (cx, cy, w, h), normalised to [0, 1].

    The result is cached per config and returned read-only; copy it to modify.
    """
    return _cached_priors(cfg)


@lru_cache(maxsize=8)
def _cached_priors(cfg: M2DetConfig) -> np.ndarray:
    size = cfg.size
    pattern = cfg.anchors.size_pattern
    steps = cfg.anchors.step_pattern
    per_map = []
    for k, side in enumerate(cfg.feature_maps):
        f_k = size / steps[k]
        s = round(pattern[k] * size, 2) / size
        s_prime = sqrt(s * (round(pattern[k + 1] * size, 2) / size))
        shapes = [(s, s), (s_prime, s_prime)]
        for ar in cfg.anchors.aspect_ratios:
            r = sqrt(ar)
            shapes += [(s * r, s / r), (s / r, s * r)]
        centres = (np.arange(side, dtype=np.float64) + 0.5) / f_k
        cy, cx = np.meshgrid(centres, centres, indexing="ij")  # row-major: i rows, j columns
        n_loc = side * side
        boxes = np.empty((n_loc, len(shapes), 4), dtype=np.float64)
        boxes[:, :, 0] = cx.reshape(-1, 1)
        boxes[:, :, 1] = cy.reshape(-1, 1)
        boxes[:, :, 2:] = np.asarray(shapes, dtype=np.float64)[None, :, :]
        per_map.append(boxes.reshape(-1, 4))
    priors = np.concatenate(per_map).astype(np.float32)
    if cfg.anchors.clip:
        np.clip(priors, 0.0, 1.0, out=priors)
    priors.flags.writeable = False
    return priors
