"""Every reader of user-supplied files, fuzzed with hypothesis.

Readers: ``.info`` files, ``.bin`` inputs, raw-output folders (both namings),
COCO annotation and results JSON, checkpoints, config files, image files, the
resume journal and shard files. The property is the same for each: the reader
either returns what the file holds, or raises one of the project's own errors
(:class:`~m2det_impl.errors.M2DetError` subclasses) on one line naming the
file. No other exception escapes, and no file makes a reader run code. Where a
fuzzed file is valid, what was read is held against an independent
expectation (the bytes written, the reference (docs/reference.md)'s naming rule, the ground truth).

The CI profile runs 60 examples per reader (derandomized); nightly 1000
(``HYPOTHESIS_PROFILE=nightly``). The last tests check that the ``m2det``
command turns each reader's error into one line on stderr and exit 2.
"""

from __future__ import annotations

import copy
import json
import os
import pickle
import re
import subprocess
import sys
import tempfile
import zlib
from collections import OrderedDict
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from config_samples import reference_config_text
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from m2det_impl.cli import main
from m2det_impl.errors import InputFileError, M2DetError
from m2det_impl.exit_codes import EXIT_BAD_INPUT as EXIT_ERROR
from m2det_impl.exit_codes import EXIT_INTERNAL
from m2det_impl.network.config import get_config
from m2det_impl.network.config_file import load_config_file
from m2det_impl.network.model import build_model, load_checkpoint
from m2det_impl.pipeline.ais_files import expected_sizes, read_pair, scan_outputs
from m2det_impl.pipeline.coco import category_ids, evaluate, load_annotations, load_results
from m2det_impl.pipeline.dataset import annotation_images, coco_records
from m2det_impl.pipeline.journal import PartialStore
from m2det_impl.pipeline.preprocess import InfoEntry, load_and_preprocess, load_image, read_bin, read_info, write_info
from m2det_impl.pipeline.shards import merge_shard_files
from m2det_impl.resources import MINI_COCO

pytestmark = pytest.mark.cpu

MINI = MINI_COCO
ANN = MINI / "annotations" / "instances_minival2014.json"
CFG = get_config(512)
SIZES = expected_sizes(CFG)
BIN_BYTES = 3 * 512 * 512 * 4
# Fixture-free examples (tmp folders come from the module's scratch dir).
fuzz = settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def _fresh(scratch: Path) -> Path:
    return Path(tempfile.mkdtemp(dir=scratch))


def _read(call, path: Path):
    """Run a reader: its value, or None after checking its error is ours, on
    one line, naming ``path``. Anything else propagates and fails the test."""
    try:
        return call()
    except M2DetError as exc:
        message = str(exc)
        assert str(path) in message, f"{type(exc).__name__} does not name {path}: {message}"
        assert "\n" not in message and "\r" not in message, f"message is not one line: {message!r}"
        return None


# JSON values of every kind, for replacing parts of valid files.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=10,
)


def _paths(doc, prefix=()):
    """Every location in a JSON document: (path to container, key)."""
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield prefix, k
            yield from _paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield prefix, i
            yield from _paths(v, prefix + (i,))


def _mutate(data, doc):
    """Apply 1-3 random edits (replace, delete, duplicate, retype) to a JSON document."""
    doc = copy.deepcopy(doc)
    for _ in range(data.draw(st.integers(1, 3), label="edits")):
        places = list(_paths(doc))
        if not places:
            return data.draw(json_values)
        parent_path, key = data.draw(st.sampled_from(places), label="where")
        parent = doc
        for step in parent_path:
            parent = parent[step]
        op = data.draw(st.sampled_from(["replace", "delete", "duplicate", "stringify", "floatify"]), label="op")
        if op == "replace":
            parent[key] = data.draw(json_values, label="value")
        elif op == "delete":
            del parent[key]
        elif op == "duplicate" and isinstance(parent, list):
            parent.append(copy.deepcopy(parent[key]))
        elif op == "stringify":
            parent[key] = json.dumps(parent[key])
        elif op == "floatify" and isinstance(parent[key], int) and not isinstance(parent[key], bool):
            parent[key] = float(parent[key]) + data.draw(st.sampled_from([0.0, 0.5]))
    return doc


def _write_json(path: Path, doc) -> Path:
    path.write_text(json.dumps(doc, allow_nan=True))
    return path


# ------------------------------------------------------------------ .info files
_INFO_TOKENS = st.one_of(
    st.integers(-10**6, 10**20).map(str),
    st.sampled_from(["COCO_val2014_000000000139.jpg", "./prep/COCO_val2014_000000000139.bin", "0", "512", "-1",
                     "1e3", "0x10", "1_000", "+7", "\u0663", "NaN", "\x00", "", "a b"]),
    st.text(max_size=10),
)
_INFO_TEXT = st.one_of(
    st.lists(st.lists(_INFO_TOKENS, max_size=6).map(" ".join), max_size=8).map("\n".join),
    st.text(max_size=200),
)


def _info_oracle(text: str):
    """What the reference (docs/reference.md)'s format says a file holds: {stem: (index, path, w, h)} or
    the number of the first bad line."""
    out = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        try:
            assert len(parts) == 4
            index, width, height = int(parts[0]), int(parts[2]), int(parts[3])
            assert width > 0 and height > 0
        except (AssertionError, ValueError):
            return lineno
        out[Path(parts[1]).stem] = (index, parts[1], width, height)
    return out


@fuzz
@given(content=st.one_of(_INFO_TEXT.map(lambda t: t.encode("utf-8")), st.binary(max_size=200)))
def test_info_files(scratch, content):
    path = _fresh(scratch) / "m2det_jpg.info"
    path.write_bytes(content)
    entries = _read(lambda: read_info(path), path)
    try:
        expected = _info_oracle(content.decode("utf-8"))
    except UnicodeDecodeError:
        assert entries is None
        return
    if isinstance(expected, int):
        assert entries is None
    else:
        assert entries is not None, "a file the format allows was refused"
        assert {k: (e.index, e.path, e.width, e.height) for k, e in entries.items()} == expected


@fuzz
@given(st.lists(st.tuples(st.integers(0, 10**6), st.from_regex(r"[A-Za-z0-9_./-]{1,30}", fullmatch=True),
                          st.integers(1, 10**5), st.integers(1, 10**5)), max_size=10))
def test_info_files_round_trip(scratch, rows):
    path = _fresh(scratch) / "m2det_bin.info"
    entries = [InfoEntry(*row) for row in rows]
    write_info(path, entries)
    expected = {Path(e.path).stem: e for e in entries}  # the last line of a stem wins
    assert read_info(path) == expected


def test_info_file_that_is_a_folder_or_missing(tmp_path):
    for path in (tmp_path, tmp_path / "none.info"):
        assert _read(lambda: read_info(path), path) is None


# -------------------------------------------------------------------- .bin inputs
@fuzz
@given(size=st.one_of(st.sampled_from([0, 1, 4, BIN_BYTES - 4, BIN_BYTES - 1, BIN_BYTES, BIN_BYTES + 4]),
                      st.integers(0, 2 * BIN_BYTES)),
       kind=st.sampled_from(["file", "file", "file", "folder", "dangling link"]))
def test_bin_inputs(scratch, size, kind):
    path = _fresh(scratch) / "COCO_val2014_000000000139.bin"
    if kind == "file":
        with open(path, "wb") as handle:
            handle.truncate(size)  # sparse: instant at any size
    elif kind == "folder":
        path.mkdir()
    else:
        path.symlink_to(path.with_name("gone.bin"))
    tensor = _read(lambda: read_bin(path, CFG), path)
    if kind == "file" and size == BIN_BYTES:
        assert tensor is not None and tensor.shape == (1, 3, 512, 512) and tensor.dtype == np.float32
    else:
        assert tensor is None


# ----------------------------------------------------------- raw-output folders
_OUTPUT_NAME = re.compile(r"^(.+)_(\d{1,3})\.bin$")  # reference section 9: <stem>_<n>.bin
_STEMS = ["COCO_val2014_000000000139", "COCO_val2014_000000000285", "x", "a_1", "img 2", "\u00fc", "_", "a.b"]
_ENTRY = st.tuples(
    st.sampled_from(["", "2026_11_26-10_00_00", "other"]),
    st.sampled_from(_STEMS),
    st.sampled_from(["_0", "_1", "_2", "_3", "_10", "_123", "_1234", "", "_x"]),
    st.sampled_from([".bin", ".bin", ".bin", ".BIN", ".bin.tmp"]),
    st.sampled_from(["scores", "loc", "scores", "loc", "empty", "short", "long", "folder", "dangling"]),
)


def _outputs_oracle(entries):
    """reference section 9: files named <stem>_<n>.bin, told apart by size; a stem
    is an image iff its files sit in one folder and are one scores-sized and
    one loc-sized regular file."""
    sizes = {"scores": SIZES["scores"], "loc": SIZES["loc"]}
    groups = {}
    for (folder, stem, suffix, ext, kind) in entries:
        match = _OUTPUT_NAME.match(stem + suffix + ext)
        if match:
            groups.setdefault(match.group(1), []).append((folder, kind))
    pairs = set()
    for stem, files in groups.items():
        kinds = sorted(k for _, k in files)
        if len({f for f, _ in files}) == 1 and kinds == ["loc", "scores"] and all(k in sizes for k in kinds):
            pairs.add(stem)
    return groups, pairs


@fuzz
@given(entries=st.lists(_ENTRY, min_size=1, max_size=6, unique_by=lambda e: (e[0], e[1] + e[2] + e[3])))
def test_output_folders_both_namings(scratch, entries):
    root = _fresh(scratch)
    for folder, stem, suffix, ext, kind in entries:
        where = root / folder
        where.mkdir(exist_ok=True)
        path = where / (stem + suffix + ext)
        if kind == "folder":
            path.mkdir()
        elif kind == "dangling":
            path.symlink_to(where / "gone")
        else:
            size = {"scores": SIZES["scores"], "loc": SIZES["loc"], "empty": 0, "short": SIZES["loc"] - 4,
                    "long": SIZES["scores"] + 4}[kind]
            with open(path, "wb") as handle:
                handle.truncate(size)
    found = _read(lambda: scan_outputs(root, CFG), root)
    groups, pairs = _outputs_oracle(entries)
    if not groups:
        assert found is None  # no <stem>_<n>.bin at all: an error naming the folder
        return
    assert found is not None
    got_pairs, problems = found
    assert {p.stem for p in got_pairs} == pairs
    assert {p.stem for p in problems} == set(groups) - pairs
    for problem in problems:
        assert problem.stem in problem.message and "\n" not in problem.message
    if got_pairs:
        scores, loc = read_pair(got_pairs[0], CFG)
        assert scores.shape == (CFG.num_priors, CFG.num_classes) and loc.shape == (CFG.num_priors, 4)


# ------------------------------------------------------------ COCO annotations
def _small_instances() -> dict:
    data = json.loads(ANN.read_text())
    images = sorted(data["images"], key=lambda i: i["id"])[:2]
    ids = {i["id"] for i in images}
    return {"images": images, "annotations": [a for a in data["annotations"] if a["image_id"] in ids],
            "categories": data["categories"]}


SMALL = _small_instances()


def _truthful_results(doc) -> list:
    """The ground truth of a (valid) annotation document, as detections."""
    images = {i["id"] for i in doc["images"]}
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": list(a["bbox"]), "score": 1.0}
            for a in doc["annotations"] if a["image_id"] in images]


@fuzz
@given(data=st.data())
def test_coco_annotation_files(scratch, data):
    choice = data.draw(st.sampled_from(["mutated", "mutated", "mutated", "truncated", "bytes", "json"]))
    path = _fresh(scratch) / "instances_minival2014.json"
    if choice == "mutated":
        _write_json(path, _mutate(data, SMALL))
    elif choice == "truncated":
        text = json.dumps(SMALL).encode()
        path.write_bytes(text[: data.draw(st.integers(0, len(text) - 1))])
    elif choice == "bytes":
        path.write_bytes(data.draw(st.binary(max_size=300)))
    else:
        _write_json(path, data.draw(json_values))
    coco = _read(lambda: load_annotations(path), path)
    records = _read(lambda: coco_records(path, MINI / "val2014"), path)
    _read(lambda: annotation_images(path), path)
    if coco is None:
        return
    ids = _read(lambda: category_ids(coco), path)
    assert ids is not None and all(isinstance(i, int) for i in ids)
    doc = json.loads(path.read_text())
    summary = _read(lambda: evaluate(path, _truthful_results(doc)), path)
    assert summary is not None and len(summary.stats) == 12
    if records is not None:
        assert len({r.image_id for r in records}) == len(records)  # no image counted twice


def test_unmutated_annotations_score_their_own_truth_perfectly(tmp_path):
    """The fuzzer's base file is valid and evaluates as the ground truth says."""
    path = _write_json(tmp_path / "a.json", SMALL)
    summary = evaluate(path, _truthful_results(SMALL))
    assert summary.ap == pytest.approx(1.0)


def test_annotation_file_nested_too_deep(tmp_path):
    path = tmp_path / "deep.json"
    path.write_text("[" * 100000 + "]" * 100000)
    assert _read(lambda: load_annotations(path), path) is None
    assert _read(lambda: coco_records(path, tmp_path), path) is None


# ------------------------------------------------------------------ results JSON
@fuzz
@given(data=st.data())
def test_coco_results_files(scratch, data):
    folder = _fresh(scratch)
    ann = _write_json(folder / "instances.json", SMALL)
    path = folder / "results.json"
    truth = _truthful_results(SMALL)
    choice = data.draw(st.sampled_from(["mutated", "mutated", "mutated", "truncated", "bytes", "json"]))
    if choice == "mutated":
        _write_json(path, _mutate(data, truth))
    elif choice == "truncated":
        text = json.dumps(truth).encode()
        path.write_bytes(text[: data.draw(st.integers(0, len(text) - 1))])
    elif choice == "bytes":
        path.write_bytes(data.draw(st.binary(max_size=300)))
    else:
        _write_json(path, data.draw(json_values))
    _read(lambda: load_results(path), path)
    summary = _read(lambda: evaluate(ann, path), path)
    if summary is not None:
        assert len(summary.stats) == 12 and all(np.isfinite(summary.stats))


# ------------------------------------------------------------------- checkpoints
SENTINEL_NAME = "payload-ran"


class _Hostile:
    """Pickles to a call of ``func(*args)``: what a malicious checkpoint holds."""

    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _hostile_payloads(sentinel: Path):
    import builtins

    touch = f"open({str(sentinel)!r}, 'w').write('x')"
    return [
        _Hostile(os.system, (f"touch {sentinel}",)),
        _Hostile(builtins.exec, (touch,)),
        _Hostile(builtins.eval, (touch,)),
        _Hostile(subprocess.call, (["touch", str(sentinel)],)),
        _Hostile(open, (str(sentinel), "w")),
    ]


@pytest.fixture(scope="module")
def blank_model():
    """M2Det512, weights not filled: only a target for the loader (never run)."""
    return build_model(CFG)


_TENSORS = st.builds(
    lambda shape, dtype: torch.zeros(shape, dtype=dtype),
    st.lists(st.integers(0, 3), max_size=3), st.sampled_from([torch.float32, torch.float16, torch.int64,
                                                               torch.uint8, torch.bool, torch.complex64]),
)
_KEYS = st.one_of(st.sampled_from(["base.0.weight", "module.base.0.weight", "loc.0.bias", "Norm.running_mean",
                                   "leach.0.conv.weight"]), st.text(max_size=8), st.integers(0, 3))
_STATE_VALUES = st.recursive(_TENSORS | st.integers() | st.text(max_size=4) | st.none(),
                             lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_KEYS, inner, max_size=3),
                             max_leaves=6)
_STATES = st.one_of(
    st.dictionaries(_KEYS, _STATE_VALUES, max_size=5),
    st.dictionaries(st.sampled_from(["state_dict", "model", "net", "epoch"]),
                    st.dictionaries(_KEYS, _TENSORS | st.integers(), max_size=4), max_size=2),
    _STATE_VALUES,
)


def _small_checkpoint() -> bytes:
    import io

    buffer = io.BytesIO()
    torch.save(OrderedDict([("base.0.weight", torch.ones(64, 3, 3, 3)), ("base.0.bias", torch.zeros(64))]), buffer)
    return buffer.getvalue()


SMALL_CKPT = _small_checkpoint()


@fuzz
@given(data=st.data())
def test_checkpoints(scratch, blank_model, data):
    folder = _fresh(scratch)
    path = folder / "m2det512_vgg.pth"
    sentinel = folder / SENTINEL_NAME
    choice = data.draw(st.sampled_from(["bytes", "truncated", "flipped", "state", "legacy", "hostile"]))
    if choice == "bytes":
        path.write_bytes(data.draw(st.binary(max_size=400)))
    elif choice == "truncated":
        path.write_bytes(SMALL_CKPT[: data.draw(st.integers(0, len(SMALL_CKPT) - 1))])
    elif choice == "flipped":
        raw = bytearray(SMALL_CKPT)
        at = data.draw(st.integers(0, len(raw) - 1))
        raw[at] ^= data.draw(st.integers(1, 255))
        path.write_bytes(bytes(raw))
    elif choice in ("state", "legacy"):
        torch.save(data.draw(_STATES), path, _use_new_zipfile_serialization=(choice == "state"))
    else:
        payload = data.draw(st.sampled_from(_hostile_payloads(sentinel)))
        wrapper = data.draw(st.sampled_from(["bare", "in dict", "in state_dict"]))
        obj = payload if wrapper == "bare" else {"w": payload} if wrapper == "in dict" else {
            "state_dict": {"base.0.weight": torch.zeros(1)}, "extra": payload}
        if data.draw(st.booleans()):
            torch.save(obj, path)
        else:
            path.write_bytes(pickle.dumps(obj, protocol=data.draw(st.integers(0, pickle.HIGHEST_PROTOCOL))))
    loaded = _read(lambda: load_checkpoint(blank_model, path), path)
    assert loaded is None  # nothing generated here holds all of M2Det's tensors
    assert not sentinel.exists(), "a checkpoint ran code while being read"


def test_hostile_checkpoint_message_says_why(tmp_path, blank_model):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": _Hostile(os.system, (f"touch {tmp_path / SENTINEL_NAME}",))}, path)
    with pytest.raises(M2DetError) as info:
        load_checkpoint(blank_model, path)
    assert str(path) in str(info.value) and "could run code" in str(info.value)
    assert not (tmp_path / SENTINEL_NAME).exists()


# ------------------------------------------------------------------ config files
_HOSTILE_EXPRS = [
    "__import__('os').system('touch {s}')",
    "open('{s}', 'w').write('x')",
    "exec(\"open('{s}', 'w')\")",
    "eval(\"open('{s}', 'w')\")",
    "(lambda: open('{s}', 'w'))()",
    "[open('{s}', 'w') for _ in range(1)]",
    "f\"{{open('{s}', 'w')}}\"",
    "dict(x=open('{s}', 'w'))",
    "getattr(__builtins__, 'open')('{s}', 'w')",
]
_HOSTILE_STATEMENTS = [
    "import os; os.system('touch {s}')",
    "open('{s}', 'w').write('x')",
    "def f():\n    open('{s}', 'w')\nf()",
    "class C:\n    open('{s}', 'w')",
    "if True:\n    open('{s}', 'w')",
    "with open('{s}', 'w'):\n    pass",
    "try:\n    open('{s}', 'w')\nexcept Exception:\n    pass",
    "for _ in [open('{s}', 'w')]:\n    pass",
    "assert open('{s}', 'w')",
    "x: int = open('{s}', 'w')",
]
_PY_LITERALS = st.recursive(
    st.none() | st.booleans() | st.integers(-10**30, 10**30) | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.tuples(inner, inner)
    | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8,
).map(repr)
_CONFIG_KEYS = ["input_size", "backbone", "base_out", "planes", "num_levels", "num_scales", "sfam", "smooth",
                "num_classes", "rgb_means", "step_pattern", "size_pattern", "topk", "iou", "soft_nms",
                "score_threshold", "keep_per_class", "model", "test_cfg"]


@fuzz
@given(data=st.data())
def test_config_files(scratch, data):
    folder = _fresh(scratch)
    sentinel = folder / SENTINEL_NAME
    path = folder / "m2det512_vgg.py"
    text = reference_config_text(data.draw(st.sampled_from([320, 512, 704, 800])))
    choice = data.draw(st.sampled_from(["value", "value", "hostile value", "hostile statement", "line", "truncated",
                                        "text", "bytes"]))
    expected_value = None
    if choice in ("value", "hostile value"):
        key = data.draw(st.sampled_from(_CONFIG_KEYS))
        spots = [m for m in re.finditer(rf"(?m)^(\s*{key}\s*=\s*)(.+?)(,?)$", text)]
        assume(spots)
        spot = data.draw(st.sampled_from(spots))
        if choice == "value":
            new = data.draw(st.one_of(_PY_LITERALS, st.sampled_from(["0.2", "0", "5", "True", "None", "[8, 16]",
                                                                     "'resnet101'", "dict()", "-1"])))
            if key == "score_threshold" and new in ("0.2", "0"):
                expected_value = float(new)
        else:
            new = data.draw(st.sampled_from(_HOSTILE_EXPRS)).format(s=sentinel)
        text = text[:spot.start(2)] + new + text[spot.end(2):]
    elif choice == "hostile statement":
        lines = text.split("\n")
        at = data.draw(st.integers(0, len(lines)))
        lines.insert(at, data.draw(st.sampled_from(_HOSTILE_STATEMENTS)).format(s=sentinel))
        text = "\n".join(lines)
    elif choice == "line":
        lines = text.split("\n")
        del lines[data.draw(st.integers(0, len(lines) - 1))]
        text = "\n".join(lines)
    elif choice == "truncated":
        text = text[: data.draw(st.integers(0, len(text) - 1))]
    elif choice == "text":
        text = data.draw(st.text(max_size=300))
    if choice == "bytes":
        path.write_bytes(data.draw(st.binary(max_size=300)))
    else:
        path.write_text(text, encoding="utf-8")
    read = _read(lambda: load_config_file(path), path)
    assert not sentinel.exists(), "reading a config file ran code from it"
    if read is not None:
        cfg = read.config
        assert cfg.size in (320, 512, 704, 800) and cfg.network.backbone == "vgg16" and not cfg.network.sfam
        assert len(cfg.anchors.step_pattern) == 6 and len(cfg.anchors.size_pattern) == 7
        if expected_value is not None:
            assert cfg.test.score_threshold == expected_value


@pytest.mark.parametrize("source", [
    "(" * 300 + ")" * 300, "-" * 100000 + "1", "[" * 150 + "]" * 150, "model = " + "[" * 90 + "]" * 90,
    "model = dict(input_size=" + "9" * 5000 + ")", "model = 1e999", "\x00", "model = dict(\n",
])
def test_config_files_that_strain_the_parser(tmp_path, source):
    path = tmp_path / "odd.py"
    path.write_text(source)
    assert _read(lambda: load_config_file(path), path) is None


# ------------------------------------------------------------------- image files
def _encoded(seed: int, ext: str, width: int, height: int) -> tuple:
    rs = np.random.RandomState(seed)
    image = rs.randint(0, 256, (height, width, 3), dtype=np.uint8)
    ok, buffer = cv2.imencode(ext, image)
    assert ok
    return image, buffer.tobytes()


@fuzz
@given(data=st.data())
def test_image_files(scratch, data):
    folder = _fresh(scratch)
    fmt = data.draw(st.sampled_from([".jpg", ".png"]))
    name_ext = data.draw(st.sampled_from([fmt, fmt, ".jpg", ".png", ".JPEG", ".bin", ""]))  # often the wrong one
    path = folder / f"COCO_val2014_000000000139{name_ext}"
    image, encoded = _encoded(data.draw(st.integers(0, 2**31 - 1)), fmt,
                              data.draw(st.integers(1, 40)), data.draw(st.integers(1, 40)))
    choice = data.draw(st.sampled_from(["intact", "truncated", "flipped", "zero", "bytes", "text", "folder",
                                        "huge header"]))
    if choice == "intact":
        path.write_bytes(encoded)
    elif choice == "truncated":
        path.write_bytes(encoded[: data.draw(st.integers(0, len(encoded) - 1))])
    elif choice == "flipped":
        raw = bytearray(encoded)
        for _ in range(data.draw(st.integers(1, 4))):
            raw[data.draw(st.integers(0, len(raw) - 1))] ^= data.draw(st.integers(1, 255))
        path.write_bytes(bytes(raw))
    elif choice == "zero":
        path.write_bytes(b"")
    elif choice == "bytes":
        path.write_bytes(data.draw(st.binary(max_size=200)))
    elif choice == "text":
        path.write_text("this is not an image\n")
    elif choice == "folder":
        path.mkdir()
    else:  # a PNG whose header claims 2^31-1 x 2^31-1 pixels
        raw = bytearray(_encoded(0, ".png", 4, 4)[1])
        raw[16:24] = (2**31 - 1).to_bytes(4, "big") * 2
        raw[29:33] = zlib.crc32(bytes(raw[12:29])).to_bytes(4, "big")
        path.write_bytes(bytes(raw))
    decoded = _read(lambda: load_image(path), path)
    prepared = _read(lambda: load_and_preprocess(path, CFG), path)
    if decoded is None:
        assert prepared is None and choice != "intact"
        return
    assert decoded.dtype == np.uint8 and decoded.ndim == 3 and decoded.shape[2] == 3
    tensor, (width, height) = prepared
    assert tensor.shape == (3, 512, 512) and tensor.dtype == np.float32
    assert (width, height) == (decoded.shape[1], decoded.shape[0])
    if choice == "intact":
        assert decoded.shape == image.shape  # whatever the file name says, the content decides
        if fmt == ".png":
            assert np.array_equal(decoded, image)  # lossless


# ----------------------------------------------------- resume journal and shards
IDENTITY = {"size": 512, "backend": "onnxruntime", "model": "/m.onnx", "weights": "golden0", "test": {"topk": 0}}


def _journal_lines() -> list:
    return [json.dumps({"header": IDENTITY}, sort_keys=True),
            json.dumps({"image_id": 139, "results": [{"image_id": 139, "category_id": 1, "bbox": [1, 2, 3, 4],
                                                      "score": 0.5}]}),
            json.dumps({"image_id": 285, "results": []}),
            json.dumps({"image_id": 632, "skipped": "corrupt"})]


@fuzz
@given(data=st.data())
def test_resume_journals(scratch, data):
    path = _fresh(scratch) / ".partial.full.jsonl"
    lines = _journal_lines()
    choice = data.draw(st.sampled_from(["line", "line", "cut", "bytes", "json"]))
    if choice == "line":
        at = data.draw(st.integers(0, len(lines) - 1))
        lines[at] = json.dumps(_mutate(data, json.loads(lines[at])), allow_nan=True)
        raw = ("\n".join(lines) + "\n").encode()
    elif choice == "cut":
        full = ("\n".join(lines) + "\n").encode()
        raw = full[: data.draw(st.integers(0, len(full)))]
    elif choice == "bytes":
        raw = data.draw(st.binary(max_size=300))
    else:
        raw = (json.dumps(data.draw(json_values), allow_nan=True) + "\n").encode()
    path.write_bytes(raw)
    store = _read(lambda: PartialStore(path, IDENTITY), path)
    if store is None:
        return
    assert all(isinstance(k, int) for k in store.done) and all(isinstance(v, list) for v in store.done.values())
    assert not set(store.done) & set(store.skipped)
    if choice == "cut":  # a kill cuts only the last line: every whole line before it is kept
        whole = raw[: raw.rfind(b"\n") + 1].decode().split("\n")[1:-1]
        assert store.finished() == {json.loads(line)["image_id"] for line in whole}
        assert path.read_bytes() == (raw[: raw.rfind(b"\n") + 1] or path.read_bytes())


def _shard_doc(index: int, ids: list) -> dict:
    return {"shard": {"index": index, "count": 2}, "identity": IDENTITY, "image_ids": ids, "skipped": {},
            "results": [{"image_id": i, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5} for i in ids]}


@fuzz
@given(data=st.data())
def test_shard_files(scratch, data):
    folder = _fresh(scratch)
    a = _write_json(folder / "results.shard-0-of-2.json", _shard_doc(0, [139, 632]))
    b = folder / "results.shard-1-of-2.json"
    if data.draw(st.booleans()):
        _write_json(b, _mutate(data, _shard_doc(1, [285, 724])))
    else:
        raw = json.dumps(_shard_doc(1, [285, 724])).encode()
        b.write_bytes(raw[: data.draw(st.integers(0, len(raw) - 1))])
    try:
        results, ids, _ = merge_shard_files([a, b])
    except InputFileError as exc:
        assert str(b) in str(exc) and "\n" not in str(exc)
        return
    except M2DetError as exc:  # shard-level refusals (missing, twice, overlap) name shards, not one file
        assert "\n" not in str(exc)
        return
    assert len(ids) == len(set(ids)) and {r["image_id"] for r in results} <= set(ids)


# ------------------------------------------------------- the CLI: one line, exit 2
def _bad_files(tmp_path: Path) -> dict:
    info = tmp_path / "bad_jpg.info"
    info.write_text("0 a.jpg 640\n")
    outputs = tmp_path / "outs"
    outputs.mkdir()
    (outputs / "COCO_val2014_000000003226_0.bin").write_bytes(b"\0" * 100)
    ann = tmp_path / "ann.json"
    _write_json(ann, {**SMALL, "annotations": [{**SMALL["annotations"][0], "bbox": "wide"}]})
    results = tmp_path / "results.json"
    _write_json(results, [{"image_id": SMALL["images"][0]["id"], "category_id": 1, "bbox": [1, 2], "score": 1}])
    ckpt = tmp_path / "evil.pth"
    ckpt.write_bytes(pickle.dumps({"w": _Hostile(os.system, (f"touch {tmp_path / SENTINEL_NAME}",))}))
    config = tmp_path / "m2det512_vgg.py"
    config.write_text(reference_config_text(512).replace("iou = 0.45", f"iou = open({str(tmp_path / SENTINEL_NAME)!r})"))
    images = tmp_path / "images"
    images.mkdir()
    (images / "COCO_val2014_000000000001.jpg").write_bytes(_encoded(1, ".jpg", 20, 20)[1][:50])
    shard = tmp_path / "results.shard-0-of-1.json"
    shard.write_text('{"shard": {"index": 0, "count": 1}, "image_ids": 5}')
    bins = tmp_path / "bins"
    bins.mkdir()
    (bins / "COCO_val2014_000000000001.bin").write_bytes(b"\0" * 12)
    return {"info": info, "outputs": outputs, "ann": ann, "results": results, "ckpt": ckpt, "config": config,
            "image": images / "COCO_val2014_000000000001.jpg", "images": images, "shard": shard,
            "bin": bins / "COCO_val2014_000000000001.bin", "bins": bins}


_CLI_CASES = {
    "info file": (["evaluate", "--outputs", "{outputs}", "--annotations", str(ANN), "--image-info", "{info}",
                   "--results", "{tmp}/r.json", "--summary", "{tmp}/s.json"], "info"),
    "output folder": (["evaluate", "--outputs", "{outputs}", "--annotations", str(ANN),
                       "--results", "{tmp}/r.json", "--summary", "{tmp}/s.json"], "outputs"),
    "annotation file": (["run", "--annotations", "{ann}", "--images", str(MINI / "val2014"), "--backend", "torch",
                         "--output", "{tmp}/o"], "ann"),
    "run summary": (["report", "{tmp}"], "summary"),
    "checkpoint": (["run", "--weights", "{ckpt}", "--backend", "torch", "--output", "{tmp}/o", "--limit", "1"], "ckpt"),
    "config file": (["run", "--config", "{config}", "--output", "{tmp}/o"], "config"),
    "image file": (["preprocess", "--images", "{images}", "--output", "{tmp}/p"], "image"),
    "shard file": (["merge", "{shard}", "--results", "{tmp}/m.json", "--summary", "{tmp}/ms.json"], "shard"),
    ".bin input": (["infer", "--inputs", "{bins}", "--output", "{tmp}/i", "--backend", "torch"], "bin"),
}


@pytest.mark.parametrize("case", sorted(_CLI_CASES))
def test_cli_turns_each_reader_error_into_one_line(tmp_path, capsys, case):
    files = _bad_files(tmp_path)
    argv, named = _CLI_CASES[case]
    files["summary"] = tmp_path / "summary.json"
    files["summary"].write_text("[1, 2")  # a run folder whose summary.json is cut
    argv = [a.format(tmp=tmp_path, **files) for a in argv]
    assert main(argv + ["--quiet"]) == EXIT_ERROR
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"m2det {argv[0]}: error: "), err
    assert str(files[named]) in lines[0] and "Traceback" not in err
    assert not (tmp_path / SENTINEL_NAME).exists()


@pytest.mark.parametrize("content", ["{}", "[]", '{"ap": "high"}', '{"ap": 0.3, "identity": [1]}'])
def test_report_refuses_a_summary_of_the_wrong_shape(tmp_path, capsys, content):
    (tmp_path / "summary.json").write_text(content)
    assert main(["report", str(tmp_path), "--output", str(tmp_path / "o")]) == EXIT_ERROR
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{tmp_path / 'summary.json'}: not a run summary" in err


def test_an_unexpected_exception_is_still_one_line(monkeypatch, capsys):
    """The safety net under the readers: a bug gives one line and exit 3, not a traceback."""
    import m2det_impl.cli.app as cli

    def broken(args):
        raise KeyError("ap")

    parser = cli.build_parser
    monkeypatch.setattr(cli, "build_parser", lambda: _with_func(parser(), broken))
    assert main(["report", "x"]) == EXIT_INTERNAL
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "m2det report: internal error: KeyError: 'ap'" in err and "M2DET_DEBUG=1" in err


def _with_func(parser, func):
    for action in parser._subparsers._group_actions:
        action.choices["report"].set_defaults(func=func)
    return parser


def test_console_script_reads_a_hostile_config_without_running_it(tmp_path):
    """The real entry point, as a user runs it: one line, exit 2, nothing ran."""
    files = _bad_files(tmp_path)
    done = subprocess.run([sys.executable, "-m", "m2det_impl.cli", "export", "--config", str(files["config"]),
                           "--output", str(tmp_path / "x")], capture_output=True, text=True, timeout=120)
    assert done.returncode == EXIT_ERROR and "Traceback" not in done.stderr
    assert done.stderr.count("\n") == 1 and str(files["config"]) in done.stderr and "test_cfg" in done.stderr
    assert not (tmp_path / SENTINEL_NAME).exists() and not (tmp_path / "x").exists()
