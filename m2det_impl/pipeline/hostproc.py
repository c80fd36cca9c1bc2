"""Host work in worker processes, for runtimes that keep the GIL while the model runs.

aclruntime's ``run`` does not release the GIL, so while an Ascend NPU executes
a batch no other thread of the calling process runs Python: decoding,
post-processing and COCO formatting in threads (``host="threads"`` of
:func:`m2det_impl.pipeline.stream.run_pipeline`) wait for the device instead
of overlapping it. :class:`HostProcesses` moves that work out of the
process's GIL:

- decode workers (processes) read and preprocess images straight into a
  shared-memory ring of input batches, ``[slots, B, 3, S, S]`` float32; the
  backend reads its batch from there, no copy;
- one ship thread in the calling process copies each batch's outputs into a
  shared-memory ring of output slots, in one numba ``nogil`` call that runs
  while the next batch is on the device (a thread may run C without the GIL);
- post workers (processes) decode boxes, run soft-NMS and format the COCO
  results of a slot, and send the result dicts back.

The calling thread only feeds the backend and records results, in batch order,
so results, journal and resume are those of the thread mode. Messages go over
one pipe per worker (no feeder threads in the calling process: they would need
the GIL too). Workers are fresh interpreters (``python -c``: nothing of the
backend's runtime is inherited, and unlike multiprocessing's ``spawn`` the
caller's ``__main__`` is not re-imported) and are kept:
:func:`shared_host_processes` starts them once per process (a second or two
on two cores) and every later run reuses them. A worker that dies is noticed
when its pipe closes: a decode worker's current
image becomes an unreadable image (one line naming the file; ``skip_bad``
records it) and the worker is restarted; a post worker's death fails the run
naming the batch's files.
"""

from __future__ import annotations

import atexit
import os
import pickle
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from multiprocessing import connection as mp_connection
from multiprocessing import shared_memory
from pathlib import Path
from typing import Callable, Deque, Dict, List, Optional, Sequence, Tuple

import numpy as np
from numba import njit

from m2det_impl.errors import InputFileError, M2DetError
from m2det_impl.network.config import M2DetConfig

__all__ = [
    "HostProcesses",
    "HostWorkerError",
    "shared_host_processes",
    "running_host_processes",
    "close_shared_host_processes",
    "INPUT_SLOTS",
    "OUTPUT_SLOTS",
]

INPUT_SLOTS = 3  # input batches in flight: one on the device, two being decoded
OUTPUT_SLOTS = 4  # output batches in flight: copying, waiting, post-processing
START_TIMEOUT_S = 300.0
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


class HostWorkerError(M2DetError, RuntimeError):
    """A host worker process died while post-processing (a bug or the OOM killer), or would not start."""


def _describe_exit(code: Optional[int]) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


@njit(nogil=True, cache=True)
def _copy_pair(dst_a, src_a, dst_b, src_b):  # pragma: no cover - compiled
    for i in range(src_a.shape[0]):
        dst_a[i] = src_a[i]
    for i in range(src_b.shape[0]):
        dst_b[i] = src_b[i]


# ------------------------------------------------------------------ worker side
def _attach(desc, attached: Dict[str, shared_memory.SharedMemory]) -> np.ndarray:
    name, shape = desc
    if name not in attached:
        attached[name] = shared_memory.SharedMemory(name=name)
    return np.ndarray(shape, np.float32, buffer=attached[name].buf)


def _worker_main(conn, kind: str, decode_fn: Callable) -> None:
    """A worker's loop: ``("setup", state)``, ``("decode", gen, task, path, slot, row)``,
    ``("post", gen, k, slot, items)``, ``("stop",)``. Exits when the caller goes."""
    from multiprocessing import resource_tracker

    # the calling process created the segments and unlinks them; a worker only maps them
    resource_tracker.register = lambda *args, **kwargs: None  # type: ignore[assignment]
    resource_tracker.unregister = lambda *args, **kwargs: None  # type: ignore[assignment]
    from m2det_impl.network.priors import make_priors
    from m2det_impl.pipeline.coco import to_coco_results
    from m2det_impl.pipeline.postprocess import detect, warmup

    if kind == "post":
        warmup()
    else:
        import cv2

        cv2.setNumThreads(1)  # the decode workers are the parallelism
    attached: Dict[str, shared_memory.SharedMemory] = {}
    state: dict = {}
    conn.send(("ready", os.getpid()))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            break
        op = msg[0]
        if op == "stop":
            break
        if op == "setup":
            state = dict(msg[1])
            state["in"] = _attach(state["in_desc"], attached)
            if state.get("scores_desc"):
                state["scores"] = _attach(state["scores_desc"], attached)
                state["loc"] = _attach(state["loc_desc"], attached)
            if kind == "post":
                state["priors"] = make_priors(state["cfg"])
            keep = {d[0] for d in (state["in_desc"], state.get("scores_desc"), state.get("loc_desc")) if d}
            for name in [n for n in attached if n not in keep]:
                try:
                    attached.pop(name).close()
                except BufferError:  # pragma: no cover - a view still alive
                    pass
            continue
        try:
            if op == "decode":
                _, gen, task, path, slot, row = msg
                try:
                    tensor, size = decode_fn(path, state["cfg"])
                    state["in"][slot, row] = tensor
                    conn.send(("decoded", gen, task, size, None))
                except InputFileError as exc:
                    conn.send(("decoded", gen, task, None, str(exc)))
            elif op == "post":
                _, gen, k, slot, items = msg
                scores, loc, priors, cfg = state["scores"][slot], state["loc"][slot], state["priors"], state["cfg"]
                entries = []
                for i, (image_id, width, height) in enumerate(items):
                    dets = detect(scores[i], loc[i], priors, width, height, cfg)
                    entries.append((image_id, to_coco_results(dets, image_id, state["category_ids"]), None))
                conn.send(("posted", gen, k, entries))
        except BaseException as exc:  # noqa: BLE001 - a bug: re-raised in the calling process
            try:
                conn.send(("failed", msg[1], exc))
            except Exception:  # noqa: BLE001 - unpicklable: send what it said
                conn.send(("failed", msg[1], RuntimeError(f"{type(exc).__name__}: {exc}")))


def _child_main(fd: int, kind: str) -> None:
    """Entry point of a worker process (``python -c``): ``fd`` is its end of the
    pipe; the first message carries the caller's ``sys.path`` and the pickled ``decode_fn``."""
    import pickle
    import sys

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the calling process's to handle
    conn = mp_connection.Connection(fd)
    _, path, decode_blob = conn.recv()
    sys.path[:] = path
    _worker_main(conn, kind, pickle.loads(decode_blob))


def _default_decode(path, cfg: M2DetConfig):
    from m2det_impl.pipeline.preprocess import load_and_preprocess

    return load_and_preprocess(path, cfg)


# ------------------------------------------------------------------ caller side
class _Worker:
    def __init__(self, process, conn, kind: str):
        self.process = process
        self.conn = conn
        self.kind = kind
        self.outstanding: Deque[tuple] = deque()  # tasks sent, not answered, in order


class _Ring:
    """One shared-memory array ``[slots, *shape]`` float32, created and unlinked here."""

    def __init__(self, slots: int, shape: Tuple[int, ...]):
        self.shape = (slots, *shape)
        nbytes = int(np.prod(self.shape)) * 4
        self.shm = shared_memory.SharedMemory(create=True, size=max(nbytes, 1))
        self.array = np.ndarray(self.shape, np.float32, buffer=self.shm.buf)

    @property
    def desc(self) -> Tuple[str, Tuple[int, ...]]:
        return self.shm.name, self.shape

    def close(self) -> None:
        self.array = None  # type: ignore[assignment]
        try:
            self.shm.close()
        except BufferError:  # pragma: no cover - a caller still holds a view: unlink anyway
            pass
        try:
            self.shm.unlink()
        except FileNotFoundError:  # pragma: no cover
            pass


class HostProcesses:
    """Decode and post-processing worker processes plus their shared-memory rings.

    ``decode_fn(path, cfg) -> (tensor [3, S, S], (width, height))`` must be a
    module-level function (workers are spawned); it raises
    :class:`InputFileError` for an unreadable image. Used by
    :func:`m2det_impl.pipeline.stream.run_pipeline` with ``host="processes"``.
    """

    def __init__(self, decode_workers: int = 2, post_workers: int = 1,
                 decode_fn: Callable = _default_decode):
        self.decode_fn = decode_fn
        self._gen = 0
        self._state: dict = {}
        self._in: Optional[_Ring] = None
        self._scores: Optional[_Ring] = None
        self._loc: Optional[_Ring] = None
        self._free_out: List[int] = []
        self._out_of_batch: Dict[int, int] = {}
        self._events: List[tuple] = []
        self._decode: List[_Worker] = []
        self._post: List[_Worker] = []
        self._next_decode = 0
        self._ship_jobs: "queue.Queue" = queue.Queue()
        self._ship_started = threading.Semaphore(0)
        self._ship_error: Optional[BaseException] = None
        self._ship_lock = threading.Lock()
        self._ship_thread: Optional[threading.Thread] = None
        self.closed = False
        try:
            starting = [self._spawn("decode") for _ in range(max(1, decode_workers))]
            starting += [self._spawn("post") for _ in range(max(1, post_workers))]
            for worker in starting:
                self._await_ready(worker)
                (self._decode if worker.kind == "decode" else self._post).append(worker)
        except BaseException:
            for worker in locals().get("starting", []):
                worker.process.kill()
            raise
        self._ship_thread = threading.Thread(target=self._ship_loop, name="m2det-ship", daemon=True)
        self._ship_thread.start()

    # -- workers
    def _spawn(self, kind: str) -> _Worker:
        # python -c, not multiprocessing's spawn: that re-imports the caller's
        # __main__, which a script without a __main__ guard does not survive
        ours, theirs = socket.socketpair()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([_PACKAGE_ROOT] + [p for p in [env.get("PYTHONPATH")] if p])
        code = "import sys; from m2det_impl.pipeline.hostproc import _child_main; _child_main(int(sys.argv[1]), sys.argv[2])"
        try:
            process = subprocess.Popen([sys.executable, "-c", code, str(theirs.fileno()), kind],
                                       pass_fds=[theirs.fileno()], env=env, stdin=subprocess.DEVNULL,
                                       start_new_session=True)
        finally:
            theirs.close()
        conn = mp_connection.Connection(ours.detach())
        conn.send(("hello", list(sys.path), pickle.dumps(self.decode_fn)))
        return _Worker(process, conn, kind)

    def _await_ready(self, worker: _Worker) -> None:
        if mp_connection.wait([worker.conn], timeout=START_TIMEOUT_S):
            try:
                if worker.conn.recv()[0] == "ready":
                    return
            except (EOFError, OSError):
                pass
        worker.process.kill()
        worker.process.wait(5)
        raise HostWorkerError(f"a {worker.kind} worker process would not start "
                              f"({_describe_exit(worker.process.returncode)})")

    @property
    def pids(self) -> Dict[str, List[int]]:
        """Process ids of the workers, by kind (tests kill them)."""
        return {"decode": [w.process.pid for w in self._decode], "post": [w.process.pid for w in self._post]}

    def _setup_message(self) -> tuple:
        state = dict(self._state)
        state["in_desc"] = self._in.desc if self._in else None
        state["scores_desc"] = self._scores.desc if self._scores else None
        state["loc_desc"] = self._loc.desc if self._loc else None
        return ("setup", state)

    def _broadcast_setup(self) -> None:
        msg = self._setup_message()
        for worker in self._decode + self._post:
            worker.conn.send(msg)

    # -- one run
    def begin(self, cfg: M2DetConfig, category_ids: Sequence[int], batch_size: int) -> None:
        """Set up a run: rings sized for ``batch_size`` (kept across runs of the same shapes)."""
        if self.closed:
            raise HostWorkerError("the host worker processes are closed")
        if self._ship_error is not None:
            raise HostWorkerError(f"the output copy thread failed earlier ({self._ship_error})")
        self._gen += 1
        self._events = []
        shape = (batch_size, 3, cfg.size, cfg.size)
        if self._in is None or self._in.shape[1:] != shape:
            if self._in is not None:
                self._in.close()
            self._in = _Ring(INPUT_SLOTS, shape)
        if self._scores is not None and self._scores.shape[1] != batch_size:
            self._drop_output_rings()
        self._free_out = list(range(OUTPUT_SLOTS)) if self._scores is not None else []
        self._out_of_batch = {}
        self._state = {"cfg": cfg, "category_ids": [int(c) for c in category_ids]}
        self._broadcast_setup()

    def _drop_output_rings(self) -> None:
        for ring in (self._scores, self._loc):
            if ring is not None:
                ring.close()
        self._scores = self._loc = None
        self._free_out = []

    def input_batch(self, slot: int, n: int) -> np.ndarray:
        """Input slot ``slot``'s first ``n`` rows: the batch the decode workers wrote."""
        return self._in.array[slot, :n]

    def submit_decode(self, task, path, slot: int, row: int) -> None:
        worker = self._decode[self._next_decode % len(self._decode)]
        self._next_decode += 1
        msg = ("decode", self._gen, task, str(path), slot, row)
        worker.outstanding.append(msg)
        worker.conn.send(msg)

    def ship(self, k: int, scores: np.ndarray, loc: np.ndarray, items: List[tuple], files: List[str]) -> None:
        """Copy batch ``k``'s outputs into a free output slot (without the GIL,
        overlapping the next ``backend.infer``) and have a post worker turn
        ``items`` ``[(image_id, width, height)]`` into COCO results; the answer
        comes back from :meth:`poll` as ``("posted", k, entries)``."""
        n = scores.shape[0]
        if (self._scores is None or self._scores.shape[2:] != scores.shape[1:]
                or self._loc.shape[2:] != loc.shape[1:] or self._scores.shape[1] < n):
            self._drop_output_rings()
            rows = max(n, self._in.shape[1])
            self._scores = _Ring(OUTPUT_SLOTS, (rows, *scores.shape[1:]))
            self._loc = _Ring(OUTPUT_SLOTS, (rows, *loc.shape[1:]))
            self._free_out = list(range(OUTPUT_SLOTS))
            self._broadcast_setup()
        while not self._free_out:
            self._read(None)
        slot = self._free_out.pop(0)
        self._out_of_batch[k] = slot
        self._ship_jobs.put((self._gen, k, slot, np.ascontiguousarray(scores, np.float32),
                             np.ascontiguousarray(loc, np.float32), items, files))
        self._ship_started.acquire()  # the copy has begun (and let go of the GIL)
        if self._ship_error is not None:
            raise HostWorkerError(f"copying the outputs of batch {k} failed: {self._ship_error}")

    def _ship_loop(self) -> None:
        while True:
            job = self._ship_jobs.get()
            if job is None:
                return
            if isinstance(job, threading.Event):  # abandon(): every job before it is done
                job.set()
                continue
            gen, k, slot, scores, loc, items, files = job
            try:
                n = scores.shape[0]
                dst_s = self._scores.array[slot, :n].reshape(-1)
                dst_l = self._loc.array[slot, :n].reshape(-1)
                src_s, src_l = scores.reshape(-1), loc.reshape(-1)
            except BaseException as exc:  # noqa: BLE001
                self._ship_error = exc
                self._ship_started.release()
                continue
            self._ship_started.release()
            try:
                _copy_pair(dst_s, src_s, dst_l, src_l)  # nogil: overlaps the caller's next infer
                del dst_s, dst_l, src_s, src_l, scores, loc
                with self._ship_lock:
                    worker = self._post[k % len(self._post)]
                    msg = ("post", gen, k, slot, items)
                    worker.outstanding.append(msg + (files,))
                    try:
                        worker.conn.send(msg)
                    except OSError:
                        pass  # the worker is gone: the caller notices its pipe closed and names the batch
            except BaseException as exc:  # noqa: BLE001
                self._ship_error = exc

    def poll(self, timeout: Optional[float] = 0) -> List[tuple]:
        """Answers so far: ``("decoded", task, (width, height) | None, error | None)``
        and ``("posted", k, entries)``; waits up to ``timeout`` (``None``: until one)."""
        if not self._events:
            self._read(timeout)
        events, self._events = self._events, []
        return events

    def _read(self, timeout: Optional[float]) -> None:
        while True:
            if self._ship_error is not None:
                raise HostWorkerError(f"copying outputs to the post-processing workers failed: {self._ship_error}")
            workers = self._decode + self._post
            # short waits in a loop: the ship thread may hand a post worker its task meanwhile
            ready = mp_connection.wait([w.conn for w in workers], timeout=timeout if timeout is not None else 0.05)
            for worker in list(workers):
                if worker.conn in ready and not self._receive(worker):
                    self._worker_died(worker)
            if timeout is not None or self._events:
                return

    def _receive(self, worker: _Worker) -> bool:
        """Take what ``worker`` sent; False when it is gone (its pipe closed)."""
        while True:
            try:
                if not worker.conn.poll(0):
                    return True
                msg = worker.conn.recv()
            except (EOFError, OSError):
                return False
            if worker.outstanding:
                worker.outstanding.popleft()
            if msg[0] == "failed":
                if msg[1] == self._gen:
                    raise msg[2]
                continue
            if msg[1] != self._gen:
                continue  # an answer from an abandoned run
            if msg[0] == "decoded":
                self._events.append(("decoded", msg[2], msg[3], msg[4]))
            elif msg[0] == "posted":
                slot = self._out_of_batch.pop(msg[2], None)
                if slot is not None:
                    self._free_out.append(slot)
                self._events.append(("posted", msg[2], msg[3]))

    def _worker_died(self, worker: _Worker) -> None:
        try:
            worker.process.wait(10)
        except subprocess.TimeoutExpired:  # pragma: no cover - closed its pipe but lives on
            worker.process.kill()
            worker.process.wait(5)
        why = _describe_exit(worker.process.returncode)
        lost = list(worker.outstanding)
        worker.conn.close()
        if worker.kind == "post":
            self._post.remove(worker)
            current = [m for m in lost if m[1] == self._gen]
            files = current[0][-1] if current else []
            self.close()
            raise HostWorkerError(f"the post-processing worker process died ({why}) on "
                                  + (", ".join(str(f) for f in files) or "no batch")
                                  + "; the images journaled before are kept: run the same command again to resume")
        self._decode.remove(worker)
        replacement = self._spawn("decode")
        self._await_ready(replacement)
        replacement.conn.send(self._setup_message())
        self._decode.append(replacement)
        current = [m for m in lost if m[1] == self._gen]
        if current:
            _, _, task, path, _, _ = current[0]
            self._events.append(("decoded", task, None,
                                 str(InputFileError(path, f"decoding this image crashed its worker process ({why})"))))
            for msg in current[1:]:
                replacement.outstanding.append(msg)
                replacement.conn.send(msg)

    def abandon(self, timeout: float = 60.0) -> None:
        """After a run that stopped early (an unreadable image, Ctrl-C): let
        the tasks it left finish, so that none writes into a slot of the next
        run; workers that do not finish in ``timeout`` seconds are stopped."""
        if self.closed:
            return
        try:
            flushed = threading.Event()
            self._ship_jobs.put(flushed)
            deadline = time.monotonic() + timeout
            if not flushed.wait(timeout):
                raise TimeoutError
            self._gen += 1  # what is still answered belongs to no run
            while any(w.outstanding for w in self._decode + self._post):
                if time.monotonic() > deadline:
                    raise TimeoutError
                self._read(0.05)
            self._events = []
        except BaseException:  # noqa: BLE001 - a dead or stuck worker: start afresh next time
            self.close()

    def close(self) -> None:
        """Stop the workers and free the shared memory."""
        if self.closed:
            return
        self.closed = True
        if self._ship_thread is not None:
            self._ship_jobs.put(None)
            self._ship_thread.join(10)
        for worker in self._decode + self._post:
            try:
                worker.conn.send(("stop",))
            except (OSError, ValueError):
                pass
        for worker in self._decode + self._post:
            try:
                worker.process.wait(2)
            except subprocess.TimeoutExpired:
                worker.process.kill()
                worker.process.wait(2)
            try:
                worker.conn.close()
            except OSError:  # pragma: no cover
                pass
        self._decode, self._post = [], []
        for ring in (self._in, self._scores, self._loc):
            if ring is not None:
                ring.close()
        self._in = self._scores = self._loc = None

    def __enter__(self) -> "HostProcesses":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_SHARED: Dict[Tuple[int, int], HostProcesses] = {}


def shared_host_processes(decode_workers: int = 2, post_workers: int = 1) -> HostProcesses:
    """The process's host workers for these counts, started on first use and kept."""
    key = (max(1, decode_workers), max(1, post_workers))
    pool = _SHARED.get(key)
    if pool is None or pool.closed:
        close_shared_host_processes()  # one set of workers at a time: two cores do not take more
        pool = _SHARED[key] = HostProcesses(*key)
    return pool


def running_host_processes(decode_workers: int = 2, post_workers: int = 1) -> bool:
    """Whether :func:`shared_host_processes` would return workers already started."""
    pool = _SHARED.get((max(1, decode_workers), max(1, post_workers)))
    return pool is not None and not pool.closed


@atexit.register
def close_shared_host_processes() -> None:
    """Stop the shared workers (at exit, or to start afresh)."""
    while _SHARED:
        _, pool = _SHARED.popitem()
        pool.close()
