"""The one interface every inference backend implements.

``infer(batch[B,3,S,S]) -> (scores[B,P,C], loc[B,P,4])``, float32, in the order
the post-processing expects, whatever the runtime calls or orders its outputs.
Static-batch models (an ``.om`` is always one) get the input cut into chunks of
their batch size; the last partial chunk is padded with zeros and the padding
dropped from the outputs, so a caller never sees the model's batch size.
"""

from __future__ import annotations

import os
import time
from abc import ABC, abstractmethod
from typing import List, Optional, Tuple

import numpy as np

from m2det_impl.errors import ModelOutputError, UsageError

__all__ = [
    "Backend",
    "Outputs",
    "check_input_batch",
    "default_threads",
    "THREADS_ENV",
]

THREADS_ENV = "M2DET_THREADS"


def default_threads() -> Optional[int]:
    """Intra-op threads for a CPU runtime when none is asked for (``--threads``):
    ``$M2DET_THREADS``, or ``None`` for the runtime's own default (one per core).

    Set it where several runs share the cores (the suite's pytest-xdist
    workers set it to their share): two runtimes each spinning one thread per
    core on the same two cores cost the machine about a sixth more CPU time
    than one thread each (measured on the cpu suite: 6.7 against 5.7 CPU
    minutes)."""
    value = os.environ.get(THREADS_ENV, "").strip()
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise UsageError(f"{THREADS_ENV}={value!r}: expected a positive number of threads")
    return int(value)

Outputs = Tuple[np.ndarray, np.ndarray]


def check_input_batch(batch: np.ndarray, size: Optional[int] = None) -> np.ndarray:
    """``batch`` as a C-contiguous float32 ``[B, 3, S, S]`` array, or ValueError."""
    array = np.asarray(batch)
    if array.ndim != 4 or array.shape[1] != 3 or array.shape[2] != array.shape[3] or array.shape[0] < 1:
        raise ValueError(f"expected an image batch [B, 3, S, S] with B >= 1, got shape {list(array.shape)}")
    if size is not None and array.shape[2] != size:
        raise ValueError(f"this model takes {size}x{size} inputs, got {array.shape[2]}x{array.shape[3]}")
    if array.dtype != np.float32:
        raise ValueError(f"expected float32 input (the preprocessed tensor), got {array.dtype}")
    return np.ascontiguousarray(array)


class Backend(ABC):
    """An inference runtime holding one M2Det model.

    Subclasses set :attr:`name`, :attr:`static_batch` (``None`` when any batch
    size runs) and :attr:`input_size` (``None`` when unknown), and implement
    :meth:`_run` for one chunk and :meth:`close`.
    """

    name: str = "backend"
    #: What :attr:`execute_times_ms` measures: the runtime's own execute time
    #: where it keeps one (aclruntime, as ais_bench reports), else the wall clock
    #: around one runtime call.
    execute_clock: str = "wall clock around one runtime call"
    static_batch: Optional[int] = None
    #: True when the runtime keeps the GIL while the model runs (aclruntime's
    #: ``run`` does): then no thread of this process runs Python meanwhile, and
    #: the pipeline moves its host work into worker processes (pipeline.stream).
    holds_gil: bool = False
    input_size: Optional[int] = None
    source: str = ""
    #: Untimed executes a session runs before its first timed one, as
    #: ais_bench's warm-up does (its ``--warmup_count``, default 1): the cold
    #: first execute of a loaded model costs many times a warm one. They are
    #: in no timing list (:meth:`warm_up`).
    warmup_executes: int = 0
    #: True when the model's outputs hold scores flat, ``[B*P, C]`` (the
    #: guide's ``.om``), which is how ais_bench then writes them per input.
    flat_scores: bool = False

    @property
    def batch_sizes(self) -> Optional[Tuple[int, ...]]:
        """Batch sizes the model itself accepts; ``None`` means any."""
        return None if self.static_batch is None else (self.static_batch,)

    def infer(self, batch: np.ndarray, max_batch: Optional[int] = None) -> Outputs:
        """Run ``batch`` [B, 3, S, S] float32 -> (scores [B, P, C], loc [B, P, 4]).

        ``max_batch`` bounds how many images a dynamic-batch model gets per
        call (activation memory grows with it: about 1 GB per image at 512);
        a static-batch model always gets its own batch size.
        """
        batch = check_input_batch(batch, self.input_size)
        if max_batch is not None and max_batch < 1:
            raise ValueError(f"max_batch must be positive, got {max_batch}")
        if not self.__dict__.get("_warmed"):
            self._warm_up_checked(batch, max_batch)
        scores: List[np.ndarray] = []
        locs: List[np.ndarray] = []
        for chunk, real in self._chunks(batch, max_batch):
            started = time.perf_counter()
            raw = self._run(chunk)
            self.execute_times_ms.append(self._execute_ms((time.perf_counter() - started) * 1000.0))
            chunk_scores, chunk_loc = self._check_outputs(*raw, chunk.shape[0])
            scores.append(chunk_scores[:real])
            locs.append(chunk_loc[:real])
        if len(scores) == 1:
            return scores[0], locs[0]
        return np.concatenate(scores), np.concatenate(locs)

    def _chunks(self, batch: np.ndarray, max_batch: Optional[int]):
        """``(chunk, real images in it)`` per runtime call: the model's own batch, the last one padded with
        zeros (dropped from the outputs) for a static-batch model."""
        n = batch.shape[0]
        step = self.static_batch or min(n, max_batch or n)
        for start in range(0, n, step):
            chunk = batch[start:start + step]
            real = chunk.shape[0]
            if real < step and self.static_batch:  # pad the last partial batch; the padding is dropped below
                pad = np.zeros((step - real, *chunk.shape[1:]), dtype=chunk.dtype)
                chunk = np.concatenate([chunk, pad])
            yield chunk, real

    def warm_up(self, batch: np.ndarray, max_batch: Optional[int] = None) -> None:
        """Run this session's :attr:`warmup_executes` untimed executes on ``batch``'s first chunk, once per
        session (``infer`` does it before its first timed execute if nobody did): ais_bench warms up on the
        first batch of real inputs and then clears every timing list."""
        if not self.__dict__.get("_warmed"):
            self._warm_up_checked(check_input_batch(batch, self.input_size), max_batch)

    def _warm_up_checked(self, batch: np.ndarray, max_batch: Optional[int]) -> None:
        self.__dict__["_warmed"] = True
        if self.warmup_executes < 1:
            return
        chunk, _ = next(self._chunks(batch, max_batch))
        for _ in range(self.warmup_executes):
            self._run(chunk)
        self._after_warm_up()

    def _after_warm_up(self) -> None:
        """Forget what the warm-up left in the runtime's own timing lists (a runtime that keeps some overrides)."""

    @property
    def h2d_times_ms(self) -> List[float]:
        """Host-to-device copy ms of the timed executes, where the runtime keeps them (aclruntime); else empty."""
        return self.__dict__.setdefault("_h2d_times_ms", [])

    @property
    def d2h_times_ms(self) -> List[float]:
        """Device-to-host copy ms of the timed executes, where the runtime keeps them (aclruntime); else empty."""
        return self.__dict__.setdefault("_d2h_times_ms", [])

    def _check_outputs(self, scores: np.ndarray, loc: np.ndarray, batch: int) -> Outputs:
        scores = np.asarray(scores)
        loc = np.asarray(loc)
        if loc.ndim != 3 or loc.shape[0] != batch or loc.shape[2] != 4:
            raise ModelOutputError(f"{self.source or self.name}: loc has shape {list(loc.shape)}, "
                                   f"expected [{batch}, P, 4]")
        if scores.ndim != 3 or scores.shape[:2] != loc.shape[:2]:
            raise ModelOutputError(f"{self.source or self.name}: scores have shape {list(scores.shape)}, "
                                   f"expected [{batch}, {loc.shape[1]}, C]")
        return scores.astype(np.float32, copy=False), loc.astype(np.float32, copy=False)

    @property
    def execute_times_ms(self) -> List[float]:
        """Milliseconds of model execution per runtime call, in call order (see :attr:`execute_clock`)."""
        times = self.__dict__.get("_execute_times_ms")
        if times is None:
            times = self.__dict__["_execute_times_ms"] = []
        return times

    def _execute_ms(self, wall_ms: float) -> float:
        """The execute time of the call just made; a runtime that times itself overrides this."""
        return wall_ms

    @abstractmethod
    def _run(self, chunk: np.ndarray) -> Outputs:
        """Run one chunk of exactly the model's batch size (any size if dynamic)."""

    def close(self) -> None:
        """Release the runtime's resources; the backend is unusable afterwards."""

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        batch = "dynamic" if self.static_batch is None else f"static {self.static_batch}"
        return f"<{type(self).__name__} {self.name} ({batch} batch) {self.source}>"
