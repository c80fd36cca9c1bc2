"""The files m2det writes in ais_bench's layout (reference section 9): the stem
cut at the FIRST dot, ``_0`` = scores and ``_1`` = loc (.om output order), and
the summary's throughput ``1000 * batch / mean(execute ms)``."""

import json

import numpy as np
import pytest

from m2det_impl.network.config import get_config
from m2det_impl.pipeline.ais_files import AisOutputWriter, ais_stem, read_pair, scan_outputs

pytestmark = pytest.mark.cpu


@pytest.mark.parametrize("name, stem", [
    ("COCO_val2014_000000000139.bin", "COCO_val2014_000000000139"),
    ("/data/bins/COCO_val2014_000000000139.jpg.bin", "COCO_val2014_000000000139"),
    ("img.v2.final.bin", "img"),
    ("plain", "plain"),
])
def test_ais_stem_cuts_at_the_first_dot(name, stem):
    assert ais_stem(name) == stem


@pytest.mark.parametrize("outfmt", ["BIN", "NPY", "TXT"])
def test_writer_puts_scores_in_0_and_loc_in_1(tmp_path, outfmt):
    cfg = get_config(320)
    rng = np.random.default_rng(1)
    scores = rng.random((cfg.num_priors, cfg.num_classes), dtype=np.float32).round(3)
    loc = rng.standard_normal((cfg.num_priors, 4)).astype(np.float32).round(3)
    writer = AisOutputWriter(tmp_path, output_dirname="run", outfmt=outfmt)
    first, second = writer.add(tmp_path / "in" / "COCO_val2014_000000000139.jpg.bin", scores, loc)
    ext = outfmt.lower()
    assert (first.name, second.name) == (f"COCO_val2014_000000000139_0.{ext}", f"COCO_val2014_000000000139_1.{ext}")
    if outfmt == "BIN":
        assert np.array_equal(np.fromfile(first, np.float32), scores.ravel())
        assert np.array_equal(np.fromfile(second, np.float32), loc.ravel())
    elif outfmt == "NPY":
        # ais_bench's np.array_split keeps the batch axis: [1, P, C] and [1, P, 4]
        assert np.array_equal(np.load(first), scores[None]) and np.array_equal(np.load(second), loc[None])
    else:
        assert np.allclose(np.loadtxt(first, ndmin=2), scores) and np.allclose(np.loadtxt(second, ndmin=2), loc)
    pairs, problems = scan_outputs(tmp_path / "run", cfg)
    assert problems == [] and [p.stem for p in pairs] == ["COCO_val2014_000000000139"]
    got_scores, got_loc = read_pair(pairs[0], cfg)
    assert np.allclose(got_scores, scores) and np.allclose(got_loc, loc)


def test_summary_throughput_is_1000_batch_over_mean_ms(tmp_path):
    cfg = get_config(320)
    writer = AisOutputWriter(tmp_path, output_dirname="2024_01_02-03_04_05")
    for i in range(2):
        writer.add(f"img{i}.bin", np.zeros((cfg.num_priors, cfg.num_classes), np.float32),
                   np.zeros((cfg.num_priors, 4), np.float32))
    path = writer.finish(batch_size=4, execute_times_ms=[20.0, 30.0, 100.0])
    assert path == tmp_path / "2024_01_02-03_04_05_summary.json"
    summary = json.loads(path.read_text())
    assert summary["throughput"] == pytest.approx(1000 * 4 / 50.0)  # 80 images/s
    assert summary["NPU_compute_time"]["mean"] == pytest.approx(50.0)
    assert summary["NPU_compute_time"]["median"] == pytest.approx(30.0)
    assert summary["NPU_compute_time"]["count"] == 3
    assert summary["npu_compute_time_list"] == [20.0, 30.0, 100.0]
    assert summary["filesinfo"]["1"]["infiles"] == ["img1.bin"]
    assert [p.rsplit("/", 1)[-1] for p in summary["filesinfo"]["1"]["outfiles"]] == ["img1_0.bin", "img1_1.bin"]
    empty = AisOutputWriter(tmp_path, output_dirname="none").finish(batch_size=1, execute_times_ms=[])
    assert json.loads(empty.read_text())["throughput"] is None  # nothing timed: no figure, never a fake 0.0
