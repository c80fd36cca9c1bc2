"""Reading the raw-output files an Ascend run leaves (ais_infer and benchmark layouts)."""

import numpy as np
import pytest

from m2det_impl.errors import InputFileError
from m2det_impl.pipeline.ais_files import expected_sizes, read_pair, scan_outputs, write_outputs

pytestmark = pytest.mark.cpu

P, C = 32760, 81


def _arrays(seed):
    rs = np.random.RandomState(seed)
    return rs.random_sample((P, C)).astype(np.float32), rs.standard_normal((P, 4)).astype(np.float32)


def test_expected_sizes_are_float32_counts(cfg512):
    assert expected_sizes(cfg512) == {"scores": P * C * 4, "loc": P * 4 * 4}


@pytest.mark.parametrize("first", [0, 1], ids=["ais_infer_0_1", "benchmark_1_2"])
def test_both_namings_read_back(tmp_path, cfg512, first):
    run = tmp_path / "2026_11_26-10_00_00"  # ais_infer's time-stamped sub-folder
    scores, loc = _arrays(1)
    write_outputs(run, "COCO_val2014_000000000139", scores, loc, first_index=first)
    assert (run / f"COCO_val2014_000000000139_{first}.bin").stat().st_size == P * C * 4
    pairs, problems = scan_outputs(tmp_path, cfg512)
    assert problems == [] and [p.stem for p in pairs] == ["COCO_val2014_000000000139"]
    got_scores, got_loc = read_pair(pairs[0], cfg512)
    assert np.array_equal(got_scores, scores) and np.array_equal(got_loc, loc)


def test_output_order_is_decided_by_size(tmp_path, cfg512):
    """An .om whose outputs come loc first still reads right."""
    scores, loc = _arrays(2)
    loc.tofile(tmp_path / "img_0.bin")
    scores.tofile(tmp_path / "img_1.bin")
    pairs, _ = scan_outputs(tmp_path, cfg512)
    got_scores, got_loc = read_pair(pairs[0], cfg512)
    assert np.array_equal(got_scores, scores) and np.array_equal(got_loc, loc)


def test_preprocessed_inputs_are_not_taken_for_outputs(tmp_path, cfg512):
    (tmp_path / "COCO_val2014_000000000139.bin").write_bytes(b"\0" * 16)
    with pytest.raises(InputFileError, match="no output files"):
        scan_outputs(tmp_path, cfg512)


def test_missing_and_truncated_files_are_named_with_expected_size(tmp_path, cfg512):
    scores, loc = _arrays(3)
    write_outputs(tmp_path, "good", scores, loc)
    scores.tofile(tmp_path / "lonely_0.bin")
    scores.tofile(tmp_path / "short_0.bin")
    (tmp_path / "short_1.bin").write_bytes(loc.tobytes()[:1000])
    pairs, problems = scan_outputs(tmp_path, cfg512)
    assert [p.stem for p in pairs] == ["good"]
    msgs = {p.stem: p.message for p in problems}
    assert "missing the loc output" in msgs["lonely"] and str(P * 4 * 4) in msgs["lonely"]
    assert str(tmp_path / "short_1.bin") in msgs["short"] and "1000 bytes" in msgs["short"]
    assert str(P * C * 4) in msgs["short"]


def test_same_image_in_two_run_folders_is_refused(tmp_path, cfg512):
    scores, loc = _arrays(4)
    write_outputs(tmp_path / "run_a", "img", scores, loc)
    write_outputs(tmp_path / "run_b", "img", scores, loc)
    _, problems = scan_outputs(tmp_path, cfg512)
    assert len(problems) == 1 and "several folders" in problems[0].message


def test_missing_folder(tmp_path, cfg512):
    with pytest.raises(InputFileError, match="not found"):
        scan_outputs(tmp_path / "absent", cfg512)


def test_another_presets_outputs_name_the_size_that_reads_them(tmp_path, cfg512):
    """The re-trial: ``evaluate --size 320`` over M2Det512's outputs advised ``--skip-bad``, which scores
    nothing; the message now names the preset whose outputs these are. 320's prior count is 12810
    (40x40 + 20x20 + 10x10 + 5x5 + 3x3 + 1x1 = 2135 locations, six boxes each)."""
    from m2det_impl.network.config import get_config
    from m2det_impl.pipeline.evaluate import results_from_outputs
    from m2det_impl.resources import MINI_COCO

    ann = MINI_COCO / "annotations" / "instances_minival2014.json"
    stem = sorted((MINI_COCO / "val2014").iterdir())[0].stem
    scores, loc = _arrays(5)
    write_outputs(tmp_path, stem, scores, loc)
    cfg320 = get_config(320)
    assert cfg320.num_priors == 12810
    _, problems = scan_outputs(tmp_path, cfg320)
    assert len(problems) == 1 and "(the size of M2Det512's outputs: give --size 512)" in problems[0].message
    with pytest.raises(Exception) as info:
        results_from_outputs(tmp_path, ann, cfg320)
    assert "give --size 512" in str(info.value) and "--skip-bad" not in str(info.value)
    (tmp_path / f"{stem}_1.bin").write_bytes(loc.tobytes()[:1000])  # truncated: no preset has that size
    _, problems = scan_outputs(tmp_path, cfg512)
    assert "(truncated or from another model?)" in problems[0].message
