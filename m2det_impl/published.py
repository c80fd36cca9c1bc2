"""The guide's published figures (SPEC sections 1 and 10): what a deployment is
held to and what reports put beside the measured numbers."""

from __future__ import annotations

from typing import Dict

__all__ = ["PUBLISHED_AP", "PUBLISHED_THROUGHPUT", "GUIDE_BATCH_SIZES", "HOST_SCRIPTS_IMAGES_PER_SECOND"]

#: COCO AP@[.50:.95] of M2Det512 (VGG16) on minival2014, every batch size.
PUBLISHED_AP: float = 0.378

GUIDE_BATCH_SIZES = (1, 4, 8, 16, 32)

#: Pure-inference throughput in images/s measured by ais_infer (host work excluded).
PUBLISHED_THROUGHPUT: Dict[str, Dict[int, float]] = {
    "310x4": {1: 34.212, 4: 34.086, 8: 34.142, 16: 34.320, 32: 34.303},
    "310P3": {1: 37.817, 4: 54.707, 8: 46.461, 16: 47.113, 32: 46.840},
    "T4": {1: 50.658, 4: 60.997, 8: 52.890, 16: 62.186, 32: 64.602},
}

#: What the guide's own preprocessing and post-processing scripts sustain on the host.
HOST_SCRIPTS_IMAGES_PER_SECOND: float = 25.0
