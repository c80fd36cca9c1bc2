"""Which images a run covers: COCO annotation files, image folders, shards.

A record carries the image id COCO scoring needs and, when the annotation file
or an info file knows it, the original size (post-processing scales boxes to
it). Records are sorted by image id, as the reference evaluates them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from m2det_impl._io import PathLike, is_int, read_json
from m2det_impl.errors import InputFileError, UsageError
from m2det_impl.pipeline.preprocess import list_images
from m2det_impl.resources import MINI_COCO

__all__ = [
    "Dataset",
    "resolve_dataset",
    "ImageRecord",
    "DEFAULT_DATASET",
    "default_dataset_paths",
    "find_annotation_file",
    "coco_records",
    "annotation_images",
    "folder_records",
]

# Bundled data of a source checkout: the mini COCO set and the golden files.
DEFAULT_DATASET = MINI_COCO
ANNOTATION_NAME = "instances_minival2014.json"
IMAGE_DIR_NAME = "val2014"


@dataclass(frozen=True)
class ImageRecord:
    """One image of a run."""

    image_id: int
    path: Path
    width: Optional[int] = None
    height: Optional[int] = None

    @property
    def stem(self) -> str:
        return self.path.stem


def find_annotation_file(root: PathLike) -> Path:
    """``<root>/annotations/instances_minival2014.json`` or ``<root>/instances_minival2014.json``."""
    root = Path(root)
    for candidate in (root / "annotations" / ANNOTATION_NAME, root / ANNOTATION_NAME):
        if candidate.is_file():
            return candidate
    raise InputFileError(root, f"no {ANNOTATION_NAME} in this folder or its annotations/ subfolder")


def default_dataset_paths(root: Optional[PathLike] = None) -> Tuple[Path, Path]:
    """(annotation file, image folder) of a COCO root laid out as minival2014."""
    root = Path(root) if root is not None else DEFAULT_DATASET
    if not root.is_dir():
        raise InputFileError(root, "COCO root folder not found (it should hold annotations/"
                                   f"{ANNOTATION_NAME} and {IMAGE_DIR_NAME}/)")
    annotations = find_annotation_file(root)
    images = root / IMAGE_DIR_NAME
    if not images.is_dir():
        raise InputFileError(root, f"no {IMAGE_DIR_NAME}/ image folder here")
    return annotations, images


def _load_json(path: Path) -> dict:
    data = read_json(path, "annotation file")
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise InputFileError(path, "not a COCO annotation file (no 'images' list)")
    return data


def coco_records(annotation_file: PathLike, image_dir: PathLike) -> List[ImageRecord]:
    """Every image of a COCO annotation file, sorted by id, with its size."""
    annotation_file = Path(annotation_file)
    image_dir = Path(image_dir)
    data = _load_json(annotation_file)
    records = []
    seen: Dict[int, int] = {}
    for i, entry in enumerate(data["images"]):
        if not (isinstance(entry, dict) and is_int(entry.get("id")) and is_int(entry.get("width"))
                and is_int(entry.get("height")) and isinstance(entry.get("file_name"), str)
                and entry["file_name"].strip() and "\0" not in entry["file_name"]
                and entry["width"] > 0 and entry["height"] > 0):
            raise InputFileError(annotation_file, f"images[{i}] lacks a valid id, file_name, width or height")
        if entry["id"] in seen:
            raise InputFileError(annotation_file, f"images[{i}]: image id {entry['id']} appears twice "
                                                  f"(also images[{seen[entry['id']]}])")
        seen[entry["id"]] = i
        records.append(ImageRecord(entry["id"], image_dir / entry["file_name"], entry["width"], entry["height"]))
    if not records:
        raise InputFileError(annotation_file, "holds no images")
    return sorted(records, key=lambda r: r.image_id)


_TRAILING_DIGITS = re.compile(r"(\d+)$")


def annotation_images(annotation_file: PathLike) -> Dict[str, ImageRecord]:
    """{file stem: record} of an annotation file, to find an output's image id
    and original size by its name."""
    return {r.stem: r for r in coco_records(annotation_file, Path("."))}


def folder_records(folder: PathLike) -> List[ImageRecord]:
    """Images of a folder; the id is the number the file name ends with
    (``COCO_val2014_000000000139`` -> 139), else the position in sorted order."""
    files = list_images(folder, ("jpg", "jpeg", "JPG", "JPEG", "png", "PNG", "bmp"))
    if not files:
        raise InputFileError(folder, "no images (*.jpg, *.jpeg, *.png, *.bmp) in this folder")
    ids = []
    for i, path in enumerate(files):
        match = _TRAILING_DIGITS.search(path.stem)
        ids.append(int(match.group(1)) if match else i)
    if len(set(ids)) != len(ids):
        ids = list(range(len(files)))
    return sorted((ImageRecord(i, p) for i, p in zip(ids, files)), key=lambda r: r.image_id)


@dataclass(frozen=True)
class Dataset:
    """The images of a job, and the annotation file that scores them (``None``: unscored)."""

    records: List[ImageRecord]
    annotations: Optional[Path]


def resolve_dataset(coco_root: Optional[PathLike] = None, annotations: Optional[PathLike] = None,
                    images: Optional[PathLike] = None, limit: Optional[int] = None) -> Dataset:
    """The images a job runs on, from the dataset options every command shares.

    Nothing given: the bundled mini COCO set. ``coco_root``: a COCO root laid
    out as minival2014. ``annotations`` replaces the root's annotation file and
    ``images`` its image folder; an annotation file needs the images it
    annotates (``images`` or ``coco_root``), and ``images`` alone runs
    unscored. ``limit``: the first N images by id.
    """
    ann = Path(annotations) if annotations is not None else None
    img = Path(images) if images is not None else None
    if ann is not None and img is None and coco_root is None:
        raise UsageError("--annotations needs the images it annotates: give --images DIR or --coco-root DIR")
    if coco_root is not None or (ann is None and img is None):
        root_ann, root_img = default_dataset_paths(coco_root)
        ann = ann or root_ann
        img = img or root_img
    if img is not None and not img.is_dir():
        raise InputFileError(img, "image folder not found")
    records = coco_records(ann, img) if ann is not None else folder_records(img)
    if limit:
        records = records[:limit]
    return Dataset(records, ann)
