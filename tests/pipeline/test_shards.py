"""Shards (m2det_impl.pipeline.shards): I/N parsing, interleaved selection that
covers every image exactly once, and a merge that refuses anything but one
complete, non-overlapping set of shards of one run."""

import json
from pathlib import Path

import pytest

from m2det_impl.errors import InputFileError, M2DetError, UsageError
from m2det_impl.pipeline.dataset import ImageRecord
from m2det_impl.pipeline.shards import (
    merge_shard_files,
    parse_shard,
    select_shard,
    shard_results_name,
    write_shard_file,
)
from m2det_impl.pipeline.stream import RunOutcome

pytestmark = pytest.mark.cpu

IDENTITY = {"model": "m2det512", "backend": "onnxruntime", "score_threshold": 0.1}


def _records(n):
    return [ImageRecord(100 + i, Path(f"img{i}.jpg")) for i in range(n)]


@pytest.mark.parametrize("text, expected", [("0/4", (0, 4)), (" 3 / 4 ", (3, 4)), ("0/1", (0, 1))])
def test_parse_shard(text, expected):
    assert parse_shard(text) == expected


@pytest.mark.parametrize("text", ["4/4", "5/4", "1/0", "0/0", "-1/4", "1", "a/b", "", None, "1/2/3"])
def test_parse_shard_refuses(text):
    with pytest.raises(UsageError):
        parse_shard(text)


@pytest.mark.parametrize("n, count", [(10, 3), (7, 7), (3, 5), (0, 2)])
def test_select_shard_interleaves_and_covers_each_image_once(n, count):
    records = _records(n)
    picked = [select_shard(records, i, count) for i in range(count)]
    assert picked[0] == records[0::count]  # shard 0 starts at the first record
    assert sorted(r.image_id for p in picked for r in p) == [r.image_id for r in records]
    if n >= count:
        assert [p[0] for p in picked] == records[:count]


def test_shard_results_name():
    assert shard_results_name(2, 5) == "results.shard-2-of-5.json"


def _write(tmp_path, index, count, ids, identity=IDENTITY, skipped=None, name=None):
    results = [{"image_id": i, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5 + k / 100}
               for k, i in enumerate(ids)]
    outcome = RunOutcome(results=results, image_ids=list(ids), skipped=dict(skipped or {}))
    path = tmp_path / (name or shard_results_name(index, count))
    write_shard_file(path, index, count, outcome, identity)
    return path


def test_merge_combines_complete_shards(tmp_path):
    a = _write(tmp_path, 0, 2, [3, 1], skipped={1: "unreadable"})
    b = _write(tmp_path, 1, 2, [2, 4])
    data = json.loads(a.read_text())
    assert data["shard"] == {"index": 0, "count": 2} and data["identity"] == IDENTITY
    assert data["skipped"] == {"1": "unreadable"}
    results, ids, skipped = merge_shard_files([b, a], expected_ids=[1, 2, 3, 4])
    assert ids == [1, 2, 3, 4]
    assert [r["image_id"] for r in results] == [1, 2, 3, 4]
    assert skipped == {1: "unreadable"}


def test_merge_keeps_each_images_own_result_order(tmp_path):
    path = tmp_path / "s.json"
    results = [{"image_id": 5, "score": 0.9}, {"image_id": 2, "score": 0.8}, {"image_id": 5, "score": 0.7}]
    write_shard_file(path, 0, 1, RunOutcome(results=results, image_ids=[5, 2]), IDENTITY)
    merged, ids, skipped = merge_shard_files([path])
    assert [(r["image_id"], r["score"]) for r in merged] == [(2, 0.8), (5, 0.9), (5, 0.7)]
    assert ids == [2, 5] and skipped == {}


def test_merge_refuses_a_missing_shard(tmp_path):
    a = _write(tmp_path, 0, 3, [1])
    c = _write(tmp_path, 2, 3, [3])
    with pytest.raises(M2DetError, match=r"missing shard\(s\) 1/3"):
        merge_shard_files([a, c])


def test_merge_refuses_a_shard_given_twice(tmp_path):
    a = _write(tmp_path, 0, 2, [1])
    again = _write(tmp_path, 0, 2, [2], name="copy.json")
    with pytest.raises(M2DetError, match="shard 0/2 given twice"):
        merge_shard_files([a, again])


def test_merge_refuses_overlapping_images(tmp_path):
    a = _write(tmp_path, 0, 2, [1, 2])
    b = _write(tmp_path, 1, 2, [2, 3])
    with pytest.raises(M2DetError, match="image 2 is in two shards"):
        merge_shard_files([a, b])


def test_merge_refuses_different_splits_and_runs(tmp_path):
    a = _write(tmp_path, 0, 2, [1])
    b = _write(tmp_path, 1, 3, [2])
    with pytest.raises(M2DetError, match="different splits"):
        merge_shard_files([a, b])
    c = _write(tmp_path, 1, 2, [2], identity={**IDENTITY, "backend": "om"}, name="other.json")
    with pytest.raises(M2DetError, match="different runs"):
        merge_shard_files([a, c])


def test_merge_refuses_uncovered_images_and_nothing(tmp_path):
    a = _write(tmp_path, 0, 1, [1, 2])
    with pytest.raises(M2DetError, match=r"1 image\(s\) covered by no shard, e.g. \[3\]") as info:
        merge_shard_files([a], expected_ids=[3, 2, 1])
    # the re-trial: shards run with --limit 2 merged without it; the message now names the --limit
    assert str(info.value).endswith("the shards cover exactly the first 2 images, as a run with --limit 2 does: "
                                    "give merge the same --limit 2")
    with pytest.raises(M2DetError) as info:  # not the first images: no --limit would select them
        merge_shard_files([a], expected_ids=[0, 1, 2])
    assert "--limit" not in str(info.value)
    assert merge_shard_files([a], expected_ids=[1, 2])[1] == [1, 2]
    with pytest.raises(M2DetError, match="no shard files"):
        merge_shard_files([])


@pytest.mark.parametrize("damage, message", [
    (lambda d: d.update(shard={"index": 2, "count": 2}), "is not I/N"),
    (lambda d: d.update(shard={"index": -1, "count": 2}), "is not I/N"),
    (lambda d: d.update(shard={"index": 0, "count": 0}), "is not I/N"),
    (lambda d: d.update(image_ids=[1, 1]), "lists an image twice"),
    (lambda d: d.update(image_ids=[1, "2"]), "not a list of integers"),
    (lambda d: d.update(image_ids="1"), "not a list of integers"),
    (lambda d: d.update(results=[{"image_id": 9}]), "does not cover, e.g. 9"),
    (lambda d: d.update(results=[{"image_id": "1"}]), "integer image ids"),
    (lambda d: d.update(results={}), "integer image ids"),
    (lambda d: d.update(skipped={"7": "bad"}), "names images the shard does not cover"),
    (lambda d: d.update(skipped={"x": "bad"}), "not an image id"),
    (lambda d: d.update(skipped={"1": 3}), "map of image id to reason"),
    (lambda d: d.update(skipped=[]), "map of image id to reason"),
])
def test_merge_names_a_damaged_shard(tmp_path, damage, message):
    path = _write(tmp_path, 0, 2, [1, 2])
    data = json.loads(path.read_text())
    damage(data)
    path.write_text(json.dumps(data))
    with pytest.raises(InputFileError, match=message) as info:
        merge_shard_files([path])
    assert str(path) in str(info.value) and "damaged shard" in str(info.value)


@pytest.mark.parametrize("text", ["", "[]", "{}", '{"shard": {"index": "0", "count": 2}}', '{"shard": 3}', "{"])
def test_merge_names_a_file_that_is_not_a_shard(tmp_path, text):
    path = tmp_path / "x.json"
    path.write_text(text)
    with pytest.raises(InputFileError, match="not a shard results file") as info:
        merge_shard_files([path])
    assert str(path) in str(info.value)
    with pytest.raises(InputFileError, match="shard file not found"):
        merge_shard_files([tmp_path / "absent.json"])


@pytest.mark.parametrize("damage, problem", [
    (lambda d: d.update(shard={"index": 2, "count": 2}), "shard 2/2 is not I/N with 0 <= I < N"),
    (lambda d: d.update(shard={"index": 0, "count": 0}), "shard 0/0 is not I/N with 0 <= I < N"),
    (lambda d: d.update(image_ids=[1, 2.0]), "'image_ids' is not a list of integers"),
    (lambda d: d.pop("image_ids"), "'image_ids' is not a list of integers"),
    (lambda d: d.update(image_ids=[2, 1, 2]), "'image_ids' lists an image twice"),
    (lambda d: d.pop("results"), "'results' is not a list of results with integer image ids"),
    (lambda d: d.update(results=[{"image_id": 1}, 5]), "'results' is not a list of results with integer image ids"),
    (lambda d: d.update(results=[{"image_id": 1}, {"image_id": 9}, {"image_id": 8}]),
     "results for image(s) the shard does not cover, e.g. 8"),
    (lambda d: d.update(skipped={"1": "ok", "2": None}), "'skipped' is not a map of image id to reason"),
    (lambda d: d.update(skipped={"1": "ok", "7": "bad"}), "'skipped' names images the shard does not cover"),
    (lambda d: d.update(skipped={"x": "bad"}), "'skipped' has a key that is not an image id"),
])
def test_a_damaged_shard_is_named_with_the_exact_problem(tmp_path, damage, problem):
    path = _write(tmp_path, 0, 2, [1, 2])
    data = json.loads(path.read_text())
    damage(data)
    path.write_text(json.dumps(data))
    with pytest.raises(InputFileError) as info:
        merge_shard_files([path])
    assert str(info.value) == f"{path}: damaged shard results file: {problem}"


def test_a_shard_without_skipped_images_is_whole(tmp_path):
    path = _write(tmp_path, 0, 1, [1, 2])
    data = json.loads(path.read_text())
    del data["skipped"]
    path.write_text(json.dumps(data))
    assert merge_shard_files([path]) == ([{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5},
                                          {"image_id": 2, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.51}],
                                         [1, 2], {})


def test_merge_errors_read_exactly(tmp_path):
    a = _write(tmp_path, 0, 3, [1])
    b = _write(tmp_path, 1, 2, [2])
    with pytest.raises(M2DetError) as info:
        merge_shard_files([a, b])
    assert str(info.value) == f"shards of different splits: {a.name} is ?/3, {b.name} is ?/2"
    d = _write(tmp_path, 2, 4, [3])
    e = _write(tmp_path, 0, 4, [4])
    with pytest.raises(M2DetError) as info:
        merge_shard_files([d, e])
    assert str(info.value) == "missing shard(s) 1/4, 3/4: run them or pass their files"
    x = _write(tmp_path, 0, 2, [1])
    again = _write(tmp_path, 0, 2, [2], name="copy.json")
    with pytest.raises(M2DetError) as info:
        merge_shard_files([x, again])
    assert str(info.value) == f"shard 0/2 given twice: {x} and {again}"
    y = _write(tmp_path, 1, 2, [5, 1], name="a-second.json")
    first = _write(tmp_path, 0, 2, [1], name="z-first.json")
    with pytest.raises(M2DetError) as info:
        merge_shard_files([y, first])
    assert str(info.value) == f"image 1 is in two shards: {first} and {y}"  # shard 0 owns it, whatever the names
    z = _write(tmp_path, 1, 2, [2], identity={**IDENTITY, "backend": "om"}, name="other.json")
    with pytest.raises(M2DetError) as info:
        merge_shard_files([x, z])
    assert str(info.value) == "shards come from different runs (model, weights or settings differ)"
    one = _write(tmp_path, 0, 1, [1, 2])
    with pytest.raises(M2DetError) as info:
        merge_shard_files([one], expected_ids=[9, 1, 8, 7, 6, 5, 4, 3])
    assert str(info.value) == "7 image(s) covered by no shard, e.g. [3, 4, 5, 6, 7]"
    with pytest.raises(M2DetError) as info:
        merge_shard_files([])
    assert str(info.value) == "no shard files to merge"


def test_not_a_shard_and_absent_read_exactly(tmp_path):
    path = tmp_path / "x.json"
    path.write_text('{"shard": {"index": 0, "count": true}}')
    with pytest.raises(InputFileError) as info:
        merge_shard_files([path])
    assert str(info.value) == f"{path}: not a shard results file written by m2det run --shard"
    path.write_bytes(b"\xff\xfe{")
    with pytest.raises(InputFileError) as info:
        merge_shard_files([path])
    assert str(info.value) == f"{path}: not a shard results file written by m2det run --shard"
    with pytest.raises(InputFileError) as info:
        merge_shard_files([tmp_path / "absent.json"])
    assert str(info.value) == f"{tmp_path / 'absent.json'}: shard file not found"


@pytest.mark.parametrize("text, problem", [
    ("4/4", "shard '4/4': need 0 <= I < N"), ("0/0", "shard '0/0': need 0 <= I < N"),
    ("x", "shard must look like I/N (e.g. 0/4), got 'x'"), (None, "shard must look like I/N (e.g. 0/4), got None"),
])
def test_parse_shard_errors_read_exactly(text, problem):
    with pytest.raises(UsageError) as info:
        parse_shard(text)
    assert str(info.value) == problem


def test_shards_of_one_run_merge_whatever_the_key_order_of_their_identity(tmp_path):
    a = _write(tmp_path, 0, 2, [1], identity={"model": "m2det512", "backend": "onnxruntime"})
    b = _write(tmp_path, 1, 2, [2], identity={"backend": "onnxruntime", "model": "m2det512"})
    assert merge_shard_files([a, b])[1] == [1, 2]
