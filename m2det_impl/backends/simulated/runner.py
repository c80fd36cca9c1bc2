"""A fake Ascend 310P for throughput work without one: ``simulated-npu``.

aclruntime's ``run`` does not release the GIL (its bindings have no
``gil_scoped_release``), so while a real NPU executes a batch no other thread
of the calling process runs Python. This backend reproduces exactly that: its
:meth:`_run` sleeps ``ms_per_image`` per image *holding the GIL* (libc's
``usleep`` through :class:`ctypes.PyDLL`, which keeps the GIL across the call;
the sleep burns no core, as a device wait does not), then returns raw outputs
shaped like a trained M2Det512's (the reference's post-processing cases,
cycled over the batch), so the host's post-processing costs what it costs
with a real model. The default 15 ms per image is a 310P3 at about 66 img/s.

Model-free and deterministic: the outputs do not depend on the input, which
makes it a fast stand-in for pipeline tests too. Its execute time
(:attr:`Backend.execute_times_ms`) is the simulated one.
"""

from __future__ import annotations

import ctypes
from typing import Dict, Optional

import numpy as np

from m2det_impl.backends.base import Backend, Outputs
from m2det_impl.errors import UsageError
from m2det_impl.pipeline.reference_cases import reference_outputs

__all__ = ["SimulatedNpuBackend", "hold_gil_sleep", "DEFAULT_MS_PER_IMAGE", "REFERENCE_SIZE"]

DEFAULT_MS_PER_IMAGE = 15.0  # a 310P3 at about 66 images/s (batch 4: 60 ms per batch)
REFERENCE_SIZE = 512  # the reference cases are M2Det512 outputs (32760 priors, 81 classes)

_LIBC = None


def hold_gil_sleep(seconds: float) -> None:
    """Sleep ``seconds`` without releasing the GIL (as aclruntime's ``run``
    blocks): no other thread of this process runs Python meanwhile."""
    global _LIBC
    if _LIBC is None:
        _LIBC = ctypes.PyDLL(None)  # PyDLL: the GIL is held across foreign calls
        _LIBC.usleep.argtypes = [ctypes.c_uint]
    micros = int(round(seconds * 1e6))
    while micros > 0:
        step = min(micros, 900_000)  # POSIX usleep takes < 1 s
        _LIBC.usleep(step)
        micros -= step


class SimulatedNpuBackend(Backend):
    """Holds the GIL ``ms_per_image`` per image, then returns reference-shaped outputs."""

    name = "simulated-npu"
    execute_clock = "simulated: ms_per_image times the chunk's images (the GIL held meanwhile)"
    holds_gil = True

    def __init__(self, ms_per_image: float = DEFAULT_MS_PER_IMAGE, input_size: Optional[int] = None):
        if not ms_per_image >= 0:
            raise UsageError(f"simulated time per image must be >= 0 ms, got {ms_per_image}")
        if input_size is not None and input_size != REFERENCE_SIZE:
            raise UsageError(f"simulated-npu replays M2Det{REFERENCE_SIZE} outputs: use --size {REFERENCE_SIZE}, "
                             f"not {input_size}")
        self.ms_per_image = float(ms_per_image)
        self.input_size = REFERENCE_SIZE
        self.source = f"simulated 310P, {self.ms_per_image:g} ms per image"
        self._cases = reference_outputs()
        self._batches: Dict[int, Outputs] = {}
        self._last_images = 0

    def _outputs(self, n: int) -> Outputs:
        """The batch of ``n`` outputs, built once per size (a device's output
        buffers exist before the run; the copy out of them is the caller's)."""
        if n not in self._batches:
            picks = [self._cases[i % len(self._cases)] for i in range(n)]
            scores = np.stack([s for s, _ in picks])
            loc = np.stack([box for _, box in picks])
            scores.flags.writeable = False
            loc.flags.writeable = False
            self._batches[n] = (scores, loc)
        return self._batches[n]

    def _run(self, chunk: np.ndarray) -> Outputs:
        n = int(chunk.shape[0])
        outputs = self._outputs(n)
        self._last_images = n
        hold_gil_sleep(self.ms_per_image * n / 1000.0)
        return outputs

    def _execute_ms(self, wall_ms: float) -> float:
        return self.ms_per_image * self._last_images
