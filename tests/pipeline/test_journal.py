"""The partial-results journal (m2det_impl.pipeline.journal) on its own, fast:
a journal of another run is refused, never mixed in; a cut last line is
dropped and that image redone; resumed images are not counted as new work."""

import json

import pytest

from m2det_impl.errors import InputFileError
from m2det_impl.pipeline.journal import PartialStore
from m2det_impl.pipeline.stream import RunOutcome

pytestmark = pytest.mark.cpu

IDENTITY = {"model": "m2det512", "weights": "golden0", "score_threshold": 0.1, "size": [512, 512]}


def _journal(path, entries, identity=IDENTITY):
    with PartialStore(path, identity) as store:
        store.add(entries)
    return path


def test_resume_reads_back_what_was_recorded(tmp_path):
    path = _journal(tmp_path / "partial.jsonl", [(1, [{"image_id": 1, "score": 0.5}], None), (2, None, "unreadable")])
    with PartialStore(path, dict(IDENTITY)) as store:
        assert store.done == {1: [{"image_id": 1, "score": 0.5}]}
        assert store.skipped == {2: "unreadable"}
        assert store.finished() == {1, 2}


@pytest.mark.parametrize("change", [{"model": "m2det320"}, {"score_threshold": 0.05}, {"weights": "trained"}])
def test_a_journal_of_another_run_is_refused(tmp_path, change):
    path = _journal(tmp_path / "partial.jsonl", [(1, [{"image_id": 1}], None)])
    before = path.read_bytes()
    key = next(iter(change))
    with pytest.raises(InputFileError, match=f"different run.*{key}") as info:
        PartialStore(path, {**IDENTITY, **change})
    assert "--fresh" in str(info.value)
    assert path.read_bytes() == before  # nothing of the old run is lost
    with PartialStore(path, {**IDENTITY, **change}, fresh=True) as store:  # --fresh starts over
        assert store.finished() == set()


def test_a_header_only_journal_of_another_run_starts_afresh(tmp_path):
    path = _journal(tmp_path / "partial.jsonl", [])
    with PartialStore(path, {**IDENTITY, "model": "other"}) as store:
        assert store.finished() == set()
    assert json.loads(path.read_text().splitlines()[0])["header"]["model"] == "other"


def test_a_cut_last_line_is_dropped_and_that_image_redone(tmp_path):
    path = _journal(tmp_path / "partial.jsonl", [(1, [{"image_id": 1}], None)])
    with open(path, "ab") as handle:
        handle.write(b'{"image_id": 2, "resu')  # killed mid-line
    with PartialStore(path, IDENTITY) as store:
        assert store.finished() == {1}
        store.add([(2, [{"image_id": 2}], None)])
    with PartialStore(path, IDENTITY) as store:
        assert store.done == {1: [{"image_id": 1}], 2: [{"image_id": 2}]}


def test_a_resumed_runs_rate_counts_only_the_images_it_processed():
    outcome = RunOutcome(results=[], image_ids=list(range(10)), processed_now=4, resumed=6, seconds=2.0)
    assert outcome.images_per_second == pytest.approx(2.0)
    assert RunOutcome(results=[], image_ids=[1], processed_now=1, seconds=0.0).images_per_second == 0.0
