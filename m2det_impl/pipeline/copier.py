"""A copy thread that never takes the GIL: outputs into shared memory while a GIL-holding runtime runs.

A batch's outputs (about 11 MB per image at 512) must reach the shared-memory
ring the post-processing workers read, and the copy must overlap the next
batch on the device. A Python thread cannot do that with a runtime that keeps
the GIL (aclruntime's ``run``): it needs the GIL to *start* every copy, so the
calling thread has to hand the GIL over and wait for it back before each
batch, and on a busy two-core host that hand-over costs milliseconds per batch
(up to the interpreter's 5 ms switch interval, measured here).

:class:`Copier` instead runs one compiled loop (numba, ``nogil``) for its
whole life: it blocks in ``read(2)`` on a command pipe, copies with
``memcpy(3)`` what the command's row of a shared table describes, and writes
that row's sequence number to the notice pipe the row names (the
post-processing worker waiting for it). The calling thread only fills a row
and writes 8 bytes: it never waits for the copy thread.

The caller keeps each source array alive until the copy is known done
(:attr:`Copier.done_sequence`, which the worker's answer implies: it waits for
the notice), or until :meth:`Copier.close`, which returns after every queued
command is done.
"""

from __future__ import annotations

import ctypes
import os
import signal
import threading
from typing import Optional

import numpy as np
from numba import njit

__all__ = ["Copier", "background_priority", "read_notice", "NOTICE_BYTES"]

NOTICE_BYTES = 8  # one int64: the sequence number of a finished copy
_STOP = -1
_ROW = 8  # source a, destination a, bytes a, source b, destination b, bytes b, notice fd, sequence

_LIBC = ctypes.CDLL(None)
_read = _LIBC.read
_write = _LIBC.write
_memcpy = _LIBC.memcpy
# pointers passed as size_t: the same register on every 64-bit ABI, and numba
# calls a ctypes function with integer arguments without a cast
for _fn in (_read, _write):
    _fn.argtypes = [ctypes.c_int, ctypes.c_size_t, ctypes.c_size_t]
    _fn.restype = ctypes.c_ssize_t
_memcpy.argtypes = [ctypes.c_size_t, ctypes.c_size_t, ctypes.c_size_t]
_memcpy.restype = ctypes.c_size_t


@njit(nogil=True)  # not cached: numba cannot cache a function that calls through ctypes pointers
def _copy_loop(command_fd, ready_fd, table, done):  # pragma: no cover - compiled
    """Say so on ``ready_fd`` (8 bytes: the loop runs, without the GIL), then until a negative
    command or the pipe's end: read a row index, copy its two buffers, record its sequence number
    in ``done[0]`` and send it to its notice fd. Returns 0, or -1 when reading a command failed."""
    word = np.zeros(1, np.int64)
    address = word.ctypes.data
    _write(ready_fd, address, 8)
    while True:
        got = 0
        while got < 8:
            n = _read(command_fd, address + got, 8 - got)
            if n <= 0:
                return 0 if n == 0 else -1
            got += n
        row = word[0]
        if row < 0:
            return 0
        _memcpy(table[row, 1], table[row, 0], table[row, 2])
        _memcpy(table[row, 4], table[row, 3], table[row, 5])
        word[0] = table[row, 7]
        done[0] = word[0]
        _write(table[row, 6], address, 8)  # a worker gone: EPIPE (SIGPIPE is ignored), nothing waits


class Copier:
    """The copy thread and its command table (one row per output slot)."""

    def __init__(self, rows: int):
        self.table = np.zeros((rows, _ROW), np.int64)
        self._done = np.zeros(1, np.int64)
        self.error: Optional[str] = None
        self._command_r, self._command_w = os.pipe()
        ready_r, self._ready_w = os.pipe()
        self._thread = threading.Thread(target=self._main, name="m2det-copy", daemon=True)
        self._thread.start()
        # Back only once the compiled loop runs (it says so itself, the GIL released): an event set
        # in Python before the call would leave a window, the first call's compilation included, in
        # which a caller that then holds the GIL (a GIL-holding runtime) keeps the loop from starting.
        # A thread that fails first closes the pipe instead; copy() reports its error.
        with os.fdopen(ready_r, "rb", buffering=0) as ready:
            got = b""
            while len(got) < 8:
                chunk = ready.read(8 - len(got))
                if not chunk:
                    break
                got += chunk

    def _main(self) -> None:
        # a process-directed signal (Ctrl-C) must not interrupt the loop's read(2)
        signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        background_priority()  # in its scheduling class before the first copy
        try:
            status = _copy_loop(self._command_r, self._ready_w, self.table, self._done)
        except BaseException as exc:  # noqa: BLE001 - reported by the next copy()
            self.error = f"{type(exc).__name__}: {exc}"
            return
        finally:
            os.close(self._ready_w)
        if status < 0:
            self.error = "reading its command pipe failed"

    @property
    def done_sequence(self) -> int:
        """The sequence number of the last copy finished (copies finish in order)."""
        return int(self._done[0])

    @property
    def native_id(self) -> int:
        """The copy thread's kernel id (tests read its scheduling class)."""
        return self._thread.native_id

    def copy(self, row: int, sequence: int, first: tuple, second: tuple, notice_fd: int) -> None:
        """Queue ``dst[...] = src`` for ``first`` and ``second`` (each a
        ``(source, destination)`` pair of C-contiguous arrays of equal byte
        size), then a notice of ``sequence`` to ``notice_fd``. ``row`` must
        not be reused before that notice; the sources must stay alive until it."""
        if self.error is not None or not self._thread.is_alive():
            raise RuntimeError(f"the output copy thread stopped ({self.error or 'it is not running'})")
        cells = []
        for source, destination in (first, second):
            if not (source.flags.c_contiguous and destination.flags.c_contiguous):
                raise ValueError("copy buffers must be C-contiguous")
            if source.nbytes != destination.nbytes:
                raise ValueError(f"copy of {source.nbytes} bytes into {destination.nbytes}")
            cells += [source.ctypes.data, destination.ctypes.data, source.nbytes]
        self.table[row] = cells + [notice_fd, sequence]
        os.write(self._command_w, np.int64(row).tobytes())

    def close(self) -> None:
        """Finish every queued copy, then stop the thread."""
        if self._command_w < 0:
            return
        try:
            os.write(self._command_w, np.int64(_STOP).tobytes())
        except OSError:  # pragma: no cover - the thread is gone already
            pass
        self._thread.join()
        for fd in (self._command_w, self._command_r):
            os.close(fd)
        self._command_w = self._command_r = -1


def background_priority() -> None:
    """Put the calling thread (or a worker process's only thread) in Linux's
    ``SCHED_BATCH`` class: same CPU share as any other, but waking it does not
    preempt the thread that feeds the device.

    Measured on two cores with the GIL-holding simulated 310P: with the host
    work in the default class, each wake-up of a worker or of the copy thread
    (a decode task sent, a copy queued) could take the calling thread's core
    for one scheduler slice, 60 to 150 ms of runqueue wait per 200 images,
    about 3% of the device's time; in ``SCHED_BATCH`` it is under 10 ms. Where
    the class does not exist (macOS) nothing changes."""
    try:
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        pass


def read_notice(fd: int) -> Optional[int]:
    """A worker's side: block until the next notice; ``None`` when the caller is gone."""
    data = b""
    while len(data) < NOTICE_BYTES:
        chunk = os.read(fd, NOTICE_BYTES - len(data))
        if not chunk:
            return None
        data += chunk
    return int(np.frombuffer(data, np.int64)[0])
