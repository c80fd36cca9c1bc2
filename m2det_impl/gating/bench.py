"""Throughput measurement: the guide's table for one backend, plus what the
guide leaves out (the host's share and the end-to-end rate).

The report of a run (the guide's table beside this run's figures) and the
machine description it records are in :mod:`m2det_impl.gating.bench_report`.

Three figures per run, after warm-up:
- pure inference images/s per batch size, as ais_bench computes it:
  ``1000 * batch / mean(execute ms)`` over the backend's execute times
  (``Backend.execute_times_ms``: aclruntime's own ``exec_time_list`` on an
  NPU, the wall clock around one runtime call elsewhere; ``execute_clock``
  says which), with the wall-clock figure of ``backend.infer`` (median of
  repeats) beside it, labelled;
- end-to-end images/s per batch size: ``run_pipeline`` from image files to COCO
  results with decoding, inference and post-processing overlapped;
- host images/s: decoding + preprocessing + post-processing with no backend,
  i.e. the most images/s the host could feed an infinitely fast accelerator.
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Callable, Dict, List, Sequence

import numpy as np

from m2det_impl.network.config import M2DetConfig
from m2det_impl.published import DEFAULT_PUBLISHED, PUBLISHED_SOURCES, throughput_table

__all__ = [
    "measure_inference",
    "published_record",
    "WALL_CLOCK_LABEL",
    "measure_side_by_side",
    "measure_host",
    "measure_end_to_end",
]


def _timed_repeats(fn: Callable[[], object], warmup: int, repeats: int) -> List[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def reference_postprocess_cases() -> List[tuple]:
    """(scores [P, C], loc [P, 4]) of the reference's post-processing cases
    (package data): raw outputs shaped like a trained M2Det512's, for host-side
    timing (:func:`m2det_impl.pipeline.reference_cases.reference_outputs`)."""
    from m2det_impl.pipeline.reference_cases import reference_outputs

    return reference_outputs()


WALL_CLOCK_LABEL = "wall clock around backend.infer (host copies and casts included), median of repeats"


def measure_inference(backend, tensors: Sequence[np.ndarray], batch_size: int, warmup: int = 1,
                      repeats: int = 3) -> Dict[str, object]:
    """Pure inference rate at one batch size, on real preprocessed images.

    ``images_per_second`` is ais_bench's figure, ``1000 * batch / mean(ms)``
    over the execute times the backend recorded during the timed repeats (one
    per repeat: the summed executes of its chunks); ``execute_clock`` names
    that clock and ``runtime_timed`` says whether it is the runtime's own.
    It is ``None`` (not measured) when an execute time is missing (NaN).
    ``wall_clock_images_per_second`` is ``batch / median(wall s)`` of the same
    repeats, labelled by ``wall_clock``."""
    picks = [tensors[i % len(tensors)] for i in range(batch_size)]
    batch = np.stack(picks)
    for _ in range(warmup):
        backend.infer(batch)
    times_s: List[float] = []
    execute_ms: List[float] = []
    for _ in range(repeats):
        _timed_call(backend, batch, times_s, execute_ms)
    return _rate(backend, batch_size, times_s, execute_ms)


def _timed_call(backend, batch: np.ndarray, times_s: List[float], execute_ms: List[float]) -> None:
    """One ``backend.infer``: its wall seconds and the sum of the execute ms it recorded (NaN if any is missing)."""
    log = backend.execute_times_ms
    before = len(log)
    start = time.perf_counter()
    backend.infer(batch)
    times_s.append(time.perf_counter() - start)
    fresh = [float(t) for t in log[before:]]
    execute_ms.append(sum(fresh) if fresh and all(math.isfinite(t) for t in fresh) else float("nan"))


def _rate(backend, batch_size: int, times_s: List[float], execute_ms: List[float]) -> Dict[str, object]:
    median = statistics.median(times_s)
    measured = bool(execute_ms) and all(math.isfinite(t) and t > 0 for t in execute_ms)
    mean_ms = sum(execute_ms) / len(execute_ms) if measured else None
    return {"batch_size": batch_size,
            "images_per_second": 1000.0 * batch_size / mean_ms if mean_ms else None,
            "mean_execute_ms": mean_ms, "execute_ms": execute_ms,
            "execute_clock": getattr(backend, "execute_clock", "?"),
            "runtime_timed": bool(getattr(backend, "runtime_timed", False)),
            "wall_clock_images_per_second": batch_size / median, "median_s_per_batch": median,
            "wall_clock": WALL_CLOCK_LABEL, "repeats": len(times_s), "times_s": times_s}


def published_record(name: str = DEFAULT_PUBLISHED, platform: str = "310P3") -> Dict[str, object]:
    """The published table a figure is judged against, with its name and source, for recording beside it."""
    return {"name": name, "source": PUBLISHED_SOURCES.get(name, "?"), "platform": platform,
            "table": {str(b): v for b, v in throughput_table(name, platform).items()}}


def measure_host(records, cfg: M2DetConfig, outputs, category_ids, images: int = 200,
                 loader_threads: int = 2, repeats: int = 3) -> Dict[str, float]:
    """Decode + preprocess + post-process ``images`` images (cycling over the
    records, with recorded raw outputs), no backend: the host's ceiling."""
    from m2det_impl.network.priors import make_priors
    from m2det_impl.pipeline.coco import to_coco_results
    from m2det_impl.pipeline.postprocess import detect
    from m2det_impl.pipeline.stream import iter_preprocessed

    priors = make_priors(cfg)
    cycle = [records[i % len(records)] for i in range(images)]
    index = {r.image_id: i for i, r in enumerate(records)}

    def once():
        for record, tensor, size, err in iter_preprocessed(cycle, cfg, workers=loader_threads, prefetch=16):
            scores, loc = outputs[index[record.image_id] % len(outputs)]  # cycle when fewer outputs than records
            to_coco_results(detect(scores, loc, priors, size[0], size[1], cfg), record.image_id, category_ids)

    times = _timed_repeats(once, 0, repeats)
    median = statistics.median(times)
    return {"images": images, "median_s": median, "images_per_second": images / median, "times_s": times}


def measure_end_to_end(backend, records, cfg: M2DetConfig, category_ids, batch_size: int,
                       repeats: int = 1, loader_threads: int = 2, host: str = "auto") -> Dict[str, float]:
    """Files to COCO results through the streaming pipeline at one batch size,
    paired with pure inference over the same images in the same batches.

    The two alternate (pure, pipeline, pure, pipeline, ...) so both see the
    same machine load: on a shared machine, figures taken minutes apart differ
    by more than the overlap costs. ``ratio`` is pipeline / pure images/s.

    ``host`` as for ``run_pipeline``; the mode it comes to is resolved once,
    and worker processes (if any) are started and warmed up (one untimed
    batch-pair run) before timing: a long run pays their start-up once, which
    ``start_s`` records.
    """
    from m2det_impl.pipeline.preprocess import load_and_preprocess
    from m2det_impl.pipeline.stream import choose_host, run_pipeline

    mode = choose_host(host, backend, len(records), loader_threads)
    start_s = 0.0
    if mode == "processes":
        from m2det_impl.pipeline.hostproc import running_host_processes, shared_host_processes

        if not running_host_processes(loader_threads):
            started = time.perf_counter()
            shared_host_processes(loader_threads)
            start_s = time.perf_counter() - started
    run_pipeline(records[: 2 * batch_size], backend, cfg, category_ids, batch_size=batch_size,
                 loader_threads=loader_threads, progress=False, host=mode)  # warm-up, untimed

    tensors = [load_and_preprocess(r.path, cfg)[0] for r in records]
    batches = [np.stack(tensors[i: i + batch_size]) for i in range(0, len(tensors), batch_size)]
    pure, e2e, dicts = [], [], []
    for _ in range(repeats):
        start = time.perf_counter()
        for batch in batches:
            backend.infer(batch)
        pure.append(time.perf_counter() - start)
        start = time.perf_counter()
        outcome = run_pipeline(records, backend, cfg, category_ids, batch_size=batch_size,
                               loader_threads=loader_threads, progress=False, host=mode)
        e2e.append(time.perf_counter() - start)
        outcome.results  # noqa: B018 - built on first access: timed on its own
        dicts.append(outcome.results_seconds)
        del outcome  # freed after the clock: dropping the results is the caller's business
    median, pure_median = statistics.median(e2e), statistics.median(pure)
    with_dicts = statistics.median(t + d for t, d in zip(e2e, dicts))
    return {"batch_size": batch_size, "images": len(records), "median_s": median,
            "images_per_second": len(records) / median, "times_s": e2e,
            "pure_median_s": pure_median, "pure_images_per_second": len(records) / pure_median,
            "pure_times_s": pure, "ratio": pure_median / median, "host": mode, "host_start_s": start_s,
            "results_dicts_s": dicts, "with_dicts_images_per_second": len(records) / with_dicts}


def measure_side_by_side(backends: Dict[str, object], tensors: Sequence[np.ndarray], batch_size: int,
                         warmup: int = 1, repeats: int = 3) -> Dict[str, Dict[str, object]]:
    """Pure inference of several backends at one batch size, their repeats
    alternating (A, B, A, B, ...) so that both see the same machine load; a
    speed ratio between runs made minutes apart on a shared machine says more
    about the machine than about the backends."""
    picks = [tensors[i % len(tensors)] for i in range(batch_size)]
    batch = np.stack(picks)
    for backend in backends.values():
        for _ in range(warmup):
            backend.infer(batch)
    times: Dict[str, List[float]] = {name: [] for name in backends}
    executes: Dict[str, List[float]] = {name: [] for name in backends}
    for _ in range(repeats):
        for name, backend in backends.items():
            _timed_call(backend, batch, times[name], executes[name])
    return {name: _rate(backends[name], batch_size, times[name], executes[name]) for name in backends}
