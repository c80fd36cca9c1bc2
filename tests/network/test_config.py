"""Config presets against reference section 1 (values typed in from the reference (docs/reference.md) table)."""

import dataclasses

import pytest

from m2det_impl.network.config import SUPPORTED_SIZES, get_config

pytestmark = pytest.mark.cpu

SPEC_TABLE = {
    320: ((8, 16, 32, 64, 107, 320), (0.08, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05), 12810),
    512: ((8, 16, 32, 64, 128, 256), (0.06, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05), 32760),
    704: ((8, 16, 32, 64, 117, 176), (0.04, 0.11, 0.23, 0.39, 0.58, 0.80, 1.05), 62022),
    800: ((8, 16, 32, 62, 115, 160), (0.04, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05), 80208),
}
SPEC_MAPS = {
    320: (40, 20, 10, 5, 3, 1),
    512: (64, 32, 16, 8, 4, 2),
    704: (88, 44, 22, 11, 6, 4),
    800: (100, 50, 25, 13, 7, 5),
}


@pytest.mark.parametrize("size", sorted(SPEC_TABLE))
def test_presets_match_spec(size):
    cfg = get_config(size)
    steps, pattern, priors = SPEC_TABLE[size]
    assert cfg.size == size
    assert tuple(cfg.anchors.step_pattern) == steps
    assert tuple(cfg.anchors.size_pattern) == pattern
    assert cfg.feature_maps == SPEC_MAPS[size]
    assert cfg.num_priors == priors
    net = cfg.network
    assert (net.planes, net.num_levels, net.num_scales, net.smooth, net.sfam) == (256, 8, 6, True, False)
    assert (net.num_classes, tuple(net.base_out)) == (81, (22, 34))
    assert tuple(cfg.rgb_means) == (104, 117, 123)


def test_test_settings_are_the_reference_effective_ones():
    t = get_config(512).test
    assert t.score_threshold == 0.1 and t.keep_per_class == 50 and t.topk == 0
    assert tuple(t.variances) == (0.1, 0.2) and t.background_label == 0
    # cpu_soft_nms(dets, 0.45, method=1): 0.45 lands in sigma; linear, Nt 0.3, threshold 0.001.
    assert (t.soft_nms_method, t.soft_nms_sigma, t.soft_nms_nt, t.soft_nms_threshold) == (1, 0.45, 0.3, 0.001)


def test_config_is_immutable_and_hashable():
    cfg = get_config(512)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.size = 320  # type: ignore[misc]
    assert hash(cfg) == hash(get_config(512))
    assert cfg.with_test(topk=100).test.topk == 100 and cfg.test.topk == 0


@pytest.mark.parametrize("bad", [300, 0, "big", None, 511])
def test_unknown_size_lists_supported_ones(bad):
    with pytest.raises(ValueError) as info:
        get_config(bad)
    for size in SUPPORTED_SIZES:
        assert str(size) in str(info.value)
