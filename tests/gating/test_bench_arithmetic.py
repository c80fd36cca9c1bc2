"""Throughput arithmetic of m2det_impl.gating.bench on a fake clock: images per
second is images / seconds (never the inverse); pure inference is ais_bench's
1000 * batch / mean(execute ms), with batch / median(wall s) beside it; the
end-to-end / pure ratio is pipeline images/s over pure images/s.

measure_inference's runtime-clock handling has its own tests
(tests/gating/test_throughput_gate.py)."""

import math
from types import SimpleNamespace

import numpy as np
import pytest

import m2det_impl.gating.bench as bench
import m2det_impl.gating.bench_report as bench_report

pytestmark = pytest.mark.cpu


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def perf_counter(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(bench, "time", fake)
    return fake


class FakeBackend:
    """Costs ``per_image`` seconds per image of each call, plus ``jitter`` seconds on the given calls."""

    def __init__(self, clock, per_image, jitter=None):
        self.clock, self.per_image, self.jitter, self.calls = clock, per_image, dict(jitter or {}), 0

    def infer(self, batch):
        self.clock.advance(self.per_image * batch.shape[0] + self.jitter.get(self.calls, 0.0))
        self.calls += 1
        return None


class ShapedBackend(FakeBackend):
    """Records the shape of every batch it is given."""

    def __init__(self, clock, per_image):
        super().__init__(clock, per_image)
        self.shapes, self.execute_times_ms = [], []

    def infer(self, batch):
        self.shapes.append(batch.shape)
        return super().infer(batch)


class TimedBackend(FakeBackend):
    """A runtime that also reports its execute time (as aclruntime does): equal to the wall clock here,
    so the rate is the same whichever of the two a measurement reads."""

    def __init__(self, clock, per_image, jitter=None):
        super().__init__(clock, per_image, jitter)
        self.execute_times_ms = []

    def infer(self, batch):
        before = self.clock.now
        super().infer(batch)
        self.execute_times_ms.append((self.clock.now - before) * 1000.0)


def _tensors(n=3):
    return [np.full((3, 4, 4), i, np.float32) for i in range(n)]


def test_side_by_side_rates_are_batch_over_mean_execute_time(clock):
    fast = TimedBackend(clock, 0.25)
    slow = TimedBackend(clock, 1.0, jitter={2: 5.0})  # one slow repeat (call 2 = 2nd timed)
    out = bench.measure_side_by_side({"fast": fast, "slow": slow}, _tensors(), batch_size=4, warmup=1, repeats=3)
    assert out["fast"]["images_per_second"] == pytest.approx(4.0)  # 1000 * 4 / 1000 ms
    # ais_bench averages: the slow repeat counts (mean 17/3 s), where the wall-clock median ignores it
    assert out["slow"]["images_per_second"] == pytest.approx(1000.0 * 4 / (17000.0 / 3))
    assert out["slow"]["median_s_per_batch"] == pytest.approx(4.0)
    assert out["slow"]["wall_clock_images_per_second"] == pytest.approx(1.0)
    assert out["slow"]["times_s"] == pytest.approx([4.0, 9.0, 4.0])
    assert out["fast"]["batch_size"] == 4 and out["fast"]["repeats"] == 3
    assert fast.calls == slow.calls == 4  # one warm-up each, then three timed


def test_host_rate_is_images_over_seconds(clock, monkeypatch):
    import m2det_impl.network.priors as priors
    import m2det_impl.pipeline.coco as coco
    import m2det_impl.pipeline.postprocess as postprocess
    import m2det_impl.pipeline.stream as stream

    seen = []

    def fake_iter(cycle, cfg, workers, prefetch):
        for record in cycle:
            clock.advance(0.1)
            yield record, None, (640, 480), None

    def fake_detect(scores, loc, priors_, width, height, cfg):
        seen.append((scores, width, height))
        return np.zeros((0, 6))

    monkeypatch.setattr(stream, "iter_preprocessed", fake_iter)
    monkeypatch.setattr(postprocess, "detect", fake_detect)
    monkeypatch.setattr(coco, "to_coco_results", lambda dets, image_id, ids: [])
    monkeypatch.setattr(priors, "make_priors", lambda cfg: None)
    records = [SimpleNamespace(image_id=i, path=f"{i}.jpg") for i in (7, 8, 9)]
    outputs = [("s0", "l0"), ("s1", "l1")]
    out = bench.measure_host(records, None, outputs, [1], images=20, repeats=3)
    assert out["images"] == 20
    assert out["median_s"] == pytest.approx(2.0)
    assert out["images_per_second"] == pytest.approx(10.0)
    assert len(out["times_s"]) == 3
    assert len(seen) == 60
    # outputs cycle when there are fewer of them than records: record k uses outputs[k % 2]
    assert [s for s, _, _ in seen[:4]] == ["s0", "s1", "s0", "s0"]


class FakeOutcome:
    """A run's outcome whose COCO dicts are built on first access of
    ``results``, taking ``seconds`` on the clock (as RunOutcome's are)."""

    def __init__(self, clock, seconds: float):
        self.clock, self.seconds, self.results_seconds = clock, seconds, 0.0

    @property
    def results(self):
        self.clock.advance(self.seconds)
        self.results_seconds = self.seconds
        return []


def test_end_to_end_rate_and_ratio(clock, monkeypatch):
    import m2det_impl.pipeline.preprocess as preprocess
    import m2det_impl.pipeline.stream as stream

    runs = []

    def fake_run_pipeline(records, backend, cfg, category_ids, batch_size, loader_threads, progress, **host):
        runs.append(batch_size)
        clock.advance(8.0)
        return FakeOutcome(clock, 1.0)

    monkeypatch.setattr(preprocess, "load_and_preprocess", lambda path, cfg: (np.zeros((3, 4, 4), np.float32), (4, 4)))
    monkeypatch.setattr(stream, "run_pipeline", fake_run_pipeline)
    backend = TimedBackend(clock, 0.5)
    records = [SimpleNamespace(image_id=i, path=f"{i}.jpg") for i in range(4)]
    out = bench.measure_end_to_end(backend, records, None, [1], batch_size=3, repeats=3)
    assert backend.calls == 6  # batches of 3 and 1, three times
    assert runs == [3, 3, 3, 3]  # one untimed run first (it starts the host workers), then three timed
    assert out["images"] == 4 and out["batch_size"] == 3
    assert out["median_s"] == pytest.approx(8.0)
    assert out["images_per_second"] == pytest.approx(0.5)
    assert out["pure_median_s"] == pytest.approx(2.0)
    assert out["pure_images_per_second"] == pytest.approx(2.0)
    # pipeline images/s over pure images/s: 0.5 / 2.0
    assert out["ratio"] == pytest.approx(0.25)
    assert out["ratio"] == pytest.approx(out["images_per_second"] / out["pure_images_per_second"])
    # the COCO dicts, built after the clock stopped, are timed on their own and counted in beside it
    assert out["results_dicts_s"] == [1.0, 1.0, 1.0]
    assert out["with_dicts_images_per_second"] == pytest.approx(4 / 9.0)


def test_bench_markdown_puts_the_published_guide_figures_beside_the_measured_ones():
    data = {"backend": "om", "size": 512, "machine": {"cpu": "x", "cores": 2},
            "inference": [{"batch_size": 4, "images_per_second": 50.0}, {"batch_size": 2, "images_per_second": 9.0}],
            "end_to_end": [{"batch_size": 4, "images_per_second": 40.0, "ratio": 0.8}]}
    text = bench_report.bench_markdown(data)
    # batch, pure, wall clock (not measured here), end to end, paired pure (not recorded here), ratio, host mode,
    # 310P3 and T4 of the guide
    assert "| 4 | 50.000 | not measured | 40.000 | not measured | 80.0% | threads | 54.707 | 60.997 |" in text
    assert "| 2 | 9.000 | not measured | - | - | - | - | - | - |" in text


def test_bench_markdown_states_the_coco_dicts_built_after_the_run():
    data = {"backend": "simulated-npu", "size": 512, "machine": {"cpu": "x", "cores": 2},
            "inference": [{"batch_size": 4, "images_per_second": 66.667}],
            "end_to_end": [{"batch_size": 4, "images": 200, "images_per_second": 64.0, "ratio": 0.96,
                            "host": "processes", "results_dicts_s": [0.06, 0.04, 0.05],
                            "with_dicts_images_per_second": 63.5}]}
    text = bench_report.bench_markdown(data)
    # the median of the three builds, 0.05 s, over 200 images
    assert "building the COCO result dicts from them afterwards took 0.25 ms per image" in text
    assert "(counted in: 63.500 img/s)" in text
    data["end_to_end"][0]["host"] = "threads"  # the thread mode builds them during the run: no such line
    assert "COCO result dicts" not in bench_report.bench_markdown(data)
    data["end_to_end"][0]["host"] = "processes"
    del data["end_to_end"][0]["results_dicts_s"]  # a record from before: no such line
    assert "COCO result dicts" not in bench_report.bench_markdown(data)


def test_inference_rate_is_batch_over_mean_execute_time(clock):
    backend = TimedBackend(clock, 0.5, jitter={1: 10.0})  # the first timed repeat is slow
    out = bench.measure_inference(backend, _tensors(), batch_size=8, warmup=1, repeats=3)
    assert out["batch_size"] == 8
    assert out["images_per_second"] == pytest.approx(8 / (22.0 / 3))  # 8 images over the mean of 14, 4 and 4 s
    assert out["wall_clock_images_per_second"] == pytest.approx(2.0)  # 8 images / median 4 s


def test_inference_defaults_warmup_and_reports_every_figure(clock):
    backend = TimedBackend(clock, 0.5)
    backend.execute_clock, backend.runtime_timed = "runtime exec_time_list", True
    out = bench.measure_inference(backend, _tensors(2), batch_size=3)  # defaults: one warm-up, three repeats
    assert backend.calls == 4
    assert out == {"batch_size": 3, "images_per_second": pytest.approx(2.0), "mean_execute_ms": pytest.approx(1500.0),
                   "execute_ms": pytest.approx([1500.0] * 3), "execute_clock": "runtime exec_time_list",
                   "runtime_timed": True, "wall_clock_images_per_second": pytest.approx(2.0),
                   "median_s_per_batch": pytest.approx(1.5), "wall_clock": bench.WALL_CLOCK_LABEL, "repeats": 3,
                   "times_s": pytest.approx([1.5] * 3)}


def test_inference_batches_cycle_over_the_tensors_and_an_untimed_backend_says_so(clock):
    seen = []

    class Recording(FakeBackend):
        execute_times_ms = []

        def infer(self, batch):
            seen.append(batch[:, 0, 0, 0].tolist())
            return super().infer(batch)

    out = bench.measure_inference(Recording(clock, 1.0), _tensors(2), batch_size=3, warmup=2, repeats=1)
    assert seen == [[0.0, 1.0, 0.0]] * 3  # two warm-ups, one timed
    assert out["images_per_second"] is None and out["mean_execute_ms"] is None  # no execute time: not measured
    assert out["execute_clock"] == "?" and out["runtime_timed"] is False
    assert len(out["execute_ms"]) == 1 and math.isnan(out["execute_ms"][0])  # recorded as missing, not as 0 ms
    assert out["wall_clock_images_per_second"] == pytest.approx(1.0)  # 3 images in 3 s


def test_a_zero_or_missing_execute_time_is_not_a_rate(clock):
    class Zero(TimedBackend):
        def infer(self, batch):
            super().infer(batch)
            self.execute_times_ms[-1] = 0.0

    assert bench.measure_inference(Zero(clock, 0.5), _tensors(), 2, warmup=0, repeats=2)["images_per_second"] is None

    class OneZero(TimedBackend):
        def infer(self, batch):
            super().infer(batch)
            if len(self.execute_times_ms) == 1:
                self.execute_times_ms[-1] = 0.0

    assert bench.measure_inference(OneZero(clock, 0.5), _tensors(), 2, warmup=0, repeats=2)["images_per_second"] is None


def test_sub_millisecond_executes_are_measured(clock):
    out = bench.measure_inference(TimedBackend(clock, 0.0001), _tensors(), 4, warmup=0, repeats=2)
    assert out["mean_execute_ms"] == pytest.approx(0.4)
    assert out["images_per_second"] == pytest.approx(10000.0)


def test_an_infinite_execute_time_is_not_measured():
    out = bench._rate(SimpleNamespace(), 4, [1.0, 1.0], [2.0, math.inf])
    assert out["images_per_second"] is None and out["mean_execute_ms"] is None


def test_published_record_names_the_table_its_source_and_platform():
    from m2det_impl.published import PUBLISHED_SOURCES

    record = bench.published_record("guide", "T4")
    assert record == {"name": "guide", "source": PUBLISHED_SOURCES["guide"], "platform": "T4",
                      "table": {"1": 50.658, "4": 60.997, "8": 52.890, "16": 62.186, "32": 64.602}}
    assert bench.published_record()["table"]["4"] == 54.707 and bench.published_record()["platform"] == "310P3"


def test_side_by_side_defaults(clock):
    a = TimedBackend(clock, 0.25)
    a.execute_clock, a.runtime_timed = "exec_time_list", True
    out = bench.measure_side_by_side({"a": a}, _tensors(), batch_size=2)
    assert a.calls == 4 and out["a"]["repeats"] == 3  # one warm-up, three repeats
    assert out["a"]["execute_clock"] == "exec_time_list" and out["a"]["runtime_timed"] is True


def test_host_passes_its_settings_through(clock, monkeypatch):
    import m2det_impl.network.priors as priors
    import m2det_impl.pipeline.coco as coco
    import m2det_impl.pipeline.postprocess as postprocess
    import m2det_impl.pipeline.stream as stream

    cfg, ids, calls = object(), [1, 3], {"iter": [], "detect": [], "coco": [], "priors": []}

    def fake_iter(cycle, cfg_, workers, prefetch):
        calls["iter"].append((cfg_, workers, prefetch))
        for record in cycle:
            clock.advance(0.5)
            yield record, None, (640, 480), None

    def fake_detect(scores, loc, priors_, width, height, cfg_):
        calls["detect"].append((scores, loc, priors_, width, height, cfg_))
        return "dets"

    monkeypatch.setattr(stream, "iter_preprocessed", fake_iter)
    monkeypatch.setattr(postprocess, "detect", fake_detect)
    monkeypatch.setattr(coco, "to_coco_results", lambda *a: calls["coco"].append(a))
    monkeypatch.setattr(priors, "make_priors", lambda c: calls["priors"].append(c) or "PRIORS")
    records = [SimpleNamespace(image_id=i, path=f"{i}.jpg") for i in (7, 8)]
    out = bench.measure_host(records, cfg, [("s", "l")], ids, images=2)  # defaults: 2 loader threads, 3 repeats
    assert calls["priors"] == [cfg]
    assert calls["iter"] == [(cfg, 2, 16)] * 3
    assert calls["detect"][0] == ("s", "l", "PRIORS", 640, 480, cfg)
    assert calls["coco"][:2] == [("dets", 7, ids), ("dets", 8, ids)]
    assert out == {"images": 2, "median_s": pytest.approx(1.0), "images_per_second": pytest.approx(2.0),
                   "times_s": pytest.approx([1.0] * 3)}
    bench.measure_host(records, cfg, [("s", "l")], ids, images=2, loader_threads=5, repeats=1)
    assert calls["iter"][-1] == (cfg, 5, 16)
    assert bench.measure_host(records, cfg, [("s", "l")], ids, repeats=1)["images"] == 200  # the default


def _end_to_end(clock, monkeypatch, mode, running=True):
    import m2det_impl.pipeline.hostproc as hostproc
    import m2det_impl.pipeline.preprocess as preprocess
    import m2det_impl.pipeline.stream as stream

    log = {"choose": [], "runs": [], "started": []}

    def fake_run_pipeline(records, backend, cfg, category_ids, **kw):
        log["runs"].append((len(records), backend, cfg, category_ids, kw))
        clock.advance(4.0)
        return FakeOutcome(clock, 0.0)

    log["loaded"], log["asked"] = [], []

    def fake_load(path, cfg):
        log["loaded"].append((path, cfg))
        return np.zeros((3, 4, 4), np.float32), (4, 4)

    monkeypatch.setattr(preprocess, "load_and_preprocess", fake_load)
    monkeypatch.setattr(stream, "run_pipeline", fake_run_pipeline)
    monkeypatch.setattr(stream, "choose_host", lambda *a: log["choose"].append(a) or mode)
    monkeypatch.setattr(hostproc, "running_host_processes", lambda n: log["asked"].append(n) or running)
    monkeypatch.setattr(hostproc, "shared_host_processes", lambda n: log["started"].append(n) or clock.advance(3.0))
    return log


def test_end_to_end_passes_host_mode_and_settings_through(clock, monkeypatch):
    log = _end_to_end(clock, monkeypatch, "threads")
    backend, cfg, ids = ShapedBackend(clock, 0.5), object(), [1]
    records = [SimpleNamespace(image_id=i, path=f"{i}.jpg") for i in range(5)]
    out = bench.measure_end_to_end(backend, records, cfg, ids, batch_size=2)  # defaults: 1 repeat, 2 threads, auto
    assert log["choose"] == [("auto", backend, 5, 2)]
    settings = {"batch_size": 2, "loader_threads": 2, "progress": False, "host": "threads"}
    assert log["runs"] == [(4, backend, cfg, ids, settings), (5, backend, cfg, ids, settings)]  # warm-up: 2 batches
    assert log["started"] == []
    assert log["loaded"] == [(f"{i}.jpg", cfg) for i in range(5)]
    assert backend.shapes == [(2, 3, 4, 4), (2, 3, 4, 4), (1, 3, 4, 4)]
    assert out == {"batch_size": 2, "images": 5, "median_s": pytest.approx(4.0),
                   "images_per_second": pytest.approx(1.25), "times_s": pytest.approx([4.0]),
                   "pure_median_s": pytest.approx(2.5), "pure_images_per_second": pytest.approx(2.0),
                   "pure_times_s": pytest.approx([2.5]), "ratio": pytest.approx(2.5 / 4.0), "host": "threads",
                   "host_start_s": 0.0, "results_dicts_s": [0.0], "with_dicts_images_per_second": pytest.approx(1.25)}


def test_end_to_end_starts_host_processes_once_and_records_it(clock, monkeypatch):
    log = _end_to_end(clock, monkeypatch, "processes", running=False)
    records = [SimpleNamespace(image_id=i, path=f"{i}.jpg") for i in range(2)]
    out = bench.measure_end_to_end(TimedBackend(clock, 0.5), records, None, [1], batch_size=1, repeats=2,
                                   loader_threads=3, host="processes")
    assert log["choose"][0][0] == "processes" and log["choose"][0][3] == 3
    assert log["started"] == [3] and log["asked"] == [3]
    assert out["host"] == "processes" and out["host_start_s"] == pytest.approx(3.0)
    assert log["runs"][0][4] == {"batch_size": 1, "loader_threads": 3, "progress": False, "host": "processes"}
    assert out["times_s"] == pytest.approx([4.0, 4.0]) and out["pure_times_s"] == pytest.approx([1.0, 1.0])
    log = _end_to_end(clock, monkeypatch, "processes", running=True)
    out = bench.measure_end_to_end(TimedBackend(clock, 0.5), records, None, [1], batch_size=1)
    assert log["started"] == [] and out["host_start_s"] == 0.0


def test_host_timing_uses_the_reference_shaped_outputs(monkeypatch):
    import m2det_impl.pipeline.reference_cases as reference_cases

    cases = [("scores", "loc")]
    monkeypatch.setattr(reference_cases, "reference_outputs", lambda: cases)
    assert bench.reference_postprocess_cases() is cases
