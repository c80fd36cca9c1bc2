"""Host work in worker processes (``run_pipeline(host="processes")``): the same
results, order, journal, skips and one-line errors as the thread mode.

The simulated NPU (no model, no wait: ``ms_per_image=0``) makes these fast;
one set of workers serves the module (starting them takes a second or two).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
from pathlib import Path

import pytest

from m2det_impl.backends.simulated import SimulatedNpuBackend
from m2det_impl.errors import InputFileError, OutputFileError
from m2det_impl.network.config import get_config
from m2det_impl.pipeline.dataset import folder_records, resolve_dataset
from m2det_impl.pipeline.hostproc import HostProcesses, HostWorkerError
from m2det_impl.pipeline.journal import PartialStore
from m2det_impl.pipeline.stream import choose_host, run_pipeline
from m2det_impl.resources import MINI_COCO
from tests.support import decode_or_crash

pytestmark = pytest.mark.cpu

CATS = list(range(1, 81))


@pytest.fixture(scope="module")
def cfg():
    return get_config(512)


@pytest.fixture(scope="module")
def workers():
    with HostProcesses(decode_workers=2, post_workers=1, decode_fn=decode_or_crash) as pool:
        yield pool


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Seven bundled images, a corrupt one and one that crashes its decoder."""
    folder = tmp_path_factory.mktemp("images")
    for path in sorted((MINI_COCO / "val2014").glob("*.jpg"))[:7]:
        shutil.copy(path, folder / path.name)
    (folder / "COCO_val2014_000000100000.jpg").write_bytes(b"\xff\xd8 not a jpeg at all")
    shutil.copy(path, folder / "crash_000000100001.jpg")
    return folder


def _run(records, cfg, host, **kw):
    return run_pipeline(records, SimulatedNpuBackend(0), cfg, CATS, progress=False, host=host, **kw)


def _same(a, b):
    assert json.dumps(a.results) == json.dumps(b.results)  # same detections, same order, same floats
    assert a.skipped == b.skipped and a.image_ids == b.image_ids


@pytest.mark.parametrize("batch", [1, 3])
def test_processes_give_the_thread_modes_results(cfg, workers, batch, tmp_path):
    records = resolve_dataset(limit=8).records
    threads = _run(records, cfg, "threads", batch_size=batch)
    assert len(threads.results) > 0
    processes = _run(records, cfg, workers, batch_size=batch)
    _same(processes, threads)
    assert processes.processed_now == threads.processed_now == 8
    # the journal too, and a resumed run completes it identically (the fake's
    # outputs follow the position in the batch, so compare the modes' resumed runs)
    journals, resumed_runs = {}, []
    for host in ("threads", workers):
        path = tmp_path / f"{'threads' if host == 'threads' else 'processes'}.jsonl"
        with PartialStore(path, {"t": 1}) as store:
            _run(records[:5], cfg, host, batch_size=batch, store=store)
        with PartialStore(path, {"t": 1}) as store:
            resumed = _run(records, cfg, host, batch_size=batch, store=store)
        assert resumed.resumed == 5 and resumed.processed_now == 3
        resumed_runs.append(resumed)
        journals[path.stem] = path.read_text()
    _same(*resumed_runs)
    assert journals["threads"] == journals["processes"]


def test_a_corrupt_image_gives_the_same_error_and_skip(cfg, workers, images):
    records = [r for r in folder_records(images) if not r.path.name.startswith("crash")]
    errors = []
    for host in ("threads", workers):
        with pytest.raises(InputFileError) as caught:
            _run(records, cfg, host, batch_size=2)
        errors.append(str(caught.value))
    assert errors[0] == errors[1]
    assert "COCO_val2014_000000100000.jpg" in errors[1] and "--skip-bad" in errors[1] and "\n" not in errors[1]
    threads = _run(records, cfg, "threads", batch_size=2, skip_bad=True)
    assert list(threads.skipped) == [100000]
    _same(_run(records, cfg, workers, batch_size=2, skip_bad=True), threads)


def test_a_decoder_crash_is_that_images_one_line_error_or_skip(cfg, workers, images):
    records = folder_records(images)
    crash = next(r for r in records if r.path.name.startswith("crash"))
    others = [r for r in records if r is not crash and r.image_id != 100000]
    with pytest.raises(InputFileError) as caught:
        _run(others + [crash], cfg, workers, batch_size=2)
    message = str(caught.value)
    assert message.startswith(str(crash.path)) and "crashed its worker process (killed by SIGKILL)" in message
    assert "--skip-bad" in message and "\n" not in message
    outcome = _run(records, cfg, workers, batch_size=1, skip_bad=True)
    assert set(outcome.skipped) == {crash.image_id, 100000} and "crashed" in outcome.skipped[crash.image_id]
    # the restarted worker went on: the other images' results are the thread mode's
    reference = _run(others, cfg, "threads", batch_size=1)
    assert outcome.results == reference.results  # batch 1: the fake answers by position in the batch


def test_a_post_worker_crash_fails_the_run_naming_the_files(cfg, images):
    records = [r for r in folder_records(images) if r.image_id not in (100000,) and "crash" not in r.path.name]
    pool = HostProcesses(decode_workers=1, post_workers=1)
    try:
        def kill_post(done):
            if done == 2:
                os.kill(pool.pids["post"][0], signal.SIGKILL)

        with pytest.raises(HostWorkerError) as caught:
            _run(records, cfg, pool, batch_size=2, on_batch=kill_post)
        message = str(caught.value)
        assert "post-processing worker process died (killed by SIGKILL)" in message and "\n" not in message
        # it names the files of the batch it lost; which batch that is depends on the timing of the kill,
        # so the test holds what is certain: one batch of this run, not the first (done before the kill)
        named = [r for r in records if r.path.name in message]
        assert 1 <= len(named) <= 2 and all(r in records[2:] for r in named), message
        assert pool.closed  # the dead worker's set is not reused
    finally:
        pool.close()


def test_auto_chooses_processes_only_for_gil_holding_runtimes(workers):
    class Releases:
        holds_gil = False

    assert choose_host("auto", Releases(), 10_000) == "threads"
    assert choose_host("auto", SimulatedNpuBackend(0), 10_000) == "processes"
    assert choose_host("threads", SimulatedNpuBackend(0), 10_000) == "threads"
    assert choose_host(workers, Releases(), 1) == "processes"
    with pytest.raises(ValueError, match="host must be one of"):
        choose_host("fork", Releases(), 1)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SCHED_BATCH is Linux's")
def test_the_workers_do_not_preempt_the_device_thread(workers):
    """A woken worker in the default class could take the calling thread's core
    for a scheduler slice while the device waits (measured: 60-150 ms per 200
    images on two cores); in SCHED_BATCH it does not."""
    pids = workers.pids["decode"] + workers.pids["post"]
    assert len(pids) == 3 and all(os.sched_getscheduler(pid) == os.SCHED_BATCH for pid in pids)
    assert os.sched_getscheduler(0) != os.SCHED_BATCH


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full to fill a disk")
def test_a_full_disk_under_the_workers_journal_fails_naming_it(cfg, workers, tmp_path):
    """The post workers append the journal themselves: a failed append is the
    thread mode's one-line error naming the journal, and what was journaled
    before is kept."""
    records = resolve_dataset(limit=6).records
    path = tmp_path / "journal.jsonl"
    with PartialStore(path, {"t": 1}) as store:
        _run(records[:2], cfg, workers, batch_size=2, store=store)
    kept = path.read_bytes()
    full = tmp_path / "full.jsonl"
    full.symlink_to("/dev/full")  # every write: ENOSPC
    with PartialStore(path, {"t": 1}) as store:
        store.path = full  # the journal now lives on a full disk
        with pytest.raises(OutputFileError) as caught:
            _run(records, cfg, workers, batch_size=2, store=store)
    message = str(caught.value)
    assert message.startswith(f"{full}: cannot append to the partial-results journal (No space left on device)")
    assert "2 image(s) finished before are kept" in message and "\n" not in message
    assert path.read_bytes() == kept
    with PartialStore(path, {"t": 1}) as store:  # the workers are fine for the next run
        assert _run(records, cfg, workers, batch_size=2, store=store).processed_now == 4
