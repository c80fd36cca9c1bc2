#!/usr/bin/env python3
"""Generate ``fixtures/mini_coco``: a tiny, synthetic, COCO-format dataset.

Why: the accuracy path of the pipeline (read ``val2014`` images by id, run the
model, write COCO results, score with pycocotools) must be testable on a
machine without the 6 GB COCO download. This dataset has the same *shape* as
COCO minival2014 - file layout and names, the 80 official categories with
their real (gapped) ids, image sizes typical of COCO, a grayscale JPEG like
the few COCO has, objects small/medium/large in COCO's area ranges - but only
24 images and synthetic content, so it can be committed (< 2 MB) and shipped.

Determinism: all randomness comes from ``numpy.random.RandomState(SEED)``,
whose stream numpy guarantees to stay the same across versions (unlike
``default_rng``'s distributions); drawing uses OpenCV primitives without
anti-aliasing; JPEGs are written by ``cv2.imencode`` with fixed parameters
(libjpeg's integer DCT is bit-exact across builds and SIMD paths); the JSON
has a fixed key order and separators and no dates or versions. Running this
script twice gives byte-identical files (``tests/pipeline/test_mini_coco.py`` checks
it by regenerating into a temporary directory).

Ground truth: each object is drawn on its own mask first; its COCO ``bbox`` is
the tight pixel extent of that mask, ``[x, y, w, h]`` with ``w = x_max - x_min
+ 1``. When objects overlap, the later one is painted over the earlier one but
the earlier box keeps its full extent (amodal boxes; placement rejects any
overlap above 10% of the smaller box, so every object stays visible). ``segmentation`` is the bbox as a polygon and
``area`` is ``w * h``, so a detection equal to the box scores IoU 1.

Usage::

    python scripts/make_mini_coco.py              # writes fixtures/mini_coco
    python scripts/make_mini_coco.py --out DIR    # anywhere else
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np

SEED = 20190127  # M2Det's AAAI 2019 publication date, for the record
NUM_IMAGES = 24
JPEG_QUALITY = 80
ANNOTATION_FILE = "annotations/instances_minival2014.json"
IMAGE_DIR = "val2014"
FILE_PATTERN = "COCO_val2014_%012d.jpg"

# The 80 COCO 2014/2017 detection categories: (id, name, supercategory), ids
# 1..90 with the 10 gaps of the official files. ``getCatIds()`` returns them in
# this (ascending) order, which is the model's class order (docs/reference.md 8).
COCO_CATEGORIES = [
    (1, "person", "person"), (2, "bicycle", "vehicle"), (3, "car", "vehicle"),
    (4, "motorcycle", "vehicle"), (5, "airplane", "vehicle"), (6, "bus", "vehicle"),
    (7, "train", "vehicle"), (8, "truck", "vehicle"), (9, "boat", "vehicle"),
    (10, "traffic light", "outdoor"), (11, "fire hydrant", "outdoor"), (13, "stop sign", "outdoor"),
    (14, "parking meter", "outdoor"), (15, "bench", "outdoor"), (16, "bird", "animal"),
    (17, "cat", "animal"), (18, "dog", "animal"), (19, "horse", "animal"),
    (20, "sheep", "animal"), (21, "cow", "animal"), (22, "elephant", "animal"),
    (23, "bear", "animal"), (24, "zebra", "animal"), (25, "giraffe", "animal"),
    (27, "backpack", "accessory"), (28, "umbrella", "accessory"), (31, "handbag", "accessory"),
    (32, "tie", "accessory"), (33, "suitcase", "accessory"), (34, "frisbee", "sports"),
    (35, "skis", "sports"), (36, "snowboard", "sports"), (37, "sports ball", "sports"),
    (38, "kite", "sports"), (39, "baseball bat", "sports"), (40, "baseball glove", "sports"),
    (41, "skateboard", "sports"), (42, "surfboard", "sports"), (43, "tennis racket", "sports"),
    (44, "bottle", "kitchen"), (46, "wine glass", "kitchen"), (47, "cup", "kitchen"),
    (48, "fork", "kitchen"), (49, "knife", "kitchen"), (50, "spoon", "kitchen"),
    (51, "bowl", "kitchen"), (52, "banana", "food"), (53, "apple", "food"),
    (54, "sandwich", "food"), (55, "orange", "food"), (56, "broccoli", "food"),
    (57, "carrot", "food"), (58, "hot dog", "food"), (59, "pizza", "food"),
    (60, "donut", "food"), (61, "cake", "food"), (62, "chair", "furniture"),
    (63, "couch", "furniture"), (64, "potted plant", "furniture"), (65, "bed", "furniture"),
    (67, "dining table", "furniture"), (70, "toilet", "furniture"), (72, "tv", "electronic"),
    (73, "laptop", "electronic"), (74, "mouse", "electronic"), (75, "remote", "electronic"),
    (76, "keyboard", "electronic"), (77, "cell phone", "electronic"), (78, "microwave", "appliance"),
    (79, "oven", "appliance"), (80, "toaster", "appliance"), (81, "sink", "appliance"),
    (82, "refrigerator", "appliance"), (84, "book", "indoor"), (85, "clock", "indoor"),
    (86, "vase", "indoor"), (87, "scissors", "indoor"), (88, "teddy bear", "indoor"),
    (89, "hair drier", "indoor"), (90, "toothbrush", "indoor"),
]  # fmt: skip

# (width, height) of real COCO val2014 images: landscape and portrait 640-max
# sizes, the 500-max Flickr sizes and one square image.
IMAGE_SIZES = [
    (640, 480), (480, 640), (500, 375), (427, 640), (333, 500), (640, 427),
    (640, 480), (375, 500), (640, 360), (612, 612), (640, 424), (500, 333),
]  # fmt: skip

SHAPES = ("rectangle", "ellipse", "triangle", "polygon", "ring")
TEXTURES = ("flat", "stripes", "checker", "dots")


def _background(rs: np.random.RandomState, h: int, w: int) -> np.ndarray:
    """A smooth colour field plus mild pixel noise.

    The low-frequency part (a 6x8 grid of random colours, upsampled bicubic)
    looks like out-of-focus scenery; the noise (sigma ~4 grey levels) keeps
    the image from being trivially flat, yet compresses well enough to keep
    24 JPEGs under the 2 MB budget.
    """
    coarse = rs.randint(30, 226, size=(6, 8, 3)).astype(np.uint8)
    field = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC).astype(np.int16)
    noise = np.round(rs.standard_normal((h, w, 3)) * 4.0).astype(np.int16)
    return np.clip(field + noise, 0, 255).astype(np.uint8)


def _shape_mask(rs: np.random.RandomState, h: int, w: int, box: tuple[int, int, int, int], shape: str) -> np.ndarray:
    """Draw one filled shape inside ``box = (x0, y0, bw, bh)`` on a fresh mask."""
    x0, y0, bw, bh = box
    mask = np.zeros((h, w), np.uint8)
    x1, y1 = x0 + bw - 1, y0 + bh - 1
    if shape == "rectangle":
        cv2.rectangle(mask, (x0, y0), (x1, y1), 255, thickness=-1, lineType=cv2.LINE_8)
    elif shape == "ellipse":
        centre = (x0 + bw // 2, y0 + bh // 2)
        axes = (max(bw // 2, 1), max(bh // 2, 1))
        cv2.ellipse(mask, centre, axes, 0, 0, 360, 255, thickness=-1, lineType=cv2.LINE_8)
    elif shape == "triangle":
        apex = x0 + int(rs.randint(0, bw))
        pts = np.array([[apex, y0], [x0, y1], [x1, y1]], np.int32)
        cv2.fillPoly(mask, [pts], 255, lineType=cv2.LINE_8)
    elif shape == "polygon":
        # A star-ish polygon: 5-8 vertices at random radii around the centre.
        k = int(rs.randint(5, 9))
        ang = np.sort(rs.uniform(0, 2 * np.pi, size=k))
        rad = rs.uniform(0.45, 1.0, size=k)
        cx, cy = x0 + bw / 2.0, y0 + bh / 2.0
        px = np.clip(np.round(cx + rad * np.cos(ang) * bw / 2.0), x0, x1)
        py = np.clip(np.round(cy + rad * np.sin(ang) * bh / 2.0), y0, y1)
        cv2.fillPoly(mask, [np.stack([px, py], 1).astype(np.int32)], 255, lineType=cv2.LINE_8)
    elif shape == "ring":
        centre = (x0 + bw // 2, y0 + bh // 2)
        axes = (max(bw // 2, 1), max(bh // 2, 1))
        cv2.ellipse(mask, centre, axes, 0, 0, 360, 255, thickness=-1, lineType=cv2.LINE_8)
        inner = (max(axes[0] // 2, 1), max(axes[1] // 2, 1))
        if min(axes) >= 6:
            cv2.ellipse(mask, centre, inner, 0, 0, 360, 0, thickness=-1, lineType=cv2.LINE_8)
    else:  # pragma: no cover - SHAPES is closed
        raise ValueError(shape)
    return mask


def _texture(rs: np.random.RandomState, h: int, w: int, texture: str) -> np.ndarray:
    """A full-frame BGR texture; only the object's mask of it is used."""
    base = rs.randint(0, 256, size=3)
    other = (base + rs.randint(60, 196, size=3)) % 256
    img = np.empty((h, w, 3), np.uint8)
    img[:] = base.astype(np.uint8)
    if texture == "stripes":
        period = int(rs.randint(4, 17))
        yy, xx = np.mgrid[0:h, 0:w]
        direction = int(rs.randint(0, 3))
        coord = xx if direction == 0 else yy if direction == 1 else xx + yy
        img[(coord // period) % 2 == 1] = other.astype(np.uint8)
    elif texture == "checker":
        period = int(rs.randint(4, 13))
        yy, xx = np.mgrid[0:h, 0:w]
        img[((yy // period) + (xx // period)) % 2 == 1] = other.astype(np.uint8)
    elif texture == "dots":
        for _ in range(int(rs.randint(40, 120))):
            c = (int(rs.randint(0, w)), int(rs.randint(0, h)))
            cv2.circle(img, c, int(rs.randint(1, 5)), tuple(int(v) for v in other), -1, cv2.LINE_8)
    return img


def _overlap_ok(box, placed, max_cover=0.1) -> bool:
    """Reject a box that would cover, or be covered by, more than 10% of
    another box: objects stay visible, so their amodal boxes stay honest."""
    x0, y0, bw, bh = box
    for px, py, pw, ph in placed:
        iw = min(x0 + bw, px + pw) - max(x0, px)
        ih = min(y0 + bh, py + ph) - max(y0, py)
        if iw > 0 and ih > 0 and iw * ih > max_cover * min(bw * bh, pw * ph):
            return False
    return True


def _object_box(rs: np.random.RandomState, w: int, h: int, size_class: str) -> tuple[int, int, int, int]:
    """A box whose area falls in COCO's small (< 32^2), medium or large range."""
    lo, hi = {"small": (10, 30), "medium": (36, 90), "large": (100, int(0.7 * min(w, h)))}[size_class]
    bw = int(rs.randint(lo, hi + 1))
    bh = int(np.clip(round(bw * rs.uniform(0.6, 1.6)), lo, min(hi, h - 1)))
    # Now and then touch an image border: decoded boxes beyond the image are
    # common in M2Det's output, and GT at the border is common in COCO.
    if rs.uniform() < 0.15:
        x0 = 0 if rs.uniform() < 0.5 else w - bw
    else:
        x0 = int(rs.randint(0, w - bw + 1))
    y0 = int(rs.randint(0, h - bh + 1))
    return x0, y0, bw, bh


def build(seed: int = SEED) -> tuple[dict, list[tuple[str, np.ndarray]]]:
    """Render the dataset in memory: (COCO dict, [(relative path, image)])."""
    rs = np.random.RandomState(seed)
    # Ascending ids in the range of real val2014 ids, distinct.
    image_ids = sorted(int(v) for v in rs.choice(np.arange(42, 581930), size=NUM_IMAGES, replace=False))
    # A pool of ~30 categories used across the set (spread over all
    # supercategories), so that some classes recur across images.
    pool_idx = sorted(rs.choice(len(COCO_CATEGORIES), size=30, replace=False).tolist())
    pool = [COCO_CATEGORIES[i] for i in pool_idx]

    images, annotations, files = [], [], []
    ann_id = 1
    for n, image_id in enumerate(image_ids):
        w, h = IMAGE_SIZES[n % len(IMAGE_SIZES)]
        img = _background(rs, h, w)
        n_obj = int(rs.randint(1, 6))
        # Every fourth image repeats one class for all its objects (crowded
        # single-class scenes: several boxes per class for NMS and AP).
        same_class = n % 4 == 2
        first_cat = pool[int(rs.randint(0, len(pool)))]
        placed: list[tuple[int, int, int, int]] = []
        for k in range(n_obj):
            cat = first_cat if (same_class or k == 0) else pool[int(rs.randint(0, len(pool)))]
            size_class = ("small", "medium", "large")[int(rs.randint(0, 3))]
            for _attempt in range(20):
                box = _object_box(rs, w, h, size_class)
                if _overlap_ok(box, placed):
                    break
            else:
                continue  # no room left: fewer objects in this image
            shape = SHAPES[int(rs.randint(0, len(SHAPES)))]
            mask = _shape_mask(rs, h, w, box, shape)
            ys, xs = np.nonzero(mask)
            if len(xs) == 0:
                continue
            texture = _texture(rs, h, w, TEXTURES[int(rs.randint(0, len(TEXTURES)))])
            img[mask > 0] = texture[mask > 0]
            placed.append(box)
            x_min, x_max, y_min, y_max = int(xs.min()), int(xs.max()), int(ys.min()), int(ys.max())
            bw, bh = x_max - x_min + 1, y_max - y_min + 1
            annotations.append(
                {
                    "id": ann_id,
                    "image_id": image_id,
                    "category_id": cat[0],
                    "bbox": [float(x_min), float(y_min), float(bw), float(bh)],
                    "area": float(bw * bh),
                    "iscrowd": 0,
                    "segmentation": [
                        [
                            float(x_min), float(y_min),
                            float(x_min + bw), float(y_min),
                            float(x_min + bw), float(y_min + bh),
                            float(x_min), float(y_min + bh),
                        ]
                    ],  # fmt: skip
                }
            )
            ann_id += 1
        # One image in the set is grayscale, as ~1% of COCO is: cv2.imread with
        # IMREAD_COLOR must still give 3 channels.
        if n == 5:
            img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
        file_name = FILE_PATTERN % image_id
        images.append({"id": image_id, "file_name": file_name, "width": w, "height": h, "license": 1})
        files.append((f"{IMAGE_DIR}/{file_name}", img))

    coco = {
        "info": {
            "description": "m2det-conformance mini COCO: 24 synthetic images, COCO 2014 categories "
            "(scripts/make_mini_coco.py)",
            "version": "1.0",
            "year": 2019,
            "contributor": "m2det-conformance",
            "date_created": "",
        },
        "licenses": [
            {"id": 1, "name": "CC0 1.0 (synthetic images)", "url": "https://creativecommons.org/publicdomain/zero/1.0/"}
        ],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i, "name": name, "supercategory": sup} for i, name, sup in COCO_CATEGORIES],
    }
    return coco, files


def encode_jpeg(img: np.ndarray) -> bytes:
    """Baseline JPEG with fixed settings (no progressive, no optimisation,
    4:2:0 as libjpeg's default), so the bytes depend only on the pixels."""
    ok, buf = cv2.imencode(
        ".jpg",
        img,
        [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY, cv2.IMWRITE_JPEG_PROGRESSIVE, 0, cv2.IMWRITE_JPEG_OPTIMIZE, 0],
    )
    if not ok:  # pragma: no cover
        raise RuntimeError("cv2.imencode failed")
    return buf.tobytes()


def annotation_bytes(coco: dict) -> bytes:
    return (json.dumps(coco, indent=1, separators=(",", ": "), ensure_ascii=True) + "\n").encode("ascii")


def generate(out_dir: Path, seed: int = SEED) -> dict:
    """Write the dataset under ``out_dir``; return the COCO dict."""
    out_dir = Path(out_dir)
    coco, files = build(seed)
    (out_dir / IMAGE_DIR).mkdir(parents=True, exist_ok=True)
    (out_dir / ANNOTATION_FILE).parent.mkdir(parents=True, exist_ok=True)
    for rel, img in files:
        (out_dir / rel).write_bytes(encode_jpeg(img))
    (out_dir / ANNOTATION_FILE).write_bytes(annotation_bytes(coco))
    return coco


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_out = Path(__file__).resolve().parents[1] / "m2det_impl" / "data" / "mini_coco"
    parser.add_argument("--out", type=Path, default=default_out, help=f"output folder (default {default_out})")
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)
    coco = generate(args.out, args.seed)
    cats = {a["category_id"] for a in coco["annotations"]}
    total = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(
        f"wrote {len(coco['images'])} images, {len(coco['annotations'])} annotations, "
        f"{len(cats)} categories, {total / 1e6:.2f} MB to {args.out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
