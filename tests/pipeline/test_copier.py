"""The copy thread of the worker-process host (pipeline.copier): it copies what
its table row says, sends the row's sequence number when done, never needs the
GIL, and finishes every queued copy before it stops."""

from __future__ import annotations

import os
import select
import sys

import numpy as np
import pytest

from m2det_impl.backends.simulated import hold_gil_sleep
from m2det_impl.pipeline.copier import Copier, read_notice

pytestmark = pytest.mark.cpu


@pytest.fixture()
def copier():
    made = Copier(rows=4)
    yield made
    made.close()


@pytest.fixture()
def notices():
    read_end, write_end = os.pipe()
    yield read_end, write_end
    os.close(read_end)
    os.close(write_end)


def _pairs(seed: int, sizes=((3, 1000), (3, 40))):
    rng = np.random.default_rng(seed)
    sources = [rng.standard_normal(size).astype(np.float32) for size in sizes]
    return [(s, np.zeros_like(s)) for s in sources]


def test_copies_both_buffers_and_sends_each_sequence_in_order(copier, notices):
    read_end, write_end = notices
    batches = [_pairs(seed) for seed in range(6)]
    for k, (first, second) in enumerate(batches):
        copier.copy(k % 4, 100 + k, first, second, write_end)
        if k >= 3:  # a row is reused only after its notice
            assert read_notice(read_end) == 100 + k - 3
    assert [read_notice(read_end) for _ in range(3)] == [103, 104, 105]
    assert copier.done_sequence == 105  # what the caller checks before it frees a batch's outputs
    for first, second in batches:
        for source, destination in (first, second):
            assert destination.tobytes() == source.tobytes()


def test_it_copies_while_this_thread_holds_the_gil(copier, notices):
    """The point of the thread: a GIL-holding runtime (aclruntime's run, the
    simulated 310P) does not stop it. A Python thread could not have run
    during the hold, and nothing after it gets a chance before the check."""
    read_end, write_end = notices
    first, second = _pairs(7, sizes=((1 << 18,), (16,)))
    copier.copy(0, 1, first, second, write_end)
    hold_gil_sleep(0.5)
    readable, _, _ = select.select([read_end], [], [], 0)
    assert readable, "the copy did not finish while the GIL was held"
    assert read_notice(read_end) == 1 and first[1].tobytes() == first[0].tobytes()


def test_close_finishes_every_queued_copy_then_refuses_more(notices):
    read_end, write_end = notices
    copier = Copier(rows=4)
    batches = [_pairs(seed, sizes=((1 << 20,), (8,))) for seed in range(4)]
    for k, (first, second) in enumerate(batches):
        copier.copy(k, k + 1, first, second, write_end)
    copier.close()
    assert [read_notice(read_end) for _ in range(4)] == [1, 2, 3, 4]
    assert all(d.tobytes() == s.tobytes() for pair in batches for s, d in pair)
    with pytest.raises(RuntimeError, match="copy thread stopped"):
        copier.copy(0, 5, *batches[0], write_end)
    copier.close()  # twice is fine


def test_bad_buffers_are_refused_before_anything_is_queued(copier, notices):
    read_end, write_end = notices
    (source, destination), second = _pairs(1)
    with pytest.raises(ValueError, match="C-contiguous"):
        copier.copy(0, 1, (source[:, ::2], destination[:, ::2]), second, write_end)
    with pytest.raises(ValueError, match=r"copy of 12000 bytes into 8000"):
        copier.copy(0, 1, (source, destination[:2]), second, write_end)
    assert not select.select([read_end], [], [], 0.2)[0]  # no copy ran, no notice came
    assert not destination.any()


def test_a_notice_reader_sees_the_writer_go():
    read_end, write_end = os.pipe()
    os.write(write_end, b"\x01\x00")  # half a notice, then the writer is gone
    os.close(write_end)
    assert read_notice(read_end) is None
    os.close(read_end)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SCHED_BATCH is Linux's")
def test_the_copy_thread_does_not_preempt_the_device_thread(copier):
    assert os.sched_getscheduler(copier.native_id) == os.SCHED_BATCH
    assert os.sched_getscheduler(0) != os.SCHED_BATCH  # the caller keeps its class
