"""Image records, shards and the resumable journal."""

import json

import pytest

from m2det_impl.errors import InputFileError
from m2det_impl.pipeline.dataset import ImageRecord, coco_records, folder_records
from m2det_impl.pipeline.journal import PartialStore
from m2det_impl.pipeline.shards import merge_shard_files, parse_shard, select_shard

pytestmark = pytest.mark.cpu


def test_coco_records_sorted_with_sizes(tmp_path):
    ann = tmp_path / "a.json"
    ann.write_text(json.dumps({"images": [
        {"id": 9, "file_name": "b.jpg", "width": 10, "height": 20},
        {"id": 3, "file_name": "a.jpg", "width": 30, "height": 40}]}))
    recs = coco_records(ann, tmp_path)
    assert [(r.image_id, r.path.name, r.width, r.height) for r in recs] == [(3, "a.jpg", 30, 40), (9, "b.jpg", 10, 20)]


@pytest.mark.parametrize("content, needle", [
    ("{", "annotation file is not valid JSON"), ("[]", "no 'images'"), ('{"images": []}', "no images"),
    ('{"images": [{"id": 1}]}', "images[0]"),
])
def test_bad_annotation_files(tmp_path, content, needle):
    ann = tmp_path / "a.json"
    ann.write_text(content)
    with pytest.raises(InputFileError) as info:
        coco_records(ann, tmp_path)
    assert str(ann) in str(info.value) and needle in str(info.value)


def test_missing_annotation_file(tmp_path):
    with pytest.raises(InputFileError, match="annotation file not found"):
        coco_records(tmp_path / "none.json", tmp_path)


def test_folder_records_take_ids_from_names(tmp_path):
    for name in ("COCO_val2014_000000000139.jpg", "COCO_val2014_000000000007.jpg"):
        (tmp_path / name).write_bytes(b"x")
    assert [r.image_id for r in folder_records(tmp_path)] == [7, 139]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputFileError, match="no images"):
        folder_records(empty)


@pytest.mark.parametrize("text, expected", [("0/1", (0, 1)), ("2/4", (2, 4)), (" 1 / 3 ", (1, 3))])
def test_parse_shard(text, expected):
    assert parse_shard(text) == expected


@pytest.mark.parametrize("text", ["4/4", "1", "a/b", "-1/2", "0/0"])
def test_parse_shard_rejects(text):
    with pytest.raises(ValueError):
        parse_shard(text)


def test_shards_partition_the_records():
    records = [ImageRecord(i, tmp) for i, tmp in enumerate(["x"] * 11)]
    parts = [select_shard(records, i, 3) for i in range(3)]
    ids = sorted(r.image_id for part in parts for r in part)
    assert ids == list(range(11))


def test_journal_resumes_and_drops_a_cut_line(tmp_path):
    path = tmp_path / "j.jsonl"
    store = PartialStore(path, {"model": "a"})
    store.add([(1, [{"image_id": 1, "score": 0.5}], None), (2, [], None)])
    store.add([(3, None, "corrupt")])
    with open(path, "a") as handle:
        handle.write('{"image_id": 4, "resu')  # killed mid-line
    again = PartialStore(path, {"model": "a"})
    assert set(again.done) == {1, 2} and again.skipped == {3: "corrupt"}
    assert again.done[1] == [{"image_id": 1, "score": 0.5}]
    again.add([(4, [], None)])
    assert set(PartialStore(path, {"model": "a"}).done) == {1, 2, 4}


def test_journal_of_another_run_is_refused(tmp_path):
    path = tmp_path / "j.jsonl"
    with PartialStore(path, {"model": "a", "size": 512}) as store:
        store.add([(7, [], None)])  # one finished image: work that must not be mixed with another run's
    with pytest.raises(InputFileError) as info:
        PartialStore(path, {"model": "b", "size": 512})
    assert "model: 'a' then, 'b' now" in str(info.value) and "--fresh" in str(info.value)
    assert PartialStore(path, {"model": "b", "size": 512}, fresh=True).done == {}


def test_journal_with_no_finished_image_never_blocks_a_run(tmp_path):
    """A run that failed before its first image (a bad checkpoint) left only a
    header: the corrected re-run, with another identity, starts afresh."""
    path = tmp_path / "j.jsonl"
    PartialStore(path, {"model": "a", "size": 512}).close()
    with PartialStore(path, {"model": "b", "size": 512}) as store:
        assert store.done == {} and store.skipped == {}
    assert json.loads(path.read_text().splitlines()[0]) == {"header": {"model": "b", "size": 512}}


def test_a_finished_run_leaves_no_lock_file(tmp_path):
    path = tmp_path / "j.jsonl"
    with PartialStore(path, {"model": "a"}, lock=True):
        assert path.with_name("j.jsonl.lock").exists()
    assert not path.with_name("j.jsonl.lock").exists()


def _shard(tmp_path, index, count, ids, identity="x"):
    path = tmp_path / f"results.shard-{index}-of-{count}.json"
    path.write_text(json.dumps({"shard": {"index": index, "count": count}, "identity": identity,
                                "image_ids": ids, "results": [{"image_id": i, "score": 1.0} for i in ids]}))
    return path


def test_merge_combines_disjoint_shards(tmp_path):
    files = [_shard(tmp_path, 1, 2, [2, 4]), _shard(tmp_path, 0, 2, [1, 3])]
    results, ids, _ = merge_shard_files(files, expected_ids=[1, 2, 3, 4])
    assert ids == [1, 2, 3, 4] and [r["image_id"] for r in results] == [1, 2, 3, 4]


def test_merge_refuses_missing_duplicate_overlapping_and_foreign(tmp_path):
    a = _shard(tmp_path, 0, 3, [1])
    b = _shard(tmp_path, 1, 3, [2])
    with pytest.raises(Exception, match=r"missing shard\(s\) 2/3"):
        merge_shard_files([a, b])
    (tmp_path / "dup").mkdir()
    b2 = _shard(tmp_path / "dup", 1, 3, [5])
    with pytest.raises(Exception, match="given twice"):
        merge_shard_files([a, b, b2])
    c = _shard(tmp_path, 2, 3, [2])
    with pytest.raises(Exception, match="image 2 is in two shards"):
        merge_shard_files([a, b, c])
    c_foreign = _shard(tmp_path / "dup", 2, 3, [3], identity="other")
    with pytest.raises(Exception, match="different runs"):
        merge_shard_files([a, b, c_foreign])
    c_ok = _shard(tmp_path / "dup", 2, 3, [3])
    with pytest.raises(Exception, match="covered by no shard"):
        merge_shard_files([a, b, c_ok], expected_ids=[1, 2, 3, 9])
