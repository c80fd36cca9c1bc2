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
