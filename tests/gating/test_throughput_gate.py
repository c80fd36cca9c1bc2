"""The throughput gate's arithmetic and its refusals (cpu layer).

``measure_inference`` must compute ais_bench's figure, ``1000 * batch /
mean(execute ms)``, from the backend's own execute times, with the wall clock
beside it; ``throughput_gate`` must fail (never pass or skip) without a
published figure for the batch size, without a measured figure, or on a
wall-clock figure where the runtime's own execute time was asked for. The
backend here is a real ``Backend`` subclass whose runtime "times itself".
"""

from __future__ import annotations

import numpy as np
import pytest

from m2det_impl.backends.base import Backend
from m2det_impl.gating.bench import measure_inference, published_record
from m2det_impl.gating.bench_report import bench_markdown
from m2det_impl.gating.gates import throughput_gate
from m2det_impl.published import DEFAULT_PUBLISHED, PUBLISHED_SOURCES, published_names, throughput_table

pytestmark = pytest.mark.cpu

P, C, S = 3, 5, 4


class SelfTimed(Backend):
    """A runtime that reports its own execute times (as aclruntime does), cycling through ``ms``."""

    name = "selftimed"
    execute_clock = "fake runtime execute time"
    runtime_timed = True

    def __init__(self, ms, static_batch=None):
        self.ms, self.calls, self.static_batch = list(ms), 0, static_batch

    def _run(self, chunk):
        b = chunk.shape[0]
        return np.zeros((b, P, C), np.float32), np.zeros((b, P, 4), np.float32)

    def _execute_ms(self, wall_ms):
        value = self.ms[self.calls % len(self.ms)]
        self.calls += 1
        return value


TENSORS = [np.zeros((3, S, S), np.float32)]


def test_images_per_second_is_ais_benchs_formula_on_execute_times():
    backend = SelfTimed([10.0, 20.0, 30.0, 70.0])
    figure = measure_inference(backend, TENSORS, batch_size=4, warmup=1, repeats=3)  # warm-up takes 10.0
    assert figure["execute_ms"] == [20.0, 30.0, 70.0]
    assert figure["images_per_second"] == pytest.approx(1000.0 * 4 / 40.0)  # the mean, not the median (30)
    assert figure["execute_clock"] == "fake runtime execute time" and figure["runtime_timed"] is True
    wall = figure["wall_clock_images_per_second"]
    assert wall == pytest.approx(4 / figure["median_s_per_batch"]) and "wall clock" in figure["wall_clock"]


def test_a_static_batch_call_of_several_executes_sums_them():
    backend = SelfTimed([5.0], static_batch=2)
    figure = measure_inference(backend, TENSORS, batch_size=4, warmup=0, repeats=2)
    assert figure["execute_ms"] == [10.0, 10.0] and figure["images_per_second"] == pytest.approx(400.0)


def test_a_missing_execute_time_means_not_measured():
    figure = measure_inference(SelfTimed([5.0, float("nan")]), TENSORS, batch_size=1, warmup=0, repeats=2)
    assert figure["images_per_second"] is None
    verdict = throughput_gate(figure, published_record(), 0.05)
    assert not verdict.passed and "not measured" in verdict.message


def _figure(rate, batch=1, runtime_timed=True):
    return {"batch_size": batch, "images_per_second": rate, "runtime_timed": runtime_timed,
            "execute_clock": "aclruntime execute time", "wall_clock_images_per_second": 1.0}


@pytest.mark.parametrize("name", published_names())
def test_gate_holds_the_chosen_table_and_names_it(name):
    published = published_record(name)
    table = throughput_table(name, "310P3")
    assert published["source"] == PUBLISHED_SOURCES[name]
    good = throughput_gate(_figure(table[1] * 0.96), published, 0.05)
    bad = throughput_gate(_figure(table[1] * 0.94), published, 0.05)
    assert good.passed and not bad.passed
    for verdict in (good, bad):
        assert repr(name) in verdict.message and published["source"] in verdict.message


def test_a_batch_without_a_published_figure_fails():
    published = published_record(DEFAULT_PUBLISHED)
    assert "2" not in published["table"]
    verdict = throughput_gate(_figure(1e6, batch=2), published, 0.05)
    assert not verdict.passed and "no published figure for batch 2" in verdict.message


def test_a_wall_clock_figure_fails_where_the_runtime_clock_is_required():
    table = published_record()
    assert not throughput_gate(_figure(1e6, runtime_timed=False), table, 0.05).passed
    assert throughput_gate(_figure(1e6, runtime_timed=False), table, 0.05, require_runtime_clock=False).passed


def test_bench_markdown_shows_the_table_name_and_both_clocks():
    row = measure_inference(SelfTimed([10.0]), TENSORS, batch_size=1, warmup=0, repeats=1)
    data = {"backend": "selftimed", "size": 512, "machine": {"cpu": "x", "cores": 2},
            "published": published_record("modelzoo-current"), "inference": [row], "end_to_end": []}
    text = bench_markdown(data)
    assert "modelzoo-current" in text and PUBLISHED_SOURCES["modelzoo-current"] in text
    assert "| 1 | 100.000 |" in text and "45.349" in text and "fake runtime execute time" in text
