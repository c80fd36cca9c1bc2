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
from typing import Callable, Deque, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from m2det_impl.errors import InputFileError, UsageError
from m2det_impl.network.config import M2DetConfig
from m2det_impl.network.priors import make_priors
from m2det_impl.pipeline.dataset import ImageRecord
from m2det_impl.pipeline.journal import PartialStore
from m2det_impl.pipeline.preprocess import load_and_preprocess
from m2det_impl.pipeline.run_results import RunResults

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
#: many images on: starting them (spawn, imports, numba warm-up) takes 0.9 to
#: 1.6 s on two cores, and with the simulated 310P at batch 4 they take 15.4 ms
#: per image against the threads' 19.7 (README, "Runtimes that keep the GIL"),
#: so they pay from roughly 200 to 400 images.
PROCESSES_MIN_IMAGES = 300


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


class RunOutcome:
    """What a run produced and how long each part took.

    ``results``: every image's COCO result dicts, in image-id order. A run
    with its host work in worker processes ends when every image's
    detections are in this process (and journaled), as arrays; the dicts are
    built from them on first access (pipeline.run_results: about 0.3 ms per
    image here, which would otherwise hold up a GIL-holding device), and
    :attr:`results_seconds` records how long that took. :attr:`seconds` is the
    run without it.
    """

    def __init__(self, results: Optional[List[dict]] = None, image_ids: Sequence[int] = (),
                 skipped: Optional[Dict[int, str]] = None, processed_now: int = 0, resumed: int = 0,
                 seconds: float = 0.0, infer_seconds: float = 0.0):
        self.image_ids: List[int] = list(image_ids)
        self.skipped: Dict[int, str] = dict(skipped or {})
        self.processed_now = processed_now
        self.resumed = resumed
        self.seconds = seconds
        self.infer_seconds = infer_seconds
        self.results_seconds = 0.0
        self._results: Optional[List[dict]] = list(results) if results is not None else []
        self._unbuilt: Optional[RunResults] = None

    def hold(self, unbuilt: RunResults) -> None:
        """Results to build on first access of :attr:`results`."""
        self._unbuilt, self._results = unbuilt, None

    @property
    def results(self) -> List[dict]:
        if self._results is None:
            start = time.perf_counter()
            self._results = self._unbuilt.coco_results(self.image_ids)
            self._unbuilt = None
            self.results_seconds = time.perf_counter() - start
        return self._results

    @results.setter
    def results(self, value: List[dict]) -> None:
        self._results, self._unbuilt = value, None

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
    collected: Dict[int, Union[list, np.ndarray]] = {} if store is None else store.done
    skipped: Dict[int, str] = {} if store is None else store.skipped
    results = RunResults(collected, category_ids)
    outcome = RunOutcome(image_ids=[r.image_id for r in records], resumed=len(records) - len(todo))
    pool = None
    if mode == "processes" and todo:
        from m2det_impl.pipeline.hostproc import HostProcesses, shared_host_processes

        pool = host if isinstance(host, HostProcesses) else shared_host_processes(loader_threads)
    start = time.perf_counter()
    bar = tqdm(total=len(records), initial=outcome.resumed, unit="img", desc="m2det run",
               disable=not progress, dynamic_ncols=True)

    def settle(entries, written: bool = False) -> None:
        """Record a finished batch; ``written``: its journal lines are on disk already."""
        if store is not None and not written:
            store.add(entries)
        else:
            for image_id, found, reason in entries:
                if reason is None:
                    results.add(image_id, found)
                else:
                    skipped[image_id] = reason
        outcome.processed_now += len(entries)
        bar.update(len(entries))
        if on_batch is not None:
            on_batch(outcome.processed_now)

    if pool is not None:
        try:
            _run_processes(pool, todo, backend, cfg, category_ids, batch_size, skip_bad, settle, outcome,
                           store, results.build_some)
        except BaseException:
            pool.abandon()  # its workers may still be writing this run's slots
            raise
    else:
        _run_threads(todo, backend, cfg, category_ids, batch_size, skip_bad, loader_threads, settle, outcome)
    bar.close()
    outcome.skipped = {i: skipped[i] for i in outcome.image_ids if i in skipped}
    outcome.seconds = time.perf_counter() - start
    outcome.hold(results)
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


def _run_processes(pool, todo, backend, cfg, category_ids, batch_size, skip_bad, settle, outcome, store,
                   build_some: Callable[[], bool]) -> None:
    """The calling thread only feeds the backend: decoding, the output copy,
    post-processing and the journal's appends overlap it outside this
    thread's GIL (pipeline.hostproc). Once the last batch is on its way it
    builds finished images' COCO dicts (``build_some``) while it waits."""
    from m2det_impl.pipeline.hostproc import INPUT_SLOTS

    chunks = [todo[i: i + batch_size] for i in range(0, len(todo), batch_size)]
    if not chunks:
        return
    pool.begin(cfg, category_ids, batch_size, journal=None if store is None else store.path)
    decoded: Dict[int, list] = {}
    ready: Dict[int, list] = {}
    next_settle = 0

    def submit(k: int) -> None:
        if k < len(chunks):
            decoded[k] = [None] * len(chunks[k])
            pool.submit_decodes([((k, row), record.path, k % INPUT_SLOTS, row)
                                 for row, record in enumerate(chunks[k])])

    def handle(events) -> None:
        for event in events:
            if event[0] == "decoded":
                (k, row), size, err = event[1], event[2], event[3]
                decoded[k][row] = (size, err)
            elif event[0] == "posted":
                ready[event[1]] = event[2]
            else:  # "append_failed": the journal could not take batch event[1]
                raise store.append_failed(event[2])

    def settle_ready() -> None:
        nonlocal next_settle
        while next_settle in ready:
            settle(ready.pop(next_settle), written=True)
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
            items = [(chunk[i].image_id, *rows[i][0]) for i in good]
            pool.ship(k, scores, loc, items, [str(chunk[i].path) for i in good], bad)
            del scores, loc
        else:
            submit(k + INPUT_SLOTS)
            pool.post_unreadable(k, bad)
        handle(pool.poll(0))
        settle_ready()
    while next_settle < len(chunks):
        events = pool.poll(0)
        if not events and not build_some():
            events = pool.poll(None)
        handle(events)
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
