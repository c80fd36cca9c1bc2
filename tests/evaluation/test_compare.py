"""The tolerance layer: metrics, detection agreement, the tolerance file,
failure messages and saved runs. Expected values are worked out by hand
in the comments, not computed by the code under test.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from m2det_impl.cli import main
from m2det_impl.errors import InputFileError
from m2det_impl.evaluation.agreement import detection_agreement, match_detections
from m2det_impl.evaluation.metrics import compare_runs, output_metrics
from m2det_impl.evaluation.tolerances import (
    DEFAULT_TOLERANCES_FILE,
    ToleranceError,
    Tolerances,
    compare_saved,
    load_run,
    save_run,
)
from m2det_impl.resources import POSTPROCESS_CASES_FILE

pytestmark = pytest.mark.cpu


# ------------------------------------------------------------------ metrics
def test_metrics_by_hand():
    b = np.array([[1.0, 2.0], [0.0, -4.0]], np.float32)
    a = np.array([[1.0, 2.5], [0.0, -4.0]], np.float32)
    m = output_metrics(a, b, "loc", image=2, image_id="img2")
    assert m.max_abs == 0.5
    assert m.mean_abs == 0.125            # 0.5 / 4
    assert m.max_rel == 0.25              # 0.5 / 2
    assert m.peak_rel == 0.125            # 0.5 / max|b| = 0.5 / 4
    assert m.worst_index == (0, 1) and (m.worst_a, m.worst_b) == (2.5, 2.0)
    # a.b = 1 + 5 + 16 = 22; |a| = sqrt(1 + 6.25 + 16) = sqrt(23.25); |b| = sqrt(21)
    assert m.cosine == pytest.approx(22 / math.sqrt(23.25 * 21), rel=1e-12)
    assert m.rel_l2 == pytest.approx(0.5 / math.sqrt(21), rel=1e-12)  # ||a-b|| / ||b||
    assert (m.output, m.image, m.image_id, m.nonfinite) == ("loc", 2, "img2", 0)


def test_metrics_edge_cases():
    zero = np.zeros(3, np.float32)
    assert output_metrics(zero, zero, "s").cosine == 1.0
    assert output_metrics(np.array([1, 0, 0], np.float32), np.array([0, 1, 0], np.float32), "s").cosine == 0.0
    m = output_metrics(np.array([1e-3, 0], np.float32), np.zeros(2, np.float32), "s")
    assert m.max_rel == math.inf and m.peak_rel == math.inf and m.rel_l2 == math.inf
    twice = output_metrics(np.array([2, 4], np.float32), np.array([1, 2], np.float32), "s")
    assert twice.cosine == pytest.approx(1.0) and twice.rel_l2 == pytest.approx(1.0)  # scale: only rel_l2 sees it
    m = output_metrics(np.array([np.nan, 1], np.float32), np.array([0, 1], np.float32), "s")
    assert m.nonfinite == 1 and m.max_abs == math.inf and math.isnan(m.cosine)
    with pytest.raises(ValueError, match="shapes differ"):
        output_metrics(np.zeros(2), np.zeros(3), "s")


def test_compare_runs_is_per_image_and_per_output():
    a = {"scores": np.zeros((2, 3, 4)), "loc": np.zeros((2, 3, 4))}
    b = {"scores": np.zeros((2, 3, 4)), "loc": np.zeros((2, 3, 4))}
    b["loc"][1, 2, 3] = 0.25
    metrics = compare_runs(a, b, ["x", "y"])
    assert [(m.output, m.image_id, m.max_abs) for m in metrics] == [
        ("scores", "x", 0.0), ("scores", "y", 0.0), ("loc", "x", 0.0), ("loc", "y", 0.25)]
    assert metrics[-1].worst_index == (2, 3)


# ------------------------------------------------------------------ tolerances
FLOAT32_PAIRS = ("torch/golden", "onnxruntime/golden")
DEVICE_PAIRS = ("om/onnxruntime", "onnxruntime-cuda/onnxruntime")


def test_every_bound_in_the_tolerance_file_parses_and_has_a_reason():
    data = json.loads(DEFAULT_TOLERANCES_FILE.read_text())
    tol = Tolerances.load()
    for pair, outputs in data["pairs"].items():
        for output, bounds in outputs.items():
            if output.startswith("_"):
                continue
            for metric, spec in bounds.items():
                assert len(spec["reason"]) > 20, f"{pair}/{output}/{metric} needs a reason"
                assert tol.bounds(pair, output)[metric].value == spec.get("max", spec.get("min"))


def test_a_weights_tag_falls_back_to_its_pairs_bounds():
    tol = Tolerances.load()
    for pair in DEVICE_PAIRS:
        for output in ("scores", "loc", "detections"):
            assert tol.bounds(f"{pair}@ckpt-0123", output) == tol.bounds(pair, output)


def test_device_bounds_are_no_tighter_than_float32_bounds():
    """A fp16 device may drift at least as far as two float32 runtimes; never less."""
    tol = Tolerances.load()
    for device in DEVICE_PAIRS:
        for reference in FLOAT32_PAIRS:
            for output in ("scores", "loc"):
                mine, theirs = tol.bounds(device, output), tol.bounds(reference, output)
                for metric in set(mine) & set(theirs):
                    if mine[metric].kind == "max":
                        assert mine[metric].value >= theirs[metric].value, (device, output, metric)
                    else:
                        assert mine[metric].value <= theirs[metric].value, (device, output, metric)


def test_detections_are_gated_on_devices_except_with_golden_weights():
    """Golden weights put near-tied scores everywhere, which fp16 rounding reorders; the
    file's note says so, and only then may the agreement bound be absent."""
    data = json.loads(DEFAULT_TOLERANCES_FILE.read_text())
    tol = Tolerances.load()
    for pair in DEVICE_PAIRS:
        assert "agreement" in tol.bounds(pair, "detections")
    for pair in data["pairs"]:
        if pair.endswith("@golden0") and "agreement" not in tol.bounds(pair, "detections"):
            assert "rounding" in data["pairs"][pair]["_note"]
            assert {"cosine", "rel_l2"} <= set(tol.bounds(pair, "scores"))  # raw outputs still gated


TOY = {"pairs": {
    "default": {"default": {"cosine": {"min": 0.9, "reason": "the toy default for every pair"}}},
    "x/ref": {
        "default": {"max_abs": {"max": 0.1, "reason": "toy pair default"}},
        "loc": {"max_abs": {"max": 0.01, "reason": "toy loc is tighter"}},
        "detections": {"agreement": {"min": 0.5, "reason": "toy agreement"}},
    },
}}


def test_lookup_by_pair_either_order_output_then_default():
    tol = Tolerances({"pairs": {**TOY["pairs"], "x/ref@w0": {"_note": "a comment, not an output",
                                                            "loc": {"cosine": {"min": 0.5, "reason": "tagged"}}}}})
    assert tol.entry("x/ref@w0")[0] == "x/ref@w0" and tol.entry("ref/x@w0")[0] == "x/ref@w0"
    assert tol.entry("x/ref@w1")[0] == "x/ref"
    assert set(tol.bounds("x/ref@w0", "loc")) == {"cosine"}
    assert "_note" not in tol.entry("x/ref@w0")[1]
    assert tol.bounds("x/ref", "loc")["max_abs"].value == 0.01
    assert tol.bounds("x/ref", "scores")["max_abs"].value == 0.1
    assert tol.bounds("ref/x", "loc")["max_abs"].value == 0.01
    assert set(tol.bounds("y/ref", "loc")) == {"cosine"}
    assert tol.entry("ref/x")[0] == "x/ref" and tol.entry("y/z")[0] == "default"


@pytest.mark.parametrize("bad,problem", [
    ({"pairs": {"default": {"default": {"cosine": {"min": 0.9}}}}}, "reason"),
    ({"pairs": {"default": {"default": {"cosine": {"min": 0.9, "max": 1, "reason": "r"}}}}}, "max/min"),
    ({"pairs": {"p/q": {}}}, "default"),
    ({"bounds": {}}, "pairs"),
])
def test_malformed_tolerances_are_refused(bad, problem):
    with pytest.raises(InputFileError, match=problem):
        Tolerances(bad, "toy.json")


def test_failure_message_says_what_where_by_how_much_and_what_would_pass():
    tol = Tolerances(TOY)
    b = np.zeros((2, 5, 4), np.float32)
    a = b.copy()
    a[1, 3, 2] = 0.05  # image "cat": loc max_abs 0.05 > 0.01, within the pair default 0.1
    metrics = compare_runs({"scores": b, "loc": a}, {"scores": b, "loc": b}, ["dog", "cat"])
    report = tol.check("x/ref", metrics)
    assert not report.ok and len(report.violations) == 1
    message = report.message()
    assert "output 'loc'" in message and "image 1 (cat)" in message
    assert "max_abs = 0.05" in message and "max_abs <= 0.01" in message
    assert "over by 0.04" in message
    assert "worst element [3, 2]: 0.05 vs 0" in message
    assert "smallest bound that passes every image: loc max_abs <= 0.05" in message
    assert "toy loc is tighter" in message
    with pytest.raises(ToleranceError):
        report.raise_if_failed()
    with pytest.raises(AssertionError):  # so pytest reports a failure, not an error
        report.raise_if_failed()


def test_lower_bounds_and_passing_runs():
    tol = Tolerances(TOY)
    a = np.array([[1.0, 0.0]], np.float32)
    b = np.array([[0.0, 1.0]], np.float32)
    report = tol.check("y/ref", compare_runs({"scores": a, "loc": b}, {"scores": b, "loc": b}, ["i0"]))
    assert [(v.output, v.bound.metric, v.measured) for v in report.violations] == [("scores", "cosine", 0.0)]
    assert "under by 0.9" in report.message()
    same = tol.check("y/ref", compare_runs({"scores": b, "loc": b}, {"scores": b, "loc": b}))
    assert same.ok and same.checked == 2


# ------------------------------------------------------------------ detections
def _dets(rows):
    return np.array(rows, dtype=np.float64).reshape(-1, 6)


BASE = _dets([[1, 10, 10, 110, 110, 0.9], [1, 200, 200, 300, 260, 0.5], [7, 0, 0, 50, 50, 0.3]])


def test_identical_detections_agree_fully():
    d = match_detections(BASE, BASE.copy())
    assert (d.matched, d.count_a, d.count_b, d.fraction) == (3, 3, 3, 1.0)
    assert match_detections(_dets([]), _dets([])).fraction == 1.0


def test_each_matching_rule_can_break_a_match():
    moved = BASE.copy()
    moved[0, 3] += 1.5   # box 100x100 -> 101.5 wide: IoU = 100/101.5 = 0.985 < 0.99
    assert match_detections(moved, BASE).matched == 2
    nudged = BASE.copy()
    nudged[0, 3] += 0.5  # IoU = 100/100.5 = 0.995 >= 0.99
    assert match_detections(nudged, BASE).matched == 3
    rescored = BASE.copy()
    rescored[1, 5] += 2e-3  # score off by 2e-3 > 1e-3
    assert match_detections(rescored, BASE).matched == 2
    relabelled = BASE.copy()
    relabelled[2, 0] = 8
    d = match_detections(relabelled, BASE)
    assert d.matched == 2 and d.unmatched_a[0][0] == 8.0 and d.unmatched_b[0][0] == 7.0


def test_matching_is_one_to_one_and_counts_extras():
    twice = np.vstack([BASE, BASE[:1]])       # a duplicate of the first detection in a
    d = match_detections(twice, BASE)
    assert (d.matched, d.count_a, d.count_b) == (3, 4, 3)
    assert d.fraction == 0.75                 # 3 / max(4, 3)


def _case(golden_dir, k):
    with np.load(POSTPROCESS_CASES_FILE) as data:
        scores = np.zeros((32760, 81), np.float32)
        scores[data[f"scores_rows_{k}"], data[f"scores_cols_{k}"]] = data[f"scores_vals_{k}"]
        return scores[None], data[f"loc_{k}"][None], tuple(int(v) for v in data[f"wh_{k}"])


def test_detection_agreement_through_the_reference_postprocessing(golden_dir, cfg512):
    scores, loc, wh = _case(golden_dir, 0)
    ref = {"scores": scores, "loc": loc}
    rng = np.random.default_rng(0)
    noisy = {"scores": scores + rng.uniform(-1e-6, 1e-6, scores.shape).astype(np.float32) * (scores > 0),
             "loc": loc + rng.uniform(-1e-5, 1e-5, loc.shape).astype(np.float32)}
    [same] = detection_agreement(noisy, ref, [wh], cfg512)
    assert same.count_b == 439 and same.fraction == 1.0   # golden dets_0 has 439 rows
    broken = {"scores": scores.copy(), "loc": loc}
    broken["scores"][0, :, 1:] *= 0.5                      # every score halved
    [bad] = detection_agreement(broken, ref, [wh], cfg512)
    assert bad.fraction < 0.5


# ------------------------------------------------------------------ saved runs
def _tiny_run(seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((2, 6, 5)).astype(np.float32), rng.random((2, 6, 4)).astype(np.float32)


def test_saved_runs_round_trip(tmp_path):
    scores, loc = _tiny_run()
    path = save_run(tmp_path, "om__toy__golden0", scores, loc, ["a", "b"], [(640, 480), (500, 375)],
                    {"backend": "om"})
    run = load_run(path)
    assert np.array_equal(run.scores, scores) and np.array_equal(run.loc, loc)
    assert run.image_ids == ["a", "b"] and run.image_sizes.tolist() == [[640, 480], [500, 375]]
    assert run.meta["backend"] == "om" and "numpy" in run.meta["versions"]
    with pytest.raises(ValueError, match="2 ids"):
        save_run(tmp_path, "bad", scores, loc, ["a", "b"], [(1, 1)])


def test_load_run_errors_name_the_file(tmp_path):
    with pytest.raises(InputFileError, match="not found"):
        load_run(tmp_path / "none.npz")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"junk")
    with pytest.raises(InputFileError, match="junk.npz"):
        load_run(junk)
    np.savez(tmp_path / "other.npz", x=np.zeros(1))
    with pytest.raises(InputFileError, match="lacks"):
        load_run(tmp_path / "other.npz")


def test_cli_compares_saved_runs_without_a_model(tmp_path, capsys):
    scores, loc = _tiny_run()
    save_run(tmp_path / "a", "ref", scores, loc, ["a", "b"], [(1, 1), (1, 1)], {"backend": "onnxruntime"})
    save_run(tmp_path / "b", "same", scores, loc, ["a", "b"], [(1, 1), (1, 1)], {"backend": "om"})
    flipped = scores.copy()
    flipped[1] = flipped[1, ::-1]
    save_run(tmp_path / "c", "bad", flipped, loc, ["a", "b"], [(1, 1), (1, 1)], {"backend": "om"})
    assert main(["compare", str(tmp_path / "b/same.npz"), str(tmp_path / "a/ref.npz"), "--no-detections"]) == 0
    assert "om/onnxruntime: 8 checks passed" in capsys.readouterr().out  # 2 images x 2 outputs x (cosine, rel_l2)
    assert main(["compare", str(tmp_path / "c/bad.npz"), str(tmp_path / "a/ref.npz"), "--no-detections"]) == 1
    out = capsys.readouterr().out
    assert "output 'scores', image 1 (b): cosine" in out


def test_loaded_runs_agree(pytestconfig, cfg512):
    """With --load-outputs DIR: every saved non-reference run against the
    ONNX Runtime run of the same images and weights, under its pair's bounds.
    Needs no model: a 310P run can be checked against outputs frozen elsewhere."""
    folder = pytestconfig.getoption("--load-outputs")
    if not folder:
        pytest.skip("no saved runs: pass --load-outputs DIR (written by --save-outputs DIR)")
    runs = sorted(Path(folder).expanduser().glob("*__*__*.npz"))
    pairs = []
    for path in runs:
        backend, images, weights = path.stem.split("__")
        reference = path.with_name(f"onnxruntime__{images}__{weights}.npz")
        if backend != "onnxruntime" and reference.is_file():
            pairs.append((path, reference, backend.split("-bs")[0], weights))
    if not pairs:
        pytest.skip(f"{folder} holds no run with a matching onnxruntime__<images>__<weights>.npz")
    failures = []
    for path, reference, backend, weights in pairs:
        pair = f"{backend}/onnxruntime@{weights}"  # as tests/hardware/test_npu.py and test_gpu.py key them
        report = compare_saved(load_run(path), load_run(reference), pair, cfg=cfg512)
        if not report.ok:
            failures.append(f"{path.name}:\n{report.message()}")
    assert not failures, "\n".join(failures)
