"""The simulated 310P (``simulated-npu``): holds the GIL like aclruntime's run, reference-shaped outputs."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from m2det_impl.backends.registry import runtimes
from m2det_impl.backends.simulated import SimulatedNpuBackend, hold_gil_sleep
from m2det_impl.backends.spec import ModelSpec
from m2det_impl.errors import UsageError
from m2det_impl.network.config import get_config
from m2det_impl.pipeline.reference_cases import reference_outputs

pytestmark = pytest.mark.cpu


def _longest_stall(call) -> float:
    """The longest time a pure-Python counter thread made no progress while ``call()`` ran."""
    ticks = []
    stop = threading.Event()

    def count():
        while not stop.is_set():
            ticks.append(time.perf_counter())

    def ticked_after(moment: float) -> None:  # the counter has run since ``moment`` (no fixed sleep)
        deadline = time.monotonic() + 60
        while not (ticks and ticks[-1] > moment) and time.monotonic() < deadline:
            time.sleep(0.001)

    thread = threading.Thread(target=count)
    thread.start()
    ticked_after(time.perf_counter())  # counting
    call()
    ticked_after(time.perf_counter())  # a tick after the call, so its stall is closed
    stop.set()
    thread.join()
    return float(np.max(np.diff(ticks)))


def test_the_simulated_run_keeps_the_gil_while_it_waits():
    """No thread of the process runs Python during a simulated batch, as with
    aclruntime; a GIL-releasing sleep of the same length stalls nothing."""
    backend = SimulatedNpuBackend(ms_per_image=100.0)
    batch = np.zeros((2, 3, 512, 512), np.float32)
    held = _longest_stall(lambda: backend.infer(batch))
    assert held >= 0.18  # a stall is never shorter than the GIL was held, whatever the machine's load
    assert backend.execute_times_ms == [200.0]  # the simulated device time, not the wall clock
    # the probe sees a releasing wait of the same length: bounds relative to the 200 ms, with room for
    # a loaded machine's scheduling (a timing bound of the probe, never of the code's speed)
    assert _longest_stall(lambda: time.sleep(0.2)) < 0.5 * held
    start = time.process_time()
    hold_gil_sleep(0.2)
    assert time.process_time() - start < 0.1  # it waits without burning a core (CPU time, not wall time)


def test_outputs_are_the_reference_cases_cycled_over_the_batch():
    cases = reference_outputs()
    backend = SimulatedNpuBackend(ms_per_image=0)
    scores, loc = backend.infer(np.zeros((4, 3, 512, 512), np.float32))
    assert scores.shape == (4, 32760, 81) and loc.shape == (4, 32760, 4)
    for i in range(4):
        assert np.array_equal(scores[i], cases[i % len(cases)][0]) and np.array_equal(loc[i], cases[i % len(cases)][1])


def test_registry_and_model_spec_build_it():
    assert runtimes()["simulated-npu"].device == "sim"
    spec = ModelSpec(backend="simulated-npu", sim_ms_per_image=7.5)
    assert not spec.golden and spec.identity(get_config(512))["sim_ms_per_image"] == 7.5
    backend = spec.create(get_config(512))
    assert isinstance(backend, SimulatedNpuBackend) and backend.ms_per_image == 7.5 and backend.holds_gil
    with pytest.raises(UsageError, match="--size 512"):
        ModelSpec(backend="simulated-npu").create(get_config(320))
