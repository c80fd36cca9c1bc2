"""Streaming orchestration: images -> preprocess -> backend in batches -> post-process -> COCO results.

Three stages overlap: a thread pool decodes and preprocesses the next images
(OpenCV releases the GIL), the calling thread feeds the backend, and one worker
thread post-processes the previous batch. So the accelerator waits on the host
only if the host is slower than it, which m2det bench measures. Every finished
image goes to the run's journal (pipeline.journal), so a killed run resumes.
"""

from __future__ import annotations

import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Deque, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from m2det_impl.errors import InputFileError
from m2det_impl.network.config import M2DetConfig
from m2det_impl.network.priors import make_priors
from m2det_impl.pipeline.dataset import ImageRecord
from m2det_impl.pipeline.journal import PartialStore
from m2det_impl.pipeline.preprocess import load_and_preprocess

__all__ = [
    "RunOutcome",
    "run_pipeline",
    "iter_preprocessed",
]


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


def run_pipeline(records: Sequence[ImageRecord], backend, cfg: M2DetConfig, category_ids: Sequence[int], *,
                 batch_size: int = 1, store: Optional[PartialStore] = None, skip_bad: bool = False,
                 loader_threads: int = 2, progress: bool = True,
                 on_batch: Optional[Callable[[int], None]] = None) -> RunOutcome:
    """Run every record not yet in ``store`` and return all results, in image-id order.

    ``on_batch(n_done)`` is called after each batch is journaled (tests use it
    to interrupt a run at a known point).
    """
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    priors = make_priors(cfg)
    already = store.finished() if store is not None else set()
    todo = [r for r in records if r.image_id not in already]
    collected: Dict[int, list] = {} if store is None else store.done
    skipped: Dict[int, str] = {} if store is None else store.skipped
    outcome = RunOutcome(results=[], image_ids=[r.image_id for r in records], resumed=len(records) - len(todo))
    start = time.perf_counter()
    bar = tqdm(total=len(records), initial=outcome.resumed, unit="img", desc="m2det run",
               disable=not progress, dynamic_ncols=True)
    pending: Deque[Future] = deque()

    def settle(future: Future) -> None:
        entries = future.result()
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

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="m2det-post") as post:
        for chunk in _batches(iter_preprocessed(todo, cfg, workers=loader_threads,
                                                prefetch=max(8, 2 * batch_size)), batch_size):
            good = [(rec, t, size) for rec, t, size, err in chunk if err is None]
            bad = [(rec.image_id, None, err) for rec, t, size, err in chunk if err is not None]
            if bad and not skip_bad:
                raise InputFileError(None, bad[0][2] + " (use --skip-bad to record it and go on)")
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
                settle(pending.popleft())
        while pending:
            settle(pending.popleft())
    bar.close()
    outcome.seconds = time.perf_counter() - start
    outcome.skipped = {i: skipped[i] for i in outcome.image_ids if i in skipped}
    outcome.results = [det for i in outcome.image_ids for det in collected.get(i, [])]
    return outcome


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
