"""Immutable M2Det presets (reference section 1).

Every other module takes one of these objects instead of reading globals, so a
test or a tool can hold two configurations side by side without surprises.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Tuple

from m2det_impl.errors import UsageError

__all__ = [
    "NetworkConfig",
    "AnchorConfig",
    "TestConfig",
    "M2DetConfig",
    "SUPPORTED_SIZES",
    "get_config",
]


@dataclass(frozen=True)
class NetworkConfig:
    """Shape of the network; identical for all four published input sizes."""

    backbone: str = "vgg16"
    planes: int = 256
    num_levels: int = 8
    num_scales: int = 6
    smooth: bool = True
    sfam: bool = False
    num_classes: int = 81
    base_out: Tuple[int, int] = (22, 34)


@dataclass(frozen=True)
class AnchorConfig:
    """Prior-box layout: one step and one size fraction per feature map."""

    step_pattern: Tuple[float, ...]
    size_pattern: Tuple[float, ...]
    aspect_ratios: Tuple[int, ...] = (2, 3)
    clip: bool = True


@dataclass(frozen=True)
class TestConfig:
    """Post-processing settings of the reference's test phase.

    The reference calls ``cpu_soft_nms(dets, 0.45, method=1)``: positionally the
    0.45 lands in ``sigma``, so the run is LINEAR soft-NMS with ``Nt = 0.3`` and
    discard threshold 0.001 (reference section 7). ``nms_iou`` keeps the value the
    reference's config names; the ``soft_nms_*`` fields are what actually runs
    and are what the published 37.8% AP was measured with.
    """

    score_threshold: float = 0.1
    soft_nms: bool = True
    nms_iou: float = 0.45
    keep_per_class: int = 50
    topk: int = 0  # per-image cap; 0 means none
    variances: Tuple[float, float] = (0.1, 0.2)
    background_label: int = 0
    soft_nms_method: int = 1  # 0 hard, 1 linear, 2 gaussian
    soft_nms_sigma: float = 0.45
    soft_nms_nt: float = 0.3
    soft_nms_threshold: float = 0.001


@dataclass(frozen=True)
class M2DetConfig:
    """One complete preset: input size, network, anchors and test settings."""

    size: int
    anchors: AnchorConfig
    network: NetworkConfig = field(default_factory=NetworkConfig)
    test: TestConfig = field(default_factory=TestConfig)
    rgb_means: Tuple[float, float, float] = (104.0, 117.0, 123.0)  # BGR order

    @property
    def num_classes(self) -> int:
        return self.network.num_classes

    @property
    def feature_maps(self) -> Tuple[int, ...]:
        """Side of each of the six prior maps (reference section 3)."""
        sides = []
        side = self.size
        for i in range(7):
            side = -(-side // 2)  # ceil
            if i >= 2:
                sides.append(side)
        sides.append(sides[-1] - 2)
        return tuple(sides)

    @property
    def num_priors(self) -> int:
        boxes_per_location = 2 + 2 * len(self.anchors.aspect_ratios)
        return sum(f * f for f in self.feature_maps) * boxes_per_location

    def with_test(self, **changes) -> "M2DetConfig":
        """A copy with some test settings changed (e.g. ``topk=100``)."""
        return replace(self, test=replace(self.test, **changes))


_ANCHORS = {
    320: AnchorConfig(
        step_pattern=(8, 16, 32, 64, 107, 320),
        size_pattern=(0.08, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05),
    ),
    512: AnchorConfig(
        step_pattern=(8, 16, 32, 64, 128, 256),
        size_pattern=(0.06, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05),
    ),
    704: AnchorConfig(
        step_pattern=(8, 16, 32, 64, 117, 176),
        size_pattern=(0.04, 0.11, 0.23, 0.39, 0.58, 0.80, 1.05),
    ),
    800: AnchorConfig(
        step_pattern=(8, 16, 32, 62, 115, 160),
        size_pattern=(0.04, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05),
    ),
}

SUPPORTED_SIZES: Tuple[int, ...] = tuple(sorted(_ANCHORS))


def get_config(size: int = 512) -> M2DetConfig:
    """The published preset for ``size`` (320, 512, 704 or 800)."""
    try:
        anchors = _ANCHORS[int(size)]
    except (KeyError, TypeError, ValueError):
        raise UsageError(
            f"unsupported M2Det input size {size!r}; supported sizes: "
            + ", ".join(str(s) for s in SUPPORTED_SIZES)
        ) from None
    return M2DetConfig(size=int(size), anchors=anchors)
