"""Streaming orchestration: images -> preprocess -> backend in batches -> post-process -> COCO results.

Three stages overlap: decoding and preprocessing of the next images, the
calling thread feeding the backend, and post-processing of the previous
batch. So the accelerator waits on the host only if the host is slower than
it, which m2det bench measures. Every finished image goes to the run's journal
(pipeline.journal), so a killed run resumes.

Where the host work runs (``host``):

- ``"threads"``: a thread pool decodes (OpenCV releases the GIL) and one
  thread post-processes. Right for runtimes that release the GIL while the
  model runs (ONNX Runtime, PyTorch): no start-up cost, no copies.
- ``"processes"``: worker processes decode into shared memory and
  post-process from it (:mod:`m2det_impl.pipeline.hostproc`). Needed for
  runtimes that keep the GIL while the model runs (aclruntime on an Ascend
  NPU, ``simulated-npu``): there no thread of this process runs Python during
  a batch, so threads serialize host work with the device.
- ``"auto"`` (default): processes when the backend keeps the GIL
  (``backend.holds_gil``) and either the workers are already running or the
  run has at least :data:`PROCESSES_MIN_IMAGES` images to do (starting them
  costs about as much as the overlap saves on that many images); else threads.

Both give the same results in the same order, the same journal and the same
one-line errors naming an unreadable image.
"""

from __future__ import annotations

import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Deque, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from m2det_impl.errors import InputFileError, UsageError
from m2det_impl.network.config import M2DetConfig
from m2det_impl.network.priors import make_priors
from m2det_impl.pipeline.dataset import ImageRecord
from m2det_impl.pipeline.journal import PartialStore
from m2det_impl.pipeline.preprocess import load_and_preprocess

__all__ = [
    "RunOutcome",
    "run_pipeline",
    "iter_preprocessed",
    "choose_host",
    "HOST_MODES",
    "PROCESSES_MIN_IMAGES",
]

HOST_MODES = ("auto", "threads", "processes")
#: ``host="auto"`` starts worker processes for a GIL-holding backend from this
#: many images on: starting them (spawn, imports, numba warm-up) takes about
#: 1.5 s on two cores, and they save about 8 ms per image over threads at
#: batch 4 (README, "Throughput"), so they pay from roughly 200 images.
PROCESSES_MIN_IMAGES = 200


def iter_preprocessed(records: Sequence[ImageRecord], cfg: M2DetConfig, workers: int = 2,
                      prefetch: int = 8) -> Iterator[Tuple[ImageRecord, Optional[np.ndarray], Optional[Tuple[int, int]], Optional[str]]]:
    """Yield (record, tensor, (width, height), None) in order, or
    (record, None, None, message) for an image that cannot be read."""

    def work(record: ImageRecord):
        try:
            tensor, size = load_and_preprocess(record.path, cfg)
            return record, tensor, size, None
        except InputFileError as exc:
            return record, None, None, str(exc)

    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="m2det-load") as pool:
        pending: Deque[Future] = deque()
        source = iter(records)
        for record in source:
            pending.append(pool.submit(work, record))
            if len(pending) >= prefetch:
                break
        while pending:
            result = pending.popleft().result()
            nxt = next(source, None)
            if nxt is not None:
                pending.append(pool.submit(work, nxt))
            yield result


@dataclass
class RunOutcome:
    """What a run produced and how long each part took."""

    results: List[dict]
    image_ids: List[int]
    skipped: Dict[int, str] = field(default_factory=dict)
    processed_now: int = 0
    resumed: int = 0
    seconds: float = 0.0
    infer_seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return self.processed_now / self.seconds if self.seconds > 0 else 0.0


def _postprocess_batch(cfg: M2DetConfig, priors: np.ndarray, category_ids: Sequence[int],
                       items: List[Tuple[ImageRecord, Tuple[int, int]]], scores: np.ndarray,
                       loc: np.ndarray, unreadable: list) -> List[Tuple[int, Optional[list], Optional[str]]]:
    from m2det_impl.pipeline.coco import to_coco_results
    from m2det_impl.pipeline.postprocess import detect

    out = []
    for i, (record, (width, height)) in enumerate(items):
        dets = detect(scores[i], loc[i], priors, width, height, cfg)
        out.append((record.image_id, to_coco_results(dets, record.image_id, category_ids), None))
    return out + unreadable


def choose_host(host, backend, images: int, loader_threads: int = 2) -> str:
    """``"threads"`` or ``"processes"`` for ``host`` (see the module doc)."""
    from m2det_impl.pipeline.hostproc import HostProcesses, running_host_processes

    if isinstance(host, HostProcesses):
        return "processes"
    if host not in HOST_MODES:
        raise UsageError(f"host must be one of {', '.join(HOST_MODES)}, got {host!r}")
    if host != "auto":
        return host
    if not getattr(backend, "holds_gil", False) or images == 0:
        return "threads"
    if running_host_processes(loader_threads) or images >= PROCESSES_MIN_IMAGES:
        return "processes"
    return "threads"


def run_pipeline(records: Sequence[ImageRecord], backend, cfg: M2DetConfig, category_ids: Sequence[int], *,
                 batch_size: int = 1, store: Optional[PartialStore] = None, skip_bad: bool = False,
                 loader_threads: int = 2, progress: bool = True,
                 on_batch: Optional[Callable[[int], None]] = None, host="auto") -> RunOutcome:
    """Run every record not yet in ``store`` and return all results, in image-id order.

    ``on_batch(n_done)`` is called after each batch is journaled (tests use it
    to interrupt a run at a known point). ``host``: ``"auto"``, ``"threads"``,
    ``"processes"`` (``loader_threads`` decode workers, kept for later runs) or
    a :class:`~m2det_impl.pipeline.hostproc.HostProcesses` to use.
    """
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    already = store.finished() if store is not None else set()
    todo = [r for r in records if r.image_id not in already]
    mode = choose_host(host, backend, len(todo), loader_threads)
    collected: Dict[int, list] = {} if store is None else store.done
    skipped: Dict[int, str] = {} if store is None else store.skipped
    outcome = RunOutcome(results=[], image_ids=[r.image_id for r in records], resumed=len(records) - len(todo))
    pool = None
    if mode == "processes" and todo:
        from m2det_impl.pipeline.hostproc import HostProcesses, shared_host_processes

        pool = host if isinstance(host, HostProcesses) else shared_host_processes(loader_threads)
    start = time.perf_counter()
    bar = tqdm(total=len(records), initial=outcome.resumed, unit="img", desc="m2det run",
               disable=not progress, dynamic_ncols=True)

    def settle(entries) -> None:
        if store is not None:
            store.add(entries)
        else:
            for image_id, results, reason in entries:
                if reason is None:
                    collected[image_id] = results
                else:
                    skipped[image_id] = reason
        outcome.processed_now += len(entries)
        bar.update(len(entries))
        if on_batch is not None:
            on_batch(outcome.processed_now)

    if pool is not None:
        try:
            _run_processes(pool, todo, backend, cfg, category_ids, batch_size, skip_bad, settle, outcome)
        except BaseException:
            pool.abandon()  # its workers may still be writing this run's slots
            raise
    else:
        _run_threads(todo, backend, cfg, category_ids, batch_size, skip_bad, loader_threads, settle, outcome)
    bar.close()
    outcome.seconds = time.perf_counter() - start
    outcome.skipped = {i: skipped[i] for i in outcome.image_ids if i in skipped}
    outcome.results = [det for i in outcome.image_ids for det in collected.get(i, [])]
    return outcome


def _unreadable(message: str) -> InputFileError:
    return InputFileError(None, message + " (use --skip-bad to record it and go on)")


def _run_threads(todo, backend, cfg, category_ids, batch_size, skip_bad, loader_threads, settle, outcome) -> None:
    priors = make_priors(cfg)
    pending: Deque[Future] = deque()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="m2det-post") as post:
        for chunk in _batches(iter_preprocessed(todo, cfg, workers=loader_threads,
                                                prefetch=max(8, 2 * batch_size)), batch_size):
            good = [(rec, t, size) for rec, t, size, err in chunk if err is None]
            bad = [(rec.image_id, None, err) for rec, t, size, err in chunk if err is not None]
            if bad and not skip_bad:
                raise _unreadable(bad[0][2])
            if good:
                batch = np.stack([t for _, t, _ in good])
                t0 = time.perf_counter()
                scores, loc = backend.infer(batch)
                outcome.infer_seconds += time.perf_counter() - t0
                items = [(rec, size) for rec, _, size in good]
                pending.append(post.submit(_postprocess_batch, cfg, priors, category_ids, items, scores, loc, bad))
            else:
                pending.append(post.submit(list, bad))
            while len(pending) > 1:  # keep one batch in post-processing while the next infers
                settle(pending.popleft().result())
        while pending:
            settle(pending.popleft().result())


def _run_processes(pool, todo, backend, cfg, category_ids, batch_size, skip_bad, settle, outcome) -> None:
    """The calling thread only feeds the backend: decoding, the output copy and
    post-processing overlap it outside this thread's GIL (pipeline.hostproc)."""
    from m2det_impl.pipeline.hostproc import INPUT_SLOTS

    chunks = [todo[i: i + batch_size] for i in range(0, len(todo), batch_size)]
    if not chunks:
        return
    pool.begin(cfg, category_ids, batch_size)
    decoded: Dict[int, list] = {}
    unreadable: Dict[int, list] = {}
    ready: Dict[int, list] = {}
    next_settle = 0

    def submit(k: int) -> None:
        if k < len(chunks):
            decoded[k] = [None] * len(chunks[k])
            for row, record in enumerate(chunks[k]):
                pool.submit_decode((k, row), record.path, k % INPUT_SLOTS, row)

    def handle(events) -> None:
        for event in events:
            if event[0] == "decoded":
                (k, row), size, err = event[1], event[2], event[3]
                decoded[k][row] = (size, err)
            else:
                ready[event[1]] = event[2] + unreadable.pop(event[1], [])

    def settle_ready() -> None:
        nonlocal next_settle
        while next_settle in ready:
            settle(ready.pop(next_settle))
            next_settle += 1

    for k in range(min(INPUT_SLOTS, len(chunks))):
        submit(k)
    for k, chunk in enumerate(chunks):
        while any(d is None for d in decoded[k]):
            handle(pool.poll(None))
        rows = decoded.pop(k)
        bad = [(rec.image_id, None, err) for rec, (size, err) in zip(chunk, rows) if err is not None]
        if bad and not skip_bad:
            raise _unreadable(bad[0][2])
        good = [i for i, (size, err) in enumerate(rows) if err is None]
        if good:
            view = pool.input_batch(k % INPUT_SLOTS, len(chunk))
            batch = view if len(good) == len(chunk) else view[good]
            t0 = time.perf_counter()
            scores, loc = backend.infer(batch)
            outcome.infer_seconds += time.perf_counter() - t0
            del batch, view
            submit(k + INPUT_SLOTS)  # the slot is free again
            unreadable[k] = bad
            items = [(chunk[i].image_id, *rows[i][0]) for i in good]
            pool.ship(k, scores, loc, items, [str(chunk[i].path) for i in good])
            del scores, loc
        else:
            submit(k + INPUT_SLOTS)
            ready[k] = bad
        handle(pool.poll(0))
        settle_ready()
    while next_settle < len(chunks):
        handle(pool.poll(None))
        settle_ready()


def _batches(items: Iterable, size: int) -> Iterator[list]:
    chunk: list = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


# ----------------------------------------------------------------- shards
