"""Several devices at once: one worker process per device, each on its share of the work.

This is ais_bench's ``--device 0,1,2,3`` (docs/ascend-runtime-notes.md, section 7) for any job:
the caller divides the work, :func:`run_on_devices` starts one fresh
interpreter per device (``python -c``, as the host workers of
:mod:`m2det_impl.pipeline.hostproc`: nothing of the caller's runtime is
inherited, and the caller's ``__main__`` is not re-imported), and each runs
one task function with its share. A task opens its backend, warms it up, then
calls ``ready()``. Every device waits there until all are ready, so that the
timed work of all devices overlaps, as ais_bench's workers wait for each other
after their warm-up. Each worker's log records come back to the caller's
loggers, prefixed with the device. Each task's return value (a small dict)
comes back too.

A failure in one device's task stops all of them. A project error
(:class:`~m2det_impl.errors.M2DetError`) comes back as one, named with the
device; anything else as :class:`DeviceWorkerError`.
"""

from __future__ import annotations

import importlib
import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from multiprocessing import connection as mp_connection
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, TypeVar

from m2det_impl.errors import M2DetError, UsageError
from m2det_impl.logs import ROOT, get_logger

__all__ = ["DeviceTask", "DeviceWorkerError", "check_device_ids", "split_evenly", "run_on_devices"]

logger = get_logger(__name__)

_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])
T = TypeVar("T")


class DeviceWorkerError(M2DetError, RuntimeError):
    """A device's worker process failed on something that is not the user's to fix (a bug, a crash)."""


class DeviceTaskError(M2DetError):
    """A device's task raised a project error: the user's to fix, described in one line."""


def check_device_ids(ids: Sequence[int], items: Optional[int] = None, what: str = "inputs") -> Tuple[int, ...]:
    """``ids`` as a tuple, or :class:`UsageError`: every id a whole number >= 0, no id twice, and (given
    ``items``) no more devices than there are ``what`` to share among them."""
    ids = tuple(ids)
    if not ids:
        raise UsageError("--device-id: no device id given")
    bad = [i for i in ids if isinstance(i, bool) or not isinstance(i, int) or i < 0]
    if bad:
        raise UsageError(f"--device-id {','.join(map(str, ids))}: device ids are whole numbers >= 0, got "
                         f"{', '.join(map(str, bad))}")
    twice = sorted({i for i in ids if ids.count(i) > 1})
    if twice:
        raise UsageError(f"--device-id {','.join(map(str, ids))}: device {', '.join(map(str, twice))} given more "
                         "than once (one worker per device)")
    if items is not None and len(ids) > items:
        raise UsageError(f"--device-id {','.join(map(str, ids))}: {len(ids)} devices for {items} {what}; "
                         f"give at most {items} device(s)")
    return ids


def split_evenly(items: Sequence[T], parts: int) -> List[List[T]]:
    """``items`` in ``parts`` contiguous runs whose lengths differ by at most one, the first ones the longer
    (ait's division of inputs among devices)."""
    if parts < 1:
        raise ValueError("parts must be >= 1")
    size, extra = divmod(len(items), parts)
    runs, start = [], 0
    for i in range(parts):
        end = start + size + (1 if i < extra else 0)
        runs.append(list(items[start:end]))
        start = end
    return runs


@dataclass(frozen=True)
class DeviceTask:
    """One device's share: ``function`` (``"module:name"``, a module-level function taking ``ready`` and
    ``kwargs``) called in a fresh process."""

    device: int
    function: str
    kwargs: Dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------- the worker's side
class _Forward(logging.Handler):
    """Sends the worker's log records to the caller, which logs them through its own handlers."""

    def __init__(self, conn):
        super().__init__()
        self.conn = conn

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.conn.send(("log", record.levelno, record.getMessage()))
        except Exception:  # noqa: BLE001 - the caller is gone: nothing to tell
            pass


def _child_main(fd: int) -> None:
    """Entry point of a device worker (``python -c``): ``fd`` is its end of the pipe; the first message
    carries the caller's ``sys.path``, log level and the pickled task."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the caller's to handle: it stops the workers
    conn = mp_connection.Connection(fd)
    _, path, level, blob = conn.recv()
    sys.path[:] = path
    ROOT.setLevel(level)
    ROOT.addHandler(_Forward(conn))
    task: DeviceTask = pickle.loads(blob)

    def ready() -> None:
        conn.send(("ready",))
        if conn.recv()[0] != "go":  # another device failed before the start
            raise SystemExit(0)

    try:
        module, name = task.function.split(":")
        function: Callable[..., Any] = getattr(importlib.import_module(module), name)
        result = function(ready=ready, **task.kwargs)
    except SystemExit:
        return
    except M2DetError as exc:
        conn.send(("error", True, str(exc)))
        return
    except BaseException as exc:  # noqa: BLE001 - reported to the caller, which decides
        conn.send(("error", False, f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("done", result))


# ----------------------------------------------------------------------------- the caller's side
@dataclass
class _Worker:
    task: DeviceTask
    process: subprocess.Popen
    conn: Any
    ready: bool = False
    done: bool = False
    result: Any = None


def _start(task: DeviceTask) -> _Worker:
    ours, theirs = socket.socketpair()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([_PACKAGE_ROOT] + [p for p in [env.get("PYTHONPATH")] if p])
    code = "import sys; from m2det_impl.workflows.devices import _child_main; _child_main(int(sys.argv[1]))"
    try:
        process = subprocess.Popen([sys.executable, "-c", code, str(theirs.fileno())], pass_fds=[theirs.fileno()],
                                   env=env, stdin=subprocess.DEVNULL)
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()
    conn = mp_connection.Connection(ours.detach())
    conn.send(("task", list(sys.path), logging.getLogger("m2det_impl").getEffectiveLevel(),
               pickle.dumps(task)))
    return _Worker(task, process, conn)


def _stop(workers: Sequence[_Worker]) -> None:
    for w in workers:
        if w.process.poll() is None:
            try:
                w.conn.send(("stop",))
            except OSError:
                pass
    deadline = time.monotonic() + 10.0
    for w in workers:
        try:
            w.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            w.process.kill()
            w.process.wait()
        w.conn.close()


def run_on_devices(tasks: Sequence[DeviceTask]) -> List[Any]:
    """Run every task in its own process at once; their results in task order.

    Raises the first failure (:class:`DeviceTaskError` for a project error,
    :class:`DeviceWorkerError` otherwise), after stopping the other devices."""
    check_device_ids([t.device for t in tasks])
    workers: List[_Worker] = []
    try:
        for task in tasks:
            workers.append(_start(task))
        by_conn = {id(w.conn): w for w in workers}
        started = False
        while not all(w.done for w in workers):
            waiting = [w.conn for w in workers if not w.done]
            for conn in mp_connection.wait(waiting, timeout=1.0):
                worker = by_conn[id(conn)]
                try:
                    message = conn.recv()
                except (EOFError, OSError):
                    code = worker.process.wait()
                    raise DeviceWorkerError(f"device {worker.task.device}: its worker process ended without a "
                                            f"result (exit code {code})") from None
                kind = message[0]
                if kind == "log":
                    logger.log(message[1], f"device {worker.task.device}: {message[2]}")
                elif kind == "ready":
                    worker.ready = True
                elif kind == "done":
                    worker.done, worker.result = True, message[1]
                elif kind == "error":
                    text = f"device {worker.task.device}: {message[2]}"
                    raise DeviceTaskError(text) if message[1] else DeviceWorkerError(text)
            if not started and all(w.ready or w.done for w in workers):
                started = True
                for w in workers:
                    if not w.done:
                        w.conn.send(("go",))
        return [w.result for w in workers]
    finally:
        _stop(workers)
