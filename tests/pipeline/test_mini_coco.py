"""fixtures/mini_coco: the synthetic COCO stand-in is well-formed and scorable.

The accuracy-path tests rely on this dataset looking like COCO minival2014 to
every consumer (pycocotools, image readers, the id -> file name rule of
docs/reference.md 8). These checks pin that down and prove the fixture is exactly what
``scripts/make_mini_coco.py`` produces.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import re
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from m2det_impl.resources import MINI_COCO

pytestmark = pytest.mark.cpu

REPO = Path(__file__).resolve().parents[2]
ROOT = MINI_COCO
ANN = ROOT / "annotations" / "instances_minival2014.json"
IMAGES = ROOT / "val2014"
GOLDEN_RESULTS = REPO / "fixtures" / "golden" / "postprocess_results.json"
BUDGET_BYTES = 2 * 1024 * 1024


@pytest.fixture(scope="module")
def coco_json() -> dict:
    return json.loads(ANN.read_text())


def _load_generator():
    path = REPO / "scripts" / "make_mini_coco.py"
    spec = importlib.util.spec_from_file_location("make_mini_coco", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_layout_and_size():
    files = sorted(p for p in ROOT.rglob("*") if p.is_file())
    jpgs = sorted(IMAGES.glob("*.jpg"))
    assert len(jpgs) == 24
    assert all(re.fullmatch(r"COCO_val2014_\d{12}\.jpg", p.name) for p in jpgs)
    assert ANN.is_file()
    assert set(files) == set(jpgs) | {ANN, ROOT / "README.md"}, "unexpected files in the fixture"
    total = sum(p.stat().st_size for p in files)
    assert total < BUDGET_BYTES, f"{total} bytes exceeds the 2 MB budget"


def test_images_section(coco_json):
    images = coco_json["images"]
    ids = [im["id"] for im in images]
    assert ids == sorted(ids) and len(set(ids)) == len(ids) == 24
    for im in images:
        assert {"id", "file_name", "width", "height"} <= im.keys()
        assert im["file_name"] == "COCO_val2014_%012d.jpg" % im["id"]  # docs/reference.md 8
        assert (IMAGES / im["file_name"]).is_file()


def test_sizes_match_decoded_images(coco_json):
    grayscale = 0
    for im in coco_json["images"]:
        path = str(IMAGES / im["file_name"])
        colour = cv2.imread(path, cv2.IMREAD_COLOR)  # what the pipeline reads (docs/reference.md 4)
        assert colour is not None and colour.dtype == np.uint8
        assert colour.shape == (im["height"], im["width"], 3), im["file_name"]
        raw = cv2.imread(path, cv2.IMREAD_UNCHANGED)
        grayscale += raw.ndim == 2
    assert grayscale == 1  # the one single-channel JPEG, like COCO's few


def test_categories_are_the_official_80(coco_json):
    cats = coco_json["categories"]
    ids = [c["id"] for c in cats]
    # Independent source: the golden reference run's category id list.
    golden_ids = json.loads(GOLDEN_RESULTS.read_text())["coco_category_ids"]
    assert ids == golden_ids
    assert len(ids) == 80 and ids == sorted(ids)
    by_id = {c["id"]: (c["name"], c["supercategory"]) for c in cats}
    # Spot checks across the gaps in the id range.
    assert by_id[1] == ("person", "person")
    assert by_id[11] == ("fire hydrant", "outdoor")
    assert by_id[13] == ("stop sign", "outdoor")
    assert by_id[27] == ("backpack", "accessory")
    assert by_id[46] == ("wine glass", "kitchen")
    assert by_id[67] == ("dining table", "furniture")
    assert by_id[70] == ("toilet", "furniture")
    assert by_id[72] == ("tv", "electronic")
    assert by_id[84] == ("book", "indoor")
    assert by_id[90] == ("toothbrush", "indoor")
    assert len({name for name, _ in by_id.values()}) == 80


def test_annotations_section(coco_json):
    sizes = {im["id"]: (im["width"], im["height"]) for im in coco_json["images"]}
    cat_ids = {c["id"] for c in coco_json["categories"]}
    anns = coco_json["annotations"]
    assert len({a["id"] for a in anns}) == len(anns)
    for a in anns:
        assert a["image_id"] in sizes and a["category_id"] in cat_ids
        assert a["iscrowd"] == 0
        x, y, w, h = a["bbox"]
        width, height = sizes[a["image_id"]]
        assert w >= 1 and h >= 1 and x >= 0 and y >= 0
        assert x + w <= width and y + h <= height, a
        assert a["area"] == w * h
        assert a["segmentation"] == [[x, y, x + w, y, x + w, y + h, x, y + h]]


def test_coverage(coco_json):
    anns = coco_json["annotations"]
    per_image = Counter(a["image_id"] for a in anns)
    assert set(per_image) == {im["id"] for im in coco_json["images"]}  # no empty image
    assert max(per_image.values()) <= 5
    assert len({a["category_id"] for a in anns}) >= 20
    same_class = Counter((a["image_id"], a["category_id"]) for a in anns)
    assert max(same_class.values()) >= 3
    areas = [a["area"] for a in anns]
    assert any(v < 32**2 for v in areas)
    assert any(32**2 <= v < 96**2 for v in areas)
    assert any(v >= 96**2 for v in areas)


def _evaluate(dets: list[dict]) -> np.ndarray:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ANN))
        dt = gt.loadRes(dets)
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


def test_pycocotools_scores_ground_truth_as_perfect(coco_json):
    dets = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
        for a in coco_json["annotations"]
    ]
    stats = _evaluate(dets)
    # AP@[.5:.95], AP50, AP75, AP small/medium/large, then the recalls.
    assert stats[0] == 1.0
    assert stats[1] == 1.0 and stats[2] == 1.0
    assert stats[3] == 1.0 and stats[4] == 1.0 and stats[5] == 1.0
    assert stats[8] == 1.0


def test_pycocotools_notices_a_wrong_result(coco_json):
    # Negative control: the perfect score above is not an artefact. Widening
    # every box by 30% of its width puts the IoU at 1/1.3 = 0.769: a match at
    # the IoU thresholds .50, .55, ..., .75 and a miss at .80 ... .95, so every
    # detection is perfect for 6 of the 10 thresholds: AP@[.5:.95] = 0.6.
    dets = []
    for a in coco_json["annotations"]:
        x, y, w, h = a["bbox"]
        dets.append({"image_id": a["image_id"], "category_id": a["category_id"],
                     "bbox": [x, y, w * 1.3, h], "score": 1.0})  # fmt: skip
    stats = _evaluate(dets)
    assert stats[1] == 1.0 and stats[2] == 1.0  # AP50, AP75
    assert stats[0] == pytest.approx(0.6, abs=1e-12)


#: How far the committed JPEGs may decode from a fresh encode of the generator's pixels. JPEG
#: encoders differ across SIMD paths (libjpeg-turbo's DCT on AVX2 vs AVX-512, seen on 7 of 24
#: images), so bytes are not held; a few levels here and there are. The generator's own
#: compression loss is about 10 levels on average, and an image shifted by 3 pixels decodes
#: 6 levels away on average: the bounds below sit well inside both.
DECODE_MEAN_ABS_MAX = 0.5
DECODE_P999_ABS_MAX = 8.0


def _regenerated():
    gen = _load_generator()
    coco, files = gen.build()
    return gen, coco, files


def _decode_distance(committed: Path, pixels: np.ndarray, gen) -> tuple:
    flag = cv2.IMREAD_GRAYSCALE if pixels.ndim == 2 else cv2.IMREAD_COLOR
    mine = cv2.imdecode(np.frombuffer(gen.encode_jpeg(pixels), np.uint8), flag).astype(np.int16)
    theirs = cv2.imread(str(committed), flag).astype(np.int16)
    if mine.shape != theirs.shape:
        return float("inf"), float("inf")
    diff = np.abs(mine - theirs)
    return float(diff.mean()), float(np.percentile(diff, 99.9))


def test_regeneration_reproduces_the_committed_set():
    """The committed set is the generator's output: the annotation file byte for byte (pure
    Python JSON, deterministic everywhere), every image within the stated decode bounds."""
    gen, coco, files = _regenerated()
    committed = sorted(p.relative_to(ROOT) for p in ROOT.rglob("*") if p.is_file() and p.name != "README.md")
    assert sorted([Path(rel) for rel, _ in files] + [Path(gen.ANNOTATION_FILE)]) == committed
    assert (ROOT / gen.ANNOTATION_FILE).read_bytes() == gen.annotation_bytes(coco)
    far = {}
    for rel, pixels in files:
        mean, p999 = _decode_distance(ROOT / rel, pixels, gen)
        if mean > DECODE_MEAN_ABS_MAX or p999 > DECODE_P999_ABS_MAX:
            far[rel] = (round(mean, 3), p999)
    assert not far, f"committed JPEGs that are not the generator's images (mean, 99.9% abs): {far}"


def test_the_decode_bound_tells_another_image_apart():
    """The bound above can fail: the same generator's image moved by 3 pixels is refused."""
    gen, _, files = _regenerated()
    rel, pixels = files[0]
    mean, p999 = _decode_distance(ROOT / rel, np.roll(pixels, 3, axis=1), gen)
    assert mean > DECODE_MEAN_ABS_MAX or p999 > DECODE_P999_ABS_MAX
