"""Priors against the reference's own (golden/priors.npz) and against reference section 3
written out as an independent loop."""

from math import sqrt

import numpy as np
import pytest

from m2det_impl.network.config import get_config
from m2det_impl.network.priors import make_priors

pytestmark = pytest.mark.cpu


@pytest.fixture(scope="module")
def golden_priors(golden_dir):
    with np.load(golden_dir / "priors.npz") as data:
        return {k: data[k] for k in data.files}


@pytest.mark.parametrize("size", [320, 512, 704, 800])
def test_priors_match_reference(size, golden_priors):
    expected = golden_priors[f"priors_{size}"]
    got = make_priors(get_config(size))
    assert got.dtype == np.float32
    assert got.shape == expected.shape == (get_config(size).num_priors, 4)
    err = np.abs(got.astype(np.float64) - expected).max()
    assert err <= 1e-6, f"priors_{size}: max abs error {err:.3g} > 1e-6"


def _spec_loop(size):
    """reference section 3 as literal nested loops (slow, independent)."""
    cfg = get_config(size)
    out = []
    for k, f in enumerate(cfg.feature_maps):
        for i in range(f):
            for j in range(f):
                f_k = size / cfg.anchors.step_pattern[k]
                cx, cy = (j + 0.5) / f_k, (i + 0.5) / f_k
                s = round(cfg.anchors.size_pattern[k] * size, 2) / size
                sp = sqrt(s * (round(cfg.anchors.size_pattern[k + 1] * size, 2) / size))
                out += [(cx, cy, s, s), (cx, cy, sp, sp)]
                for ar in (2, 3):
                    out += [(cx, cy, s * sqrt(ar), s / sqrt(ar)), (cx, cy, s / sqrt(ar), s * sqrt(ar))]
    return np.clip(np.asarray(out, dtype=np.float32), 0, 1)


def test_priors_equal_literal_spec_loop():
    assert np.array_equal(make_priors(get_config(320)), _spec_loop(320))


def test_priors_are_read_only_and_cached():
    a = make_priors(get_config(512))
    assert a is make_priors(get_config(512))
    with pytest.raises(ValueError):
        a[0, 0] = 1.0
