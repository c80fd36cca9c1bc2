"""Throughput measurement: the guide's table for one backend, plus what the
guide leaves out (the host's share and the end-to-end rate).

Three figures per run, each a median over repeats after warm-up:
- pure inference images/s per batch size: ``backend.infer`` alone on a
  preprocessed batch (what ``ais_infer`` reports);
- end-to-end images/s per batch size: ``run_pipeline`` from image files to COCO
  results with decoding, inference and post-processing overlapped;
- host images/s: decoding + preprocessing + post-processing with no backend,
  i.e. the most images/s the host could feed an infinitely fast accelerator.
"""

from __future__ import annotations

import platform
import statistics
import time
from typing import Callable, Dict, List, Sequence

import numpy as np

from m2det_impl.network.config import M2DetConfig
from m2det_impl.published import HOST_SCRIPTS_IMAGES_PER_SECOND, PUBLISHED_THROUGHPUT

__all__ = [
    "machine_info",
    "measure_inference",
    "measure_side_by_side",
    "measure_host",
    "measure_end_to_end",
    "bench_markdown",
]


def machine_info() -> Dict[str, object]:
    """What decides the numbers: the machine's identity (CPU model, cores, NPU
    SoC, CANN and driver versions, GPU; :func:`m2det_impl.machine.machine_identity`),
    plus the architecture under ``machine``, Python and the library versions."""
    from m2det_impl.gating.machine import machine_identity

    info: Dict[str, object] = dict(machine_identity())
    info.update({"machine": platform.machine(), "python": platform.python_version()})
    try:
        from m2det_impl.environment import library_versions

        info["versions"] = library_versions()
    except Exception:  # noqa: BLE001 - information only
        pass
    return info


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
    timing (:func:`m2det_impl.backends.simulated.reference_outputs`)."""
    from m2det_impl.backends.simulated import reference_outputs

    return reference_outputs()


def measure_inference(backend, tensors: Sequence[np.ndarray], batch_size: int, warmup: int = 1,
                      repeats: int = 3) -> Dict[str, float]:
    """Pure inference rate at one batch size, on real preprocessed images."""
    picks = [tensors[i % len(tensors)] for i in range(batch_size)]
    batch = np.stack(picks)
    times = _timed_repeats(lambda: backend.infer(batch), warmup, repeats)
    median = statistics.median(times)
    return {"batch_size": batch_size, "median_s_per_batch": median, "images_per_second": batch_size / median,
            "repeats": repeats, "times_s": times}


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
    pure, e2e = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        for batch in batches:
            backend.infer(batch)
        pure.append(time.perf_counter() - start)
        start = time.perf_counter()
        run_pipeline(records, backend, cfg, category_ids, batch_size=batch_size, loader_threads=loader_threads,
                     progress=False, host=mode)
        e2e.append(time.perf_counter() - start)
    median, pure_median = statistics.median(e2e), statistics.median(pure)
    return {"batch_size": batch_size, "images": len(records), "median_s": median,
            "images_per_second": len(records) / median, "times_s": e2e,
            "pure_median_s": pure_median, "pure_images_per_second": len(records) / pure_median,
            "pure_times_s": pure, "ratio": pure_median / median, "host": mode, "host_start_s": start_s}


def bench_markdown(data: Dict[str, object]) -> str:
    """The guide's table with this run's figures beside the published ones."""
    lines = [f"# m2det bench: {data['backend']} (M2Det{data['size']})", "",
             f"Machine: {data['machine'].get('cpu')} ({data['machine'].get('cores')} cores)", "",
             "| batch | pure inference img/s | end to end img/s | e2e / pure (paired) | host work in "
             "| 310P3 published | T4 published |",
             "|---|---|---|---|---|---|---|"]
    e2e = {row["batch_size"]: row for row in data.get("end_to_end", [])}
    for row in data["inference"]:
        b = row["batch_size"]
        e = e2e.get(b)
        lines.append(
            f"| {b} | {row['images_per_second']:.3f} | "
            + (f"{e['images_per_second']:.3f} | {e['ratio']:.1%} | {e.get('host', 'threads')}" if e else "- | - | -")
            + f" | {PUBLISHED_THROUGHPUT['310P3'].get(b, '-')} | {PUBLISHED_THROUGHPUT['T4'].get(b, '-')} |"
        )
    versus = data.get("versus")
    if versus:
        lines += ["", f"Side by side, pure inference, repeats alternating: **{versus['backend']}** against "
                      f"{data['backend']}", "",
                  f"| batch | {data['backend']} img/s | {versus['backend']} img/s | speed ratio |", "|---|---|---|---|"]
        mine = {row["batch_size"]: row for row in data["inference"]}
        for row in versus["inference"]:
            b = row["batch_size"]
            lines.append(f"| {b} | {mine[b]['images_per_second']:.3f} | {row['images_per_second']:.3f} | "
                         f"**{versus['speed_ratio'][str(b)]:.2f}x** |")
    host = data.get("host")
    if host:
        lines += ["", f"Host side (decode + preprocess + post-process, no backend): "
                      f"**{host['images_per_second']:.1f} images/s** over {host['images']} images "
                      f"(the guide's scripts: about {HOST_SCRIPTS_IMAGES_PER_SECOND:g})."]
    return "\n".join(lines) + "\n"


def measure_side_by_side(backends: Dict[str, object], tensors: Sequence[np.ndarray], batch_size: int,
                         warmup: int = 1, repeats: int = 3) -> Dict[str, Dict[str, float]]:
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
    for _ in range(repeats):
        for name, backend in backends.items():
            start = time.perf_counter()
            backend.infer(batch)
            times[name].append(time.perf_counter() - start)
    out = {}
    for name, t in times.items():
        median = statistics.median(t)
        out[name] = {"batch_size": batch_size, "median_s_per_batch": median, "images_per_second": batch_size / median,
                     "repeats": repeats, "times_s": t}
    return out
