"""Streaming orchestration: images -> preprocess -> backend in batches ->
post-process -> COCO results, resumable and shardable.

Three stages overlap: a thread pool decodes and preprocesses the next images
(OpenCV releases the GIL), the calling thread feeds the backend (ONNX Runtime
and the NPU runtimes release it too), and one worker thread post-processes the
previous batch. So the accelerator waits on the host only if the host is
slower than it, which ``m2det bench`` measures.

Every finished image is appended to a partial-results journal (JSON lines,
flushed and fsynced per batch). A run killed at any point resumes from the
journal: a half-written last line is dropped and that image done again, so no
image is lost or counted twice (tests/test_kill_resume.py kills runs with
SIGKILL to hold this). An append that fails (a full disk) is cut back and
reported naming the journal; a second process on the same journal is refused
(an flock), since two writers would interleave lines.
"""

from __future__ import annotations

import errno
import json
import os
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Deque, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from .config import M2DetConfig
from .dataset import ImageRecord
from .errors import InputFileError, M2DetError, OutputFileError
from .preprocess import load_and_preprocess
from .priors import make_priors

__all__ = [
    "PartialStore",
    "RunOutcome",
    "run_pipeline",
    "iter_preprocessed",
    "shard_results_name",
    "write_shard_file",
    "merge_shard_files",
]

PathLike = Union[str, Path]


# --------------------------------------------------------------- journal
class PartialStore:
    """Append-only journal of per-image results for resuming a run.

    The first line is a header with the run's identity (model, weights, size,
    thresholds); a journal written by a different run is refused rather than
    mixed in. Each further line is ``{"image_id": .., "results": [...]}``.
    """

    def __init__(self, path: PathLike, identity: Dict[str, object], fresh: bool = False, lock: bool = False):
        self.path = Path(path)
        self.identity = dict(identity)
        self.done: Dict[int, list] = {}
        self.skipped: Dict[int, str] = {}
        self._lock_handle = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputFileError(self.path.parent, f"cannot create the output folder ({exc.strerror or exc})",
                                  exc.errno) from None
        if lock:
            self._lock()
        try:
            if fresh and self.path.exists():
                self.path.unlink()
            if self.path.exists():
                self._load()
            else:
                self._write_header()
        except BaseException:
            self.close()
            raise

    def _lock(self) -> None:
        """Refuse a second process on the same journal: two writers would
        interleave lines and do every image twice."""
        lock_path = self.path.with_name(self.path.name + ".lock")
        try:
            handle = open(lock_path, "a+")
        except OSError as exc:
            raise OutputFileError(lock_path, f"cannot create the journal's lock file ({exc.strerror or exc})",
                                  exc.errno) from None
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: no lock
            self._lock_handle = handle
            return
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                self._lock_handle = handle  # a file system without locks: go on unguarded
                return
            handle.close()
            raise M2DetError(f"{self.path}: another m2det run is writing this journal right now (same output "
                             "folder and shard); wait for it, or give this run another --out or --shard") from None
        self._lock_handle = handle

    def close(self) -> None:
        """Release the journal's lock (the lines are already on disk)."""
        handle, self._lock_handle = self._lock_handle, None
        if handle is not None:
            handle.close()

    def __enter__(self) -> "PartialStore":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _write_header(self) -> None:
        from .io_utils import atomic_write_text

        atomic_write_text(self.path, json.dumps({"header": self.identity}, sort_keys=True) + "\n")

    def _load(self) -> None:
        if not self.path.is_file():
            raise InputFileError(self.path, "expected the partial-results journal, found a folder or a device")
        try:
            raw = self.path.read_bytes()
        except OSError as exc:
            raise InputFileError(self.path, f"cannot read the partial-results journal ({exc.strerror or exc})") from None
        end = raw.rfind(b"\n") + 1
        if end < len(raw):  # a line cut by a kill: drop it, that image is redone
            try:
                with open(self.path, "r+b") as handle:
                    handle.truncate(end)
                    handle.flush()
                    os.fsync(handle.fileno())
            except OSError as exc:
                raise OutputFileError(self.path, f"cannot drop the journal's cut last line ({exc.strerror or exc})",
                                      exc.errno) from None
        try:
            lines = raw[:end].decode("utf-8").split("\n")[:-1] if end else []
        except UnicodeDecodeError as exc:
            raise InputFileError(self.path, f"not a partial-results journal (not UTF-8 at byte {exc.start}); "
                                            "use --fresh to start over") from None
        if not lines:
            self._write_header()
            return
        try:
            header = json.loads(lines[0])["header"]
            if not isinstance(header, dict):
                raise TypeError
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, RecursionError):
            raise InputFileError(self.path, "not a partial-results journal (bad header); remove it or use --fresh") from None
        now = json.loads(json.dumps(self.identity, sort_keys=True))  # tuples as the JSON lists they were
        if header != now:
            changed = sorted(k for k in set(header) | set(now) if header.get(k) != now.get(k))
            raise InputFileError(
                self.path,
                "partial results from a different run (" + ", ".join(
                    f"{k}: {header.get(k)!r} then, {self.identity.get(k)!r} now" for k in changed)
                + "); use --fresh to start over or another --out folder",
            )
        for lineno, line in enumerate(lines[1:], 2):
            try:
                entry = json.loads(line)
                image_id = entry["image_id"]
                if isinstance(image_id, bool) or not isinstance(image_id, int):
                    raise TypeError
                if "skipped" in entry:
                    reason = entry["skipped"]
                    if not isinstance(reason, str):
                        raise TypeError
                    self.skipped[image_id] = reason
                    self.done.pop(image_id, None)
                else:
                    results = entry["results"]
                    if not isinstance(results, list) or not all(isinstance(r, dict) for r in results):
                        raise TypeError
                    self.done[image_id] = results
                    self.skipped.pop(image_id, None)
            except (json.JSONDecodeError, KeyError, TypeError, ValueError, RecursionError):
                raise InputFileError(self.path, f"line {lineno} is damaged; use --fresh to start over") from None

    def add(self, entries: Sequence[Tuple[int, Optional[list], Optional[str]]]) -> None:
        """Record finished images: (image_id, results, None) or (image_id, None, reason)."""
        lines = []
        for image_id, results, skipped in entries:
            if skipped is not None:
                lines.append(json.dumps({"image_id": image_id, "skipped": skipped}))
            else:
                lines.append(json.dumps({"image_id": image_id, "results": results}))
        if not lines:
            return
        data = ("\n".join(lines) + "\n").encode("utf-8")
        try:
            _append(self.path, data)
        except OSError as exc:
            raise OutputFileError(
                self.path, f"cannot append to the partial-results journal ({exc.strerror or exc}); the "
                f"{len(self.finished())} image(s) finished before are kept: fix this and run the same command "
                "again to resume", exc.errno) from None
        for image_id, results, skipped in entries:  # recorded only once on disk
            if skipped is not None:
                self.skipped[image_id] = skipped
            else:
                self.done[image_id] = results

    def finished(self) -> set:
        return set(self.done) | set(self.skipped)


def _append(path: Path, data: bytes) -> None:
    """Append ``data`` and fsync; on failure (a full disk) cut the file back to
    where it was, so no half line is left behind where the disk allows it (a
    half line left anyway, by a kill, is dropped on resume)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        start = os.fstat(fd).st_size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except OSError:
            try:
                os.ftruncate(fd, start)
                os.fsync(fd)
            except OSError:
                pass
            raise
    finally:
        os.close(fd)


# -------------------------------------------------------------- streaming
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
    from .coco import to_coco_results
    from .postprocess import detect

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
def shard_results_name(index: int, count: int) -> str:
    return f"results.shard-{index}-of-{count}.json"


def write_shard_file(path: PathLike, index: int, count: int, outcome: RunOutcome,
                     identity: Dict[str, object]) -> Path:
    """A shard's partial results, with what it covered, for ``m2det merge``."""
    from .io_utils import atomic_write_json

    return atomic_write_json(path, {
        "shard": {"index": index, "count": count},
        "identity": identity,
        "image_ids": outcome.image_ids,
        "skipped": {str(k): v for k, v in outcome.skipped.items()},
        "results": outcome.results,
    })


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _shard_numbers(data) -> Tuple[int, int]:
    index, count = data["shard"]["index"], data["shard"]["count"]
    if not (_is_int(index) and _is_int(count)):
        raise TypeError
    return index, count


def _shard_problem(data: dict, index: int, count: int) -> Optional[str]:
    """What is wrong with a parsed shard file, or None."""
    if not (count >= 1 and 0 <= index < count):
        return f"shard {index}/{count} is not I/N with 0 <= I < N"
    ids = data.get("image_ids")
    if not isinstance(ids, list) or not all(_is_int(i) for i in ids):
        return "'image_ids' is not a list of integers"
    if len(set(ids)) != len(ids):
        return "'image_ids' lists an image twice"
    results = data.get("results")
    if not isinstance(results, list) or not all(isinstance(r, dict) and _is_int(r.get("image_id")) for r in results):
        return "'results' is not a list of results with integer image ids"
    stray = {r["image_id"] for r in results} - set(ids)
    if stray:
        return f"results for image(s) the shard does not cover, e.g. {sorted(stray)[0]}"
    skipped = data.get("skipped", {})
    if not isinstance(skipped, dict) or not all(isinstance(v, str) for v in skipped.values()):
        return "'skipped' is not a map of image id to reason"
    try:
        if {int(k) for k in skipped} - set(ids):
            return "'skipped' names images the shard does not cover"
    except ValueError:
        return "'skipped' has a key that is not an image id"
    return None


def merge_shard_files(paths: Sequence[PathLike], expected_ids: Optional[Iterable[int]] = None
                      ) -> Tuple[List[dict], List[int], Dict[int, str]]:
    """Combine shard files -> (results, image ids, skipped). Refuses shards of
    different runs, duplicated or missing shard indices, overlapping image ids,
    and (given ``expected_ids``) images no shard covered."""
    shards = []
    for path in paths:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            index, count = _shard_numbers(data)
        except FileNotFoundError:
            raise InputFileError(path, "shard file not found") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError, RecursionError):
            raise InputFileError(path, "not a shard results file written by m2det run --shard") from None
        problem = _shard_problem(data, index, count)
        if problem:
            raise InputFileError(path, f"damaged shard results file: {problem}")
        shards.append((path, index, count, data))
    if not shards:
        raise M2DetError("no shard files to merge")
    counts = {count for _, _, count, _ in shards}
    if len(counts) != 1:
        raise M2DetError("shards of different splits: " + ", ".join(f"{p.name} is ?/{c}" for p, _, c, _ in shards))
    count = counts.pop()
    identities = {json.dumps(d.get("identity"), sort_keys=True) for *_, d in shards}
    if len(identities) != 1:
        raise M2DetError("shards come from different runs (model, weights or settings differ)")
    seen: Dict[int, Path] = {}
    for path, index, _, _ in shards:
        if index in seen:
            raise M2DetError(f"shard {index}/{count} given twice: {seen[index]} and {path}")
        seen[index] = path
    missing = sorted(set(range(count)) - set(seen))
    if missing:
        raise M2DetError(f"missing shard(s) {', '.join(f'{i}/{count}' for i in missing)}: "
                         "run them or pass their files")
    owner: Dict[int, Path] = {}
    results: List[dict] = []
    skipped: Dict[int, str] = {}
    for path, _, _, data in sorted(shards, key=lambda s: s[1]):
        for image_id in data["image_ids"]:
            if image_id in owner:
                raise M2DetError(f"image {image_id} is in two shards: {owner[image_id]} and {path}")
            owner[image_id] = path
        results.extend(data["results"])
        skipped.update({int(k): v for k, v in data.get("skipped", {}).items()})
    if expected_ids is not None:
        uncovered = sorted(set(expected_ids) - set(owner))
        if uncovered:
            raise M2DetError(f"{len(uncovered)} image(s) covered by no shard, e.g. {uncovered[:5]}")
    ids = sorted(owner)
    results.sort(key=lambda r: r["image_id"])  # stable: keeps each image's own order
    return results, ids, skipped
