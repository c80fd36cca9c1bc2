"""Round trip through the whole post-processing and scoring chain.

From ground-truth boxes, build the raw outputs a perfect network would give
(for each object: one prior, its offsets from ``encode()``, a confident score
for the object's class), then run ``detect()``, ``to_coco_results()`` and
``evaluate()``. Every stage has to get its conventions right for the AP to
come out as derived here: the x2 = x1 + w decode, pixel scaling by the
original size, class index j -> j-th category id, the "+1" in the results'
width/height, and the pycocotools call.

Expected values are derived from the ground truth alone:
* perfect boxes: every object found once, exactly -> AP 1 (at least 0.95);
* boxes scaled about their centre so that IoU = 0.72 with their object: a hit
  at the IoU thresholds .50 .. .70 (5 of 10), a miss above -> AP = 0.5;
* one class's scores removed: that class's AP drops to 0 and COCO's AP is the
  unweighted mean over the K classes that have ground truth -> AP - 1/K.
Finally evaluate() is cross-checked against faster-coco-eval on the same
files, with randomly scaled boxes.

Data: the bundled mini COCO set, m2det_impl/data/mini_coco (scripts/make_mini_coco.py) and a small set built in
this file for what mini_coco lacks (crowd region, empty categories).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from m2det_impl.network.config import get_config
from m2det_impl.network.priors import make_priors
from m2det_impl.pipeline.coco import category_ids, evaluate, load_annotations, to_coco_results, write_results
from m2det_impl.pipeline.postprocess import detect, encode
from m2det_impl.resources import MINI_COCO

pytestmark = pytest.mark.cpu

CFG = get_config(512)
JITTER_IOU = 0.72
IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)


def generated_annotations(seed=7):
    """A tiny COCO instances set built here: 10 images of assorted sizes,
    12 categories with COCO-like non-contiguous ids (two without objects),
    1-9 objects per image from 4 px to most of the image, same-class
    neighbours, and a crowd region."""
    rng = np.random.RandomState(seed)
    cat_ids = [1, 3, 7, 8, 15, 22, 33, 44, 52, 67, 80, 90]
    used = cat_ids[:10]
    images, annotations = [], []
    for i in range(10):
        width, height = int(rng.choice([640, 500, 333, 427])), int(rng.choice([480, 375, 500, 640]))
        image_id = 100 + 7 * i
        images.append({"id": image_id, "width": width, "height": height,
                       "file_name": f"COCO_val2014_{image_id:012d}.jpg"})
        for _ in range(rng.randint(1, 10)):
            w = float(rng.uniform(4, 0.8 * width))
            h = float(rng.uniform(4, 0.8 * height))
            x = float(rng.uniform(0, width - w))
            y = float(rng.uniform(0, height - h))
            annotations.append((image_id, int(rng.choice(used)), [x, y, w, h], 0))
        if i == 3:
            annotations.append((image_id, used[0], [0.0, 0.0, width / 2, height / 2], 1))
    return {
        "images": images,
        "categories": [{"id": c, "name": f"cat{c}", "supercategory": "x"} for c in cat_ids],
        "annotations": [
            {"id": n + 1, "image_id": img, "category_id": cat, "bbox": box,
             "area": box[2] * box[3], "iscrowd": crowd}
            for n, (img, cat, box, crowd) in enumerate(annotations)
        ],
    }


@pytest.fixture(scope="module", params=["mini_coco", "generated"])
def gt(request, fixtures_dir, tmp_path_factory):
    """The project's mini COCO (m2det_impl/data/mini_coco, 24 images, 68 objects, 26
    classes), and a set generated here that adds what it lacks: a crowd region,
    categories without objects, a non-contiguous category list, 4-pixel boxes
    and overlapping objects of one class."""
    if request.param == "mini_coco":
        path = MINI_COCO / "annotations" / "instances_minival2014.json"
        assert path.is_file(), f"{path} missing: run scripts/make_mini_coco.py"
    else:
        path = tmp_path_factory.mktemp("gt") / "instances.json"
        path.write_text(json.dumps(generated_annotations()))
    return load_annotations(path)


@pytest.fixture(scope="module")
def priors():
    return make_priors(CFG)


def _objects(gt, image_id):
    """The non-crowd objects of one image (crowd regions are never matched)."""
    return [a for a in gt.imgToAnns[image_id] if not a.get("iscrowd", 0)]


def _iou_with_priors(box, priors):
    """IoU of one normalised x1y1x2y2 box with every prior (cx, cy, w, h)."""
    p = priors.astype(np.float64)
    px1, py1 = p[:, 0] - p[:, 2] / 2, p[:, 1] - p[:, 3] / 2
    px2, py2 = p[:, 0] + p[:, 2] / 2, p[:, 1] + p[:, 3] / 2
    iw = np.clip(np.minimum(px2, box[2]) - np.maximum(px1, box[0]), 0, None)
    ih = np.clip(np.minimum(py2, box[3]) - np.maximum(py1, box[1]), 0, None)
    inter = iw * ih
    return inter / (p[:, 2] * p[:, 3] + (box[2] - box[0]) * (box[3] - box[1]) - inter)


def _target_box(bbox, scale=1.0):
    """The detection (x1, y1, x2, y2) pixels whose COCO result bbox is ``bbox``
    scaled by ``scale`` about its centre: results store [x1, y1, x2 - x1 + 1,
    y2 - y1 + 1], hence the -1."""
    x, y, w, h = bbox
    cx, cy = x + w / 2, y + h / 2
    w, h = w * scale, h * scale
    x1, y1 = cx - w / 2, cy - h / 2
    return x1, y1, x1 + w - 1, y1 + h - 1


def perfect_outputs(gt, image_id, priors, cat_ids, *, scale=1.0, drop_category=None):
    """(scores [P, 81], loc [P, 4], width, height) of a perfect network.
    ``scale`` is a number or a function of the annotation."""
    info = gt.imgs[image_id]
    width, height = info["width"], info["height"]
    scores = np.zeros((len(priors), CFG.num_classes), np.float32)
    loc = np.zeros((len(priors), 4), np.float32)
    used = np.zeros(len(priors), bool)
    for obj in _objects(gt, image_id):
        x1, y1, x2, y2 = _target_box(obj["bbox"], scale(obj) if callable(scale) else scale)
        box = np.array([x1 / width, y1 / height, x2 / width, y2 / height])
        iou = _iou_with_priors(box, priors)
        iou[used] = -1
        p = int(np.argmax(iou))
        used[p] = True
        loc[p] = encode(box[None], priors[p][None])[0]
        scores[p, 0] = 0.02
        if obj["category_id"] != drop_category:
            scores[p, cat_ids.index(obj["category_id"]) + 1] = 0.98
    return scores, loc, width, height


def run_round_trip(gt, priors, **kwargs):
    cat_ids = category_ids(gt)
    results = []
    for image_id in sorted(gt.getImgIds()):
        scores, loc, width, height = perfect_outputs(gt, image_id, priors, cat_ids, **kwargs)
        dets = detect(scores, loc, priors, width, height, CFG)
        results += to_coco_results(dets, image_id, cat_ids)
    return evaluate(gt, results), results


@pytest.fixture(scope="module")
def perfect(gt, priors):
    return run_round_trip(gt, priors)


def _classes_with_objects(gt):
    return sorted({a["category_id"] for a in gt.dataset["annotations"] if not a.get("iscrowd", 0)})


def test_ground_truth_is_usable(gt):
    """Preconditions of the derivations: enough objects and classes, boxes
    wider and taller than one pixel (the "+1" convention cannot express less),
    at most 50 objects per class and 100 per image (the caps)."""
    objects = [a for a in gt.dataset["annotations"] if not a.get("iscrowd", 0)]
    assert len(objects) >= 20 and len(_classes_with_objects(gt)) >= 3
    assert all(a["bbox"][2] > 1 and a["bbox"][3] > 1 for a in objects)
    for image_id in gt.getImgIds():
        objs = _objects(gt, image_id)
        assert len(objs) <= 100
        assert max(np.bincount([a["category_id"] for a in objs] or [0])) <= CFG.test.keep_per_class


def test_perfect_network_scores_ap_one(gt, perfect):
    summary, results = perfect
    objects = [a for a in gt.dataset["annotations"] if not a.get("iscrowd", 0)]
    assert len(results) == len(objects)  # one detection per object, nothing else
    assert summary.ap >= 0.95
    assert summary.ap == pytest.approx(1.0, abs=1e-9)
    assert summary.stats[1] == pytest.approx(1.0, abs=1e-9)  # AP50


def test_results_reproduce_the_ground_truth_boxes(gt, perfect):
    _, results = perfect
    by_key = {}
    for a in gt.dataset["annotations"]:
        if not a.get("iscrowd", 0):
            by_key.setdefault((a["image_id"], a["category_id"]), []).append(a["bbox"])
    worst = 0.0
    for r in results:
        candidates = np.array(by_key[(r["image_id"], r["category_id"])])
        err = np.abs(candidates - r["bbox"]).max(axis=1).min()
        worst = max(worst, err)
    # float32 decode of coordinates up to ~640 px: measured 3.8e-5 px on
    # mini_coco; a lost "+1" or a wrong scale would be off by a pixel or more
    assert worst <= 1e-3


def test_jittered_boxes_lower_the_ap_as_derived(gt, priors, perfect):
    scale = 1 / math.sqrt(JITTER_IOU)  # area x 1/0.72 around the object -> IoU 0.72
    summary, _ = run_round_trip(gt, priors, scale=scale)
    hits = int((IOU_THRESHOLDS <= JITTER_IOU + 1e-9).sum())
    assert hits == 5
    expected = hits / len(IOU_THRESHOLDS)
    assert summary.ap < perfect[0].ap
    # a scaled box can only go to another object of its class that overlaps it
    # more than its own: allow a 1% margin for such crowded scenes
    assert summary.ap == pytest.approx(expected, abs=0.01)
    assert summary.stats[1] == pytest.approx(1.0, abs=0.01)  # AP50: still all hits
    assert summary.stats[2] == pytest.approx(0.0, abs=1e-9)  # AP75: all misses


def test_dropping_one_class_costs_its_share(gt, priors, perfect):
    classes = _classes_with_objects(gt)
    counts = {c: 0 for c in classes}
    for a in gt.dataset["annotations"]:
        if not a.get("iscrowd", 0):
            counts[a["category_id"]] += 1
    dropped = max(classes, key=lambda c: (counts[c], -c))  # the most frequent class
    summary, results = run_round_trip(gt, priors, drop_category=dropped)
    assert all(r["category_id"] != dropped for r in results)
    share = 1 / len(classes)
    assert summary.ap == pytest.approx(perfect[0].ap - share, abs=1e-9)


def test_evaluate_agrees_with_faster_coco_eval(gt, priors, tmp_path):
    """The same annotation and results files scored by pycocotools (evaluate)
    and by faster-coco-eval; boxes scaled by a random factor per object so that
    every IoU threshold and area range sees hits and misses."""
    faster = pytest.importorskip("faster_coco_eval")
    rng = np.random.RandomState(3)
    factors = {a["id"]: float(rng.uniform(0.75, 1.45)) for a in gt.dataset["annotations"]}
    summary, results = run_round_trip(gt, priors, scale=lambda obj: factors[obj["id"]])
    gt_path = tmp_path / "gt.json"
    gt_path.write_text(json.dumps(gt.dataset))
    res_path = tmp_path / "results.json"
    write_results(res_path, results)
    ours = np.array(evaluate(gt_path, res_path).stats)
    assert np.array_equal(ours, summary.stats)
    reference = faster.COCO(str(gt_path))
    evaluator = faster.COCOeval_faster(
        reference, reference.loadRes(str(res_path)), "bbox", print_function=lambda *a, **k: None
    )
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    theirs = np.asarray(evaluator.stats[:12], dtype=np.float64)
    assert 0.1 < ours[0] < 0.9, "the jitter should make the case non-trivial"
    assert np.abs(ours - theirs).max() <= 1e-4, (ours, theirs)
