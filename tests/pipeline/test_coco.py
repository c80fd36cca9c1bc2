"""COCO results and scoring (reference section 8).

* The results the reference wrote for the golden detections
  (golden/postprocess_results.json) are reproduced from golden/dets and from
  our own detections.
* evaluate() is checked on cases small enough to work out the AP by hand, and
  against faster-coco-eval (an independent C++ implementation of the COCO
  metric) on the golden results scored against a synthetic ground truth.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from m2det_impl.errors import InputFileError
from m2det_impl.network.config import get_config
from m2det_impl.network.priors import make_priors
from m2det_impl.pipeline.coco import (
    STAT_NAMES,
    category_ids,
    evaluate,
    load_annotations,
    load_results,
    to_coco_results,
    write_results,
)
from m2det_impl.pipeline.postprocess import detect
from m2det_impl.resources import POSTPROCESS_CASES_FILE

pytestmark = pytest.mark.cpu

CFG = get_config(512)


@pytest.fixture(scope="module")
def golden_results(golden_dir):
    with open(golden_dir / "postprocess_results.json") as handle:
        return json.load(handle)


@pytest.fixture(scope="module")
def golden_cases(golden_dir):
    with np.load(POSTPROCESS_CASES_FILE) as data:
        return {k: data[k] for k in data.files}


def _compare_results(got, expected, box_tol=1e-3, score_rtol=1e-5):
    """Same images, categories and order; boxes and scores within tolerance.
    Returns the worst (bbox abs, score rel) differences."""
    assert len(got) == len(expected)
    assert [(r["image_id"], r["category_id"]) for r in got] == [
        (r["image_id"], r["category_id"]) for r in expected
    ]
    box = np.abs(np.array([r["bbox"] for r in got]) - np.array([r["bbox"] for r in expected]))
    exp_scores = np.array([r["score"] for r in expected])
    score = np.abs(np.array([r["score"] for r in got]) - exp_scores) / exp_scores
    assert box.max() <= box_tol and score.max() <= score_rtol, (box.max(), score.max())
    return box.max(), score.max()


# ---------------------------------------------------------- results files
def test_category_ids_in_golden_file_are_the_coco_ids(golden_results):
    ids = golden_results["coco_category_ids"]
    assert len(ids) == 80 and ids == sorted(ids) and ids[0] == 1 and ids[-1] == 90


@pytest.mark.parametrize("k", [0, 1, 2])
def test_results_from_reference_dets_equal_reference_results(golden_results, golden_cases, k):
    got = to_coco_results(golden_cases[f"dets_{k}"], 1000 + k, golden_results["coco_category_ids"])
    expected = golden_results["results"][str(k)]
    _compare_results(got, expected)
    assert got == expected  # measured: identical (the same float64 arithmetic)


@pytest.mark.parametrize("k", [0, 1, 2])
def test_results_from_our_detections_match_reference_results(golden_results, golden_cases, k):
    scores = np.zeros((CFG.num_priors, CFG.num_classes), np.float32)
    scores[golden_cases[f"scores_rows_{k}"], golden_cases[f"scores_cols_{k}"]] = golden_cases[
        f"scores_vals_{k}"
    ]
    w, h = (int(v) for v in golden_cases[f"wh_{k}"])
    dets = detect(scores, golden_cases[f"loc_{k}"], make_priors(CFG), w, h, CFG)
    got = to_coco_results(dets, 1000 + k, golden_results["coco_category_ids"])
    _compare_results(got, golden_results["results"][str(k)])


def test_to_coco_results_by_hand():
    dets = np.array([[2, 10.0, 20.0, 29.0, 59.5, 0.75], [1, 0.5, 0.25, 0.5, 0.25, 0.5]])
    out = to_coco_results(dets, np.int64(7), [11, 22, 33])
    assert out == [
        {"image_id": 7, "category_id": 22, "bbox": [10.0, 20.0, 20.0, 40.5], "score": 0.75},
        {"image_id": 7, "category_id": 11, "bbox": [0.5, 0.25, 1.0, 1.0], "score": 0.5},
    ]
    assert all(type(v) is float for r in out for v in r["bbox"])
    assert to_coco_results(np.zeros((0, 6)), 1, [1]) == []


@pytest.mark.parametrize("bad_class", [0, 4, 1.5])
def test_to_coco_results_rejects_unknown_classes(bad_class):
    with pytest.raises(ValueError, match="class indices"):
        to_coco_results(np.array([[bad_class, 0, 0, 1, 1, 0.5]]), 1, [11, 22, 33])


def test_to_coco_results_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"\(2, 5\)"):
        to_coco_results(np.zeros((2, 5)), 1, [1])


def test_write_results_round_trip_and_replace(tmp_path):
    path = tmp_path / "results.json"
    bbox = [np.float32(1.5), 2.0, 3.0, 4.0]  # numpy scalars are written as plain numbers
    write_results(path, [{"image_id": 1, "category_id": 2, "bbox": bbox, "score": np.float64(0.1)}])
    expected = [{"image_id": 1, "category_id": 2, "bbox": [1.5, 2.0, 3.0, 4.0], "score": 0.1}]
    assert load_results(path) == expected
    write_results(path, [])
    assert load_results(path) == []
    assert sorted(os.listdir(tmp_path)) == ["results.json"]  # no temporary files left


def test_write_results_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "results.json"
    first = [{"image_id": 1, "category_id": 1, "bbox": [0.0, 0.0, 1.0, 1.0], "score": 0.5}]  # load_results checks them
    write_results(path, first)

    def broken_replace(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk gone"):
        write_results(path, [{"image_id": 2}])
    monkeypatch.undo()
    assert load_results(path) == first  # old content intact
    assert sorted(os.listdir(tmp_path)) == ["results.json"]  # temp file cleaned up


def test_write_results_needs_an_existing_folder(tmp_path):
    with pytest.raises(InputFileError, match="does not exist"):
        write_results(tmp_path / "missing" / "r.json", [])


# ------------------------------------------------------------- annotations
def _gt(images, annotations, categories=({"id": 1, "name": "thing"},)):
    return {
        "images": [{"id": i, "width": 640, "height": 480, "file_name": f"{i}.jpg"} for i in images],
        "categories": list(categories),
        "annotations": [
            {"id": n + 1, "image_id": img, "category_id": cat, "bbox": list(box),
             "area": float(box[2] * box[3]), "iscrowd": 0}
            for n, (img, cat, box) in enumerate(annotations)
        ],
    }


def _write(tmp_path, name, obj):
    path = tmp_path / name
    path.write_text(json.dumps(obj))
    return path


def test_load_annotations_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(InputFileError, match="nope.json.*not found"):
        load_annotations(missing)
    broken = tmp_path / "broken.json"
    broken.write_text('{"images": [')
    with pytest.raises(InputFileError, match="broken.json.*not valid JSON"):
        load_annotations(broken)
    wrong = _write(tmp_path, "list.json", [1, 2])
    with pytest.raises(InputFileError, match="list.json.*not a COCO instances file"):
        load_annotations(wrong)
    with pytest.raises(InputFileError, match="results.json.*not found"):
        evaluate(_write(tmp_path, "gt.json", _gt([1], [])), tmp_path / "results.json")


def test_category_ids_follow_get_cat_ids_order(tmp_path, capsys):
    cats = [{"id": 5, "name": "e"}, {"id": 2, "name": "b"}, {"id": 9, "name": "i"}]
    gt = load_annotations(_write(tmp_path, "gt.json", _gt([1], [], cats)))
    assert category_ids(gt) == [5, 2, 9]  # pycocotools keeps the file's order
    assert capsys.readouterr().out == ""  # pycocotools' progress prints are silenced


# ----------------------------------------------------------------- scoring
def _result(image, box, score=0.9, cat=1):
    return {"image_id": image, "category_id": cat, "bbox": list(box), "score": score}


def test_perfect_detection_scores_one(tmp_path):
    gt = _write(tmp_path, "gt.json", _gt([1], [(1, 1, (10, 10, 100, 50))]))
    summary = evaluate(gt, [_result(1, (10, 10, 100, 50))])
    assert summary.ap == pytest.approx(1.0, abs=1e-12)
    assert summary.names == STAT_NAMES and len(summary.stats) == 12
    assert summary.as_dict()["AP50"] == pytest.approx(1.0, abs=1e-12)


def test_partial_overlap_ap_by_hand(tmp_path):
    # GT 100x100, detection 100x62 inside it: IoU 0.62. It is a true positive
    # at IoU thresholds .50, .55, .60 and a miss at .65 ... .95 -> AP = 3/10.
    # Area 10000 > 96^2: "large"; no small or medium GT -> -1 there.
    gt = _write(tmp_path, "gt.json", _gt([1], [(1, 1, (0, 0, 100, 100))]))
    summary = evaluate(gt, [_result(1, (0, 0, 100, 62))])
    expected = [0.3, 1.0, 0.0, -1.0, -1.0, 0.3, 0.3, 0.3, 0.3, -1.0, -1.0, 0.3]
    assert summary.stats == pytest.approx(expected, abs=1e-12)
    assert "Average Precision" in summary.text and "0.300" in summary.text


def test_zero_detections_score_zero_without_crashing(tmp_path):
    gt = _write(tmp_path, "gt.json", _gt([1, 2], [(1, 1, (0, 0, 50, 50))]))
    summary = evaluate(gt, [])
    assert summary.ap == 0.0 and summary.num_detections == 0
    assert summary.stats[8] == 0.0  # AR@100
    results = tmp_path / "empty.json"
    write_results(results, [])
    assert evaluate(gt, results).stats == summary.stats


def test_image_ids_restrict_the_evaluation(tmp_path):
    # One GT per image, only image 1 detected. Over both images recall tops out
    # at 0.5 with precision 1: of the 101 recall points 0, .01, ..., 1 the 51
    # points <= 0.5 have precision 1 -> AP = 51/101 at every IoU threshold.
    gt = _write(tmp_path, "gt.json", _gt([1, 2], [(1, 1, (0, 0, 50, 50)), (2, 1, (0, 0, 50, 50))]))
    results = [_result(1, (0, 0, 50, 50))]
    assert evaluate(gt, results).ap == pytest.approx(51 / 101, abs=1e-12)
    only_first = evaluate(gt, results, image_ids=[1])
    assert only_first.ap == pytest.approx(1.0, abs=1e-12) and only_first.num_images == 1


def test_evaluate_accepts_a_coco_object_and_a_path_and_does_not_mutate(tmp_path, capsys, console):
    gt_path = _write(tmp_path, "gt.json", _gt([1], [(1, 1, (0, 0, 100, 100))]))
    results = [_result(1, (0, 0, 100, 62))]
    snapshot = json.loads(json.dumps(results))
    by_path = evaluate(gt_path, results)
    res_path = tmp_path / "res.json"
    write_results(res_path, results)
    by_object = evaluate(load_annotations(gt_path), res_path)
    assert by_path.stats == by_object.stats
    assert results == snapshot  # pycocotools' loadRes adds keys; not to ours
    assert capsys.readouterr().out == ""
    evaluate(gt_path, results, verbose=True)
    assert "Average Precision" in capsys.readouterr().out


def test_results_for_unknown_images_are_rejected(tmp_path):
    gt = _write(tmp_path, "gt.json", _gt([1], [(1, 1, (0, 0, 10, 10))]))
    with pytest.raises(ValueError, match=r"not in the annotations.*\[99\]"):
        evaluate(gt, [_result(99, (0, 0, 10, 10))])


# ------------------------------------------------- cross-check: faster-coco-eval
def _synthetic_gt_for_golden(golden_results, golden_cases):
    """Ground truth for images 1000..1002: jittered copies of about a third of the
    golden detections (so some match at high IoU, some at low, some not at
    all), a few crowd regions and some objects nobody detected."""
    rng = np.random.RandomState(1234)
    cat_ids = golden_results["coco_category_ids"]
    images, annotations = [], []
    for k in range(3):
        w, h = (int(v) for v in golden_cases[f"wh_{k}"])
        images.append({"id": 1000 + k, "width": w, "height": h, "file_name": f"{k}.jpg"})
        for r in golden_results["results"][str(k)]:
            if rng.rand() > 0.35:
                continue
            x, y, bw, bh = r["bbox"]
            jitter = rng.uniform(-0.25, 0.25, 4) * [bw, bh, bw, bh]
            box = [x + jitter[0], y + jitter[1], max(2.0, bw + jitter[2]), max(2.0, bh + jitter[3])]
            annotations.append((1000 + k, r["category_id"], box, int(rng.rand() < 0.05)))
        for _ in range(10):
            cat = int(rng.choice(cat_ids))
            bw, bh = rng.uniform(5, 200, 2)
            annotations.append((1000 + k, cat, [rng.uniform(0, w - bw), rng.uniform(0, h - bh), bw, bh], 0))
    return {
        "images": images,
        "categories": [{"id": c, "name": f"c{c}"} for c in cat_ids],
        "annotations": [
            {"id": n + 1, "image_id": img, "category_id": cat, "bbox": box,
             "area": float(box[2] * box[3]), "iscrowd": crowd}
            for n, (img, cat, box, crowd) in enumerate(annotations)
        ],
    }


def _faster_coco_eval_stats(gt_path, results_path):
    faster = pytest.importorskip("faster_coco_eval")
    gt = faster.COCO(str(gt_path))
    dt = gt.loadRes(str(results_path))
    evaluator = faster.COCOeval_faster(gt, dt, "bbox", print_function=lambda *a, **k: None)
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    return np.asarray(evaluator.stats[:12], dtype=np.float64)


def test_evaluate_agrees_with_faster_coco_eval(tmp_path, golden_results, golden_cases):
    gt_path = _write(tmp_path, "gt.json", _synthetic_gt_for_golden(golden_results, golden_cases))
    results = [r for k in range(3) for r in golden_results["results"][str(k)]]
    res_path = tmp_path / "results.json"
    write_results(res_path, results)
    ours = np.array(evaluate(gt_path, res_path).stats)
    theirs = _faster_coco_eval_stats(gt_path, res_path)
    assert 0.05 < ours[0] < 0.95, "the synthetic case should not be trivial"
    assert np.abs(ours - theirs).max() <= 1e-4, (ours, theirs)
