"""``m2det infer --naming ais`` writes what ais_bench writes, and the guide's
post-processing (tests/oracles/ais_postprocess.py, its ``--is_ais_infer``
input logic) and ``m2det evaluate`` read it back, in BIN, NPY and TXT.

The backend is a real ``Backend`` subclass whose "model" returns raw outputs
shaped like a trained M2Det512's (the reference's post-processing cases,
m2det_impl/data/postprocess_cases.npz), chosen by the value the input file
holds, so a file mapped to the wrong image shows. No model is exported or run:
what is under test is the layout, the naming, the formats and the summary.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from m2det_impl.backends.base import Backend
from m2det_impl.backends.spec import ModelSpec
from m2det_impl.cli.app import main
from m2det_impl.exit_codes import EXIT_OK
from m2det_impl.gating.bench import reference_postprocess_cases
from m2det_impl.network.config import get_config
from m2det_impl.pipeline.ais_files import scan_outputs
from m2det_impl.resources import MINI_COCO
from tests.oracles.ais_postprocess import read_ais_outputs

pytestmark = pytest.mark.cpu

ANN = MINI_COCO / "annotations" / "instances_minival2014.json"
P, C, SIDE = 32760, 81, 512
EXEC_MS = (12.5, 17.5)  # what the fake runtime "takes" per call, alternating
# input file -> the case its outputs are; the second name has a dot in its stem (ais_bench cuts at the FIRST dot)
INPUTS = {"COCO_val2014_000000003226.bin": 0, "COCO_val2014_000000018900.b.bin": 1,
          "COCO_val2014_000000054364.bin": 2}
TIMESTAMP = re.compile(r"^\d{4}_\d{2}_\d{2}-\d{2}_\d{2}_\d{2}$")
# %f keeps 6 decimals: each value within 5e-7 of float32's, which moves the decoded boxes by at most ~1e-3 px
TXT_SCORE_BOUND, TXT_BOX_BOUND_PX, TXT_AP_BOUND = 1e-6, 1e-2, 1e-4


@pytest.fixture(scope="module")
def cases():
    return reference_postprocess_cases()


class CasesBackend(Backend):
    """Image with value k -> case k's (scores, loc); execute times from the fake runtime."""

    name = "cases"
    execute_clock = "fake runtime execute time"

    def __init__(self, cases):
        self.cases, self.calls = cases, 0

    def _run(self, chunk):
        picks = [self.cases[int(round(float(image[0, 0, 0])))] for image in chunk]
        return np.stack([s for s, _ in picks]), np.stack([loc for _, loc in picks])

    def _execute_ms(self, wall_ms):
        self.calls += 1
        return EXEC_MS[(self.calls - 1) % 2]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("prep")
    for name, k in INPUTS.items():
        np.full((1, 3, SIDE, SIDE), k, np.float32).tofile(folder / name)
    return folder


def _infer(monkeypatch, cases, inputs, out, *extra):
    monkeypatch.setattr(ModelSpec, "create", lambda self, cfg: CasesBackend(cases))
    assert main(["infer", "--inputs", str(inputs), "--output", str(out), "--batch-size", "2", "--quiet",
                 *extra]) == EXIT_OK
    folders = [p for p in out.iterdir() if p.is_dir()]
    assert len(folders) == 1, folders
    return folders[0], out / f"{folders[0].name}_summary.json"


def test_bin_layout_reads_back_through_the_guides_postprocessing(tmp_path, monkeypatch, cases, inputs):
    folder, summary_path = _infer(monkeypatch, cases, inputs, tmp_path / "result")
    assert TIMESTAMP.match(folder.name), folder.name  # ais_bench's %Y_%m_%d-%H_%M_%S sub-folder
    assert summary_path.is_file()  # beside the folder, not in it
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        f"{name.split('.')[0]}_{i}.bin" for name in INPUTS for i in (0, 1))
    order, outputs = read_ais_outputs(str(folder), str(summary_path))
    assert order == sorted(name.split(".")[0] for name in INPUTS)
    for name, k in INPUTS.items():
        scores, loc = outputs[name.split(".")[0]]
        assert np.array_equal(scores, cases[k][0]) and np.array_equal(loc[0], cases[k][1])

    summary = json.loads(summary_path.read_text())
    assert list(summary) == ["filesinfo", "args", "NPU_compute_time", "H2D_latency", "D2H_latency",
                          "throughput", "npu_compute_time_list", "pid"]
    assert list(summary["filesinfo"]) == ["0", "1", "2"]
    for sample in summary["filesinfo"].values():
        stem = sample["infiles"][0].split("/")[-1].split(".")[0]
        assert sample["outfiles"] == [str(folder / f"{stem}_0.bin"), str(folder / f"{stem}_1.bin")]
    # 3 inputs at batch 2: two executes, 12.5 and 17.5 ms; ais_bench's throughput = 1000 * batch / mean(ms)
    assert summary["npu_compute_time_list"] == list(EXEC_MS)
    timing = summary["NPU_compute_time"]
    assert (timing["min"], timing["max"], timing["mean"], timing["count"]) == (12.5, 17.5, 15.0, 2)
    assert set(timing) == {"min", "max", "mean", "median", "percentile(99%)", "count"}
    assert summary["throughput"] == pytest.approx(1000.0 * 2 / 15.0)


def test_the_stem_is_cut_at_the_first_dot(tmp_path, monkeypatch, cases):
    prep = tmp_path / "prep"
    prep.mkdir()
    np.full((1, 3, SIDE, SIDE), 2, np.float32).tofile(prep / "a.b.bin")
    folder, summary_path = _infer(monkeypatch, cases, prep, tmp_path / "out", "--output-dirname", "subdir")
    assert folder.name == "subdir" and summary_path == tmp_path / "out" / "subdir_summary.json"
    assert sorted(p.name for p in folder.iterdir()) == ["a_0.bin", "a_1.bin"]
    order, outputs = read_ais_outputs(str(folder), str(summary_path))
    assert order == ["a"] and np.array_equal(outputs["a"][0], cases[2][0])
    assert json.loads(summary_path.read_text())["filesinfo"]["0"]["infiles"] == [str(prep / "a.b.bin")]


def test_npy_and_txt_are_written_as_ais_bench_writes_them(tmp_path, monkeypatch, cases, inputs):
    """NPY keeps each piece of ais_bench's np.array_split, leading batch axis included; TXT is rows of the
    last axis, '%f' and a space after each value."""
    one = tmp_path / "one"
    one.mkdir()
    np.full((1, 3, SIDE, SIDE), 1, np.float32).tofile(one / "x.bin")
    folder, _ = _infer(monkeypatch, cases, one, tmp_path / "npy", "--outfmt", "NPY")
    assert np.load(folder / "x_0.npy").shape == (1, P, C) and np.load(folder / "x_1.npy").shape == (1, P, 4)
    folder, _ = _infer(monkeypatch, cases, one, tmp_path / "txt", "--outfmt", "TXT")
    lines = (folder / "x_1.txt").read_bytes().split(b"\n")
    assert len(lines) == P + 1 and lines[-1] == b""
    assert lines[0] == b"".join(b"%f " % v for v in cases[1][1][0])  # numpy's '%f' per value, a trailing space
    # a TXT output that lost its last row is named with the count it should have
    (folder / "x_1.txt").write_bytes(b"\n".join(lines[:-2]) + b"\n")
    _, problems = scan_outputs(folder.parent, get_config(512))
    assert len(problems) == 1 and f"{(P - 1) * 4} values" in problems[0].message
    assert str(folder / "x_1.txt") in problems[0].message and f"{P}x4" in problems[0].message


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, cases, inputs):
    """``m2det evaluate`` of the same run written in each format, pointed at ``--output`` (as the README does)."""
    out = {}
    with pytest.MonkeyPatch.context() as monkeypatch:
        for fmt in ("BIN", "NPY", "TXT"):
            base = tmp_path_factory.mktemp(fmt.lower())
            _infer(monkeypatch, cases, inputs, base / "result", "--outfmt", fmt)
            assert main(["evaluate", "--outputs", str(base / "result"), "--annotations", str(ANN),
                         "--results", str(base / "r.json"), "--summary", str(base / "s.json"), "--quiet"]) == EXIT_OK
            out[fmt] = (json.loads((base / "r.json").read_text()), json.loads((base / "s.json").read_text()))
    return out


def _sorted(results):
    return sorted(results, key=lambda r: (r["image_id"], r["category_id"], -r["score"], r["bbox"]))


def test_evaluate_reads_bin_npy_and_txt_alike(evaluated):
    bin_results, bin_summary = evaluated["BIN"]
    assert bin_summary["num_images"] == 3 and len(bin_results) > 100
    npy_results, npy_summary = evaluated["NPY"]
    assert npy_results == bin_results and npy_summary["ap"] == bin_summary["ap"]  # same float32 values
    txt_results, txt_summary = evaluated["TXT"]
    assert len(txt_results) == len(bin_results)
    for a, b in zip(_sorted(txt_results), _sorted(bin_results)):
        assert (a["image_id"], a["category_id"]) == (b["image_id"], b["category_id"])
        assert abs(a["score"] - b["score"]) <= TXT_SCORE_BOUND
        assert max(abs(x - y) for x, y in zip(a["bbox"], b["bbox"])) <= TXT_BOX_BOUND_PX
    assert abs(txt_summary["ap"] - bin_summary["ap"]) <= TXT_AP_BOUND
