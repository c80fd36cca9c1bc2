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
- a copy thread in the calling process that never takes the GIL
  (:mod:`m2det_impl.pipeline.copier`) copies each batch's outputs into a
  shared-memory ring of output slots while the next batch is on the device;
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
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from multiprocessing import connection as mp_connection
from multiprocessing import shared_memory
from pathlib import Path
from typing import Callable, Deque, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from m2det_impl.errors import InputFileError, M2DetError
from m2det_impl.network.config import M2DetConfig
from m2det_impl.pipeline.copier import Copier, background_priority, read_notice

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


# ------------------------------------------------------------------ worker side
def _attach(desc, attached: Dict[str, shared_memory.SharedMemory]) -> np.ndarray:
    name, shape = desc
    if name not in attached:
        attached[name] = shared_memory.SharedMemory(name=name)
    return np.ndarray(shape, np.float32, buffer=attached[name].buf)



# ------------------------------------------------------------------ the messages on a worker's pipe
# Named tuples: pickled as small as the plain tuples they replace (one per batch, not per pixel), and read
# by field name on both sides, so a message's layout is written down once.
class Hello(NamedTuple):
    """Caller -> new worker, first: the caller's ``sys.path`` and the pickled decode function."""
    path: List[str]
    decode_blob: bytes


class Ready(NamedTuple):
    """New worker -> caller: set up and waiting."""
    pid: int


class Setup(NamedTuple):
    """Caller -> worker: the run's state (config, ring descriptors, journal, categories)."""
    state: dict


class DecodeTasks(NamedTuple):
    """Caller -> decode worker: ``tasks`` ``[(task, path, slot, row), ...]``, one answer each."""
    gen: int
    tasks: List[tuple]


class PostBatch(NamedTuple):
    """Caller -> post worker: batch ``k``'s detections from output ``slot`` once copy ``sequence`` is done."""
    gen: int
    k: int
    slot: Optional[int]
    sequence: Optional[int]
    items: List[tuple]  # (image_id, width, height)
    unreadable: List[tuple]  # (image_id, None, reason)


class Stop(NamedTuple):
    """Caller -> worker: exit."""


class Decoded(NamedTuple):
    """Decode worker -> caller: one task done (``size``) or refused (``error``, one line)."""
    gen: int
    task: object
    size: Optional[Tuple[int, int]]
    error: Optional[str]


class Posted(NamedTuple):
    """Post worker -> caller: batch ``k``'s entries ``(image_id, detections | None, reason | None)``."""
    gen: int
    k: int
    entries: list


class AppendFailed(NamedTuple):
    """Post worker -> caller: the journal append of batch ``k`` failed (its copy is done all the same)."""
    gen: int
    k: int
    errno: Optional[int]
    strerror: str


class Failed(NamedTuple):
    """Worker -> caller: a bug (an exception) while working for run ``gen``; re-raised by the caller."""
    gen: int
    error: BaseException


def _worker_main(conn, kind: str, decode_fn: Callable, notice_fd: int = -1) -> None:
    """A worker's loop: ``("setup", state)``, ``("decode", gen, [(task, path,
    slot, row), ...])`` (one answer per task), ``("post", gen, k, slot,
    sequence, items, unreadable)``, ``("stop",)``. Exits when the caller goes."""
    from multiprocessing import resource_tracker

    # the calling process created the segments and unlinks them; a worker only maps them
    resource_tracker.register = lambda *args, **kwargs: None  # type: ignore[assignment]
    resource_tracker.unregister = lambda *args, **kwargs: None  # type: ignore[assignment]
    from m2det_impl.network.priors import make_priors
    from m2det_impl.pipeline.postprocess import warmup

    if kind == "post":
        warmup()
    else:
        import cv2

        cv2.setNumThreads(1)  # the decode workers are the parallelism
    attached: Dict[str, shared_memory.SharedMemory] = {}
    state: dict = {}
    conn.send(Ready(os.getpid()))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            break
        if isinstance(msg, Stop):
            break
        if isinstance(msg, Setup):
            state = dict(msg.state)
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
        elif isinstance(msg, DecodeTasks):
            for task in msg.tasks:
                _decode_one(conn, state, decode_fn, msg.gen, *task)
        elif isinstance(msg, PostBatch):
            try:
                if not _post_batch(conn, state, notice_fd, msg):
                    break  # the caller is gone
            except BaseException as exc:  # noqa: BLE001 - a bug: re-raised in the calling process
                _send_failure(conn, msg.gen, exc)


def _send_failure(conn, gen: int, exc: BaseException) -> None:
    try:
        conn.send(Failed(gen, exc))
    except Exception:  # noqa: BLE001 - unpicklable: send what it said
        conn.send(Failed(gen, RuntimeError(f"{type(exc).__name__}: {exc}")))


def _decode_one(conn, state: dict, decode_fn: Callable, gen: int, task, path: str, slot: int, row: int) -> None:
    """Decode one image into its input slot and answer for it (every task gets one answer)."""
    try:
        tensor, size = decode_fn(path, state["cfg"])
        state["in"][slot, row] = tensor
        conn.send(Decoded(gen, task, size, None))
    except InputFileError as exc:
        conn.send(Decoded(gen, task, None, str(exc)))
    except BaseException as exc:  # noqa: BLE001 - a bug: re-raised in the calling process
        _send_failure(conn, gen, exc)


def _post_batch(conn, state: dict, notice_fd: int, msg: PostBatch) -> bool:
    """Detections of batch ``msg.k`` (once its copy is done), journaled when the run
    has a journal, sent back; False when the calling process is gone."""
    gen, k, slot, sequence, items, unreadable = msg
    from m2det_impl.pipeline.coco import to_coco_results
    from m2det_impl.pipeline.journal import append_to_journal, encode_entries
    from m2det_impl.pipeline.postprocess import detect

    if sequence is not None and not _await_copy(notice_fd, sequence):
        return False
    entries = [(image_id, detect(state["scores"][slot][i], state["loc"][slot][i], state["priors"],
                                 width, height, state["cfg"]), None)
               for i, (image_id, width, height) in enumerate(items)] + list(unreadable)
    if state.get("journal"):
        cats = state["category_ids"]
        lines = encode_entries([(image_id, None if dets is None else to_coco_results(dets, image_id, cats), reason)
                                for image_id, dets, reason in entries])
        try:
            append_to_journal(state["journal"], lines)
        except OSError as exc:
            conn.send(AppendFailed(gen, k, exc.errno, exc.strerror or str(exc)))
            return True
    conn.send(Posted(gen, k, entries))
    return True


def _await_copy(notice_fd: int, sequence: int) -> bool:
    """Block until the copy thread's notice of ``sequence`` (notices come in
    order); False when the calling process is gone."""
    while True:
        done = read_notice(notice_fd)
        if done is None:
            return False
        if done == sequence:
            return True
        if done > sequence:
            raise RuntimeError(f"output copy notices out of order: {done} before {sequence}")


def _child_main(fd: int, kind: str, notice_fd: int = -1) -> None:
    """Entry point of a worker process (``python -c``): ``fd`` is its end of the
    pipe (``notice_fd``, a post worker's, the copy thread's notices); the first
    message carries the caller's ``sys.path`` and the pickled ``decode_fn``."""
    import pickle
    import sys

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the calling process's to handle
    background_priority()
    conn = mp_connection.Connection(fd)
    hello: Hello = conn.recv()
    sys.path[:] = hello.path
    _worker_main(conn, kind, pickle.loads(hello.decode_blob), notice_fd)


def _default_decode(path, cfg: M2DetConfig):
    from m2det_impl.pipeline.preprocess import load_and_preprocess

    return load_and_preprocess(path, cfg)


# ------------------------------------------------------------------ caller side
class _Sent(NamedTuple):
    """What a worker was sent and has not answered yet: the run, what to name if it dies on it (an image's
    path, a batch's files), and the message itself."""
    gen: int
    what: object
    message: tuple


class _Worker:
    def __init__(self, process, conn, kind: str, notice_fd: int = -1):
        self.process = process
        self.conn = conn
        self.kind = kind
        self.notice_fd = notice_fd  # a post worker's: the copy thread writes its notices here
        self.outstanding: Deque[_Sent] = deque()  # tasks sent, not answered, in order

    def close(self) -> None:
        """Close its pipe and, for a post worker, the write end of its notice pipe."""
        try:
            self.conn.close()
        except OSError:  # pragma: no cover
            pass
        if self.notice_fd >= 0:
            try:
                os.close(self.notice_fd)
            except OSError:  # pragma: no cover
                pass
            self.notice_fd = -1


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
        self._sequence = 0  # copies queued, over the pool's life
        self._sources: Dict[int, tuple] = {}  # batch -> (sequence, scores, loc), alive until copied
        self._copier: Optional[Copier] = None
        self.closed = False
        starting: List[_Worker] = []  # every worker spawned so far: a failure part-way kills exactly these
        try:
            for kind, count in (("decode", decode_workers), ("post", post_workers)):
                for _ in range(max(1, count)):
                    starting.append(self._spawn(kind))
            for worker in starting:
                self._await_ready(worker)
                (self._decode if worker.kind == "decode" else self._post).append(worker)
            self._copier = Copier(OUTPUT_SLOTS)
        except BaseException:
            for worker in starting:
                worker.process.kill()
                worker.close()
            raise

    # -- workers
    def _spawn(self, kind: str) -> _Worker:
        # python -c, not multiprocessing's spawn: that re-imports the caller's
        # __main__, which a script without a __main__ guard does not survive
        ours, theirs = socket.socketpair()
        notice_r, notice_w = os.pipe() if kind == "post" else (-1, -1)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([_PACKAGE_ROOT] + [p for p in [env.get("PYTHONPATH")] if p])
        code = ("import sys; from m2det_impl.pipeline.hostproc import _child_main; "
                "_child_main(int(sys.argv[1]), sys.argv[2], int(sys.argv[3]))")
        try:
            process = subprocess.Popen([sys.executable, "-c", code, str(theirs.fileno()), kind, str(notice_r)],
                                       pass_fds=[fd for fd in (theirs.fileno(), notice_r) if fd >= 0], env=env,
                                       stdin=subprocess.DEVNULL, process_group=0)
        except BaseException:
            ours.close()
            if notice_w >= 0:
                os.close(notice_w)
            raise
        finally:
            theirs.close()
            if notice_r >= 0:
                os.close(notice_r)
        conn = mp_connection.Connection(ours.detach())
        conn.send(Hello(list(sys.path), pickle.dumps(self.decode_fn)))
        return _Worker(process, conn, kind, notice_w)

    def _await_ready(self, worker: _Worker) -> None:
        if mp_connection.wait([worker.conn], timeout=START_TIMEOUT_S):
            try:
                if isinstance(worker.conn.recv(), Ready):
                    return
            except (EOFError, OSError):
                pass
        worker.process.kill()
        worker.process.wait(5)
        worker.close()
        raise HostWorkerError(f"a {worker.kind} worker process would not start "
                              f"({_describe_exit(worker.process.returncode)})")

    @property
    def pids(self) -> Dict[str, List[int]]:
        """Process ids of the workers, by kind (tests kill them)."""
        return {"decode": [w.process.pid for w in self._decode], "post": [w.process.pid for w in self._post]}

    def _setup_message(self) -> Setup:
        state = dict(self._state)
        state["in_desc"] = self._in.desc if self._in else None
        state["scores_desc"] = self._scores.desc if self._scores else None
        state["loc_desc"] = self._loc.desc if self._loc else None
        return Setup(state)

    def _broadcast_setup(self) -> None:
        msg = self._setup_message()
        for worker in self._decode + self._post:
            worker.conn.send(msg)

    # -- one run
    def begin(self, cfg: M2DetConfig, category_ids: Sequence[int], batch_size: int,
              journal: Optional[Path] = None) -> None:
        """Set up a run: rings sized for ``batch_size`` (kept across runs of the
        same shapes); with ``journal``, the post workers append each batch's
        lines to it (:func:`~m2det_impl.pipeline.journal.append_to_journal`)
        before they answer, so the calling thread never encodes or fsyncs them."""
        if self.closed:
            raise HostWorkerError("the host worker processes are closed")
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
        self._state = {"cfg": cfg, "category_ids": [int(c) for c in category_ids],
                       "journal": None if journal is None else str(journal)}
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

    def submit_decodes(self, tasks: Sequence[tuple]) -> None:
        """Decode ``[(task, path, slot, row), ...]`` into the input ring, the
        tasks dealt out in turn, one message per worker; each is answered from
        :meth:`poll` as ``("decoded", task, ...)``."""
        shares: Dict[int, list] = {}
        for task, path, slot, row in tasks:
            index = self._next_decode % len(self._decode)
            self._next_decode += 1
            shares.setdefault(index, []).append((task, str(path), slot, row))
        for index, share in shares.items():
            self._send_decodes(self._decode[index], share)

    def _send_decodes(self, worker: _Worker, share: List[tuple]) -> None:
        worker.outstanding.extend(_Sent(self._gen, task[1], task) for task in share)
        worker.conn.send(DecodeTasks(self._gen, share))

    def ship(self, k: int, scores: np.ndarray, loc: np.ndarray, items: List[tuple], files: List[str],
             unreadable: Sequence[tuple] = ()) -> None:
        """Have batch ``k``'s outputs copied into a free output slot (by the
        copy thread, without the GIL, overlapping the next ``backend.infer``)
        and a post worker turn ``items`` ``[(image_id, width, height)]`` into
        detections once the copy is done (and journal them with the batch's
        ``unreadable`` entries ``(image_id, None, reason)``). The answer comes
        back from :meth:`poll` as ``("posted", k, entries)``, an entry
        ``(image_id, dets [N, 6], None)`` per item, then the unreadable ones.
        ``scores`` and ``loc`` are kept alive until then. Nothing here waits
        for the copy."""
        scores = np.ascontiguousarray(scores, np.float32)
        loc = np.ascontiguousarray(loc, np.float32)
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
        worker = self._post[k % len(self._post)]
        self._sequence += 1
        self._sources[k] = (self._sequence, scores, loc)
        try:
            self._copier.copy(slot, self._sequence, (scores, self._scores.array[slot, :n]),
                              (loc, self._loc.array[slot, :n]), worker.notice_fd)
        except RuntimeError as exc:
            raise HostWorkerError(f"copying the outputs of batch {k}: {exc}") from None
        self._post_message(worker, PostBatch(self._gen, k, slot, self._sequence, items, list(unreadable)), files)

    def post_unreadable(self, k: int, unreadable: Sequence[tuple]) -> None:
        """Batch ``k`` had no readable image: journal its entries in turn
        (answered as ``("posted", k, entries)`` like :meth:`ship`)."""
        worker = self._post[k % len(self._post)]
        self._post_message(worker, PostBatch(self._gen, k, None, None, [], list(unreadable)), [])

    @staticmethod
    def _post_message(worker: _Worker, msg: PostBatch, files: List[str]) -> None:
        worker.outstanding.append(_Sent(msg.gen, files, msg))
        try:
            worker.conn.send(msg)
        except OSError:
            pass  # the worker is gone: _read notices its pipe closed and names the batch

    def poll(self, timeout: Optional[float] = 0) -> List[tuple]:
        """Answers so far: ``("decoded", task, (width, height) | None, error | None)``,
        ``("posted", k, entries)`` and ``("append_failed", k, OSError)`` (the
        journal append of batch ``k`` failed); waits up to ``timeout`` (``None``: until one)."""
        if not self._events:
            self._read(timeout)
        events, self._events = self._events, []
        return events

    def _read(self, timeout: Optional[float]) -> None:
        while True:
            workers = self._decode + self._post
            ready = mp_connection.wait([w.conn for w in workers], timeout=timeout)
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
            if isinstance(msg, Failed):
                if msg.gen == self._gen:
                    raise msg.error
                continue
            if msg.gen != self._gen:
                continue  # an answer from an abandoned run
            if isinstance(msg, Decoded):
                self._events.append(("decoded", msg.task, msg.size, msg.error))
            else:  # Posted or AppendFailed: the batch's copy is done, its slot and outputs free
                self._release_outputs(msg.k)
                slot = self._out_of_batch.pop(msg.k, None)
                if slot is not None:
                    self._free_out.append(slot)
                if isinstance(msg, Posted):
                    self._events.append(("posted", msg.k, msg.entries))
                else:
                    self._events.append(("append_failed", msg.k, OSError(msg.errno, msg.strerror)))

    def _release_outputs(self, k: int) -> None:
        """Drop batch ``k``'s outputs, whose copy its post worker has waited
        for. A worker that answered before the copy finished would have it
        read freed memory: that is a bug, reported, never a crash."""
        held = self._sources.get(k)
        if held is None:
            return
        if self._copier.done_sequence < held[0]:
            raise HostWorkerError(f"batch {k} was answered before its outputs were copied (copy "
                                  f"{held[0]}, {self._copier.done_sequence} done): a bug in the post worker")
        del self._sources[k]

    def _worker_died(self, worker: _Worker) -> None:
        try:
            worker.process.wait(10)
        except subprocess.TimeoutExpired:  # pragma: no cover - closed its pipe but lives on
            worker.process.kill()
            worker.process.wait(5)
        why = _describe_exit(worker.process.returncode)
        lost = list(worker.outstanding)
        worker.close()
        if worker.kind == "post":
            self._post.remove(worker)
            current = [m for m in lost if m.gen == self._gen]
            files = current[0].what if current else []
            self.close()
            raise HostWorkerError(f"the post-processing worker process died ({why}) on "
                                  + (", ".join(str(f) for f in files) or "no batch")
                                  + "; the images journaled before are kept: run the same command again to resume")
        self._decode.remove(worker)
        replacement = self._spawn("decode")
        self._await_ready(replacement)
        replacement.conn.send(self._setup_message())
        self._decode.append(replacement)
        current = [m for m in lost if m.gen == self._gen]
        if current:
            task, path = current[0].message[0], current[0].what
            self._events.append(("decoded", task, None,
                                 str(InputFileError(path, f"decoding this image crashed its worker process ({why})"))))
            if current[1:]:
                self._send_decodes(replacement, [m[2:] for m in current[1:]])

    def abandon(self, timeout: float = 60.0) -> None:
        """After a run that stopped early (an unreadable image, Ctrl-C): let
        the tasks it left finish, so that none writes into a slot of the next
        run; workers that do not finish in ``timeout`` seconds are stopped."""
        if self.closed:
            return
        try:
            deadline = time.monotonic() + timeout
            self._gen += 1  # what is still answered belongs to no run
            while any(w.outstanding for w in self._decode + self._post):  # a post answer: its copy is done
                if time.monotonic() > deadline:
                    raise TimeoutError
                self._read(0.05)
            self._events = []
            done = self._copier.done_sequence
            self._sources = {k: held for k, held in self._sources.items() if held[0] > done}
            if self._sources:
                raise HostWorkerError("copies outstanding after every answer came")
        except BaseException:  # noqa: BLE001 - a dead or stuck worker: start afresh next time
            self.close()

    def close(self) -> None:
        """Stop the workers and free the shared memory."""
        if self.closed:
            return
        self.closed = True
        if self._copier is not None:
            self._copier.close()  # every queued copy done: the sources and the rings can go
        self._sources.clear()
        for worker in self._decode + self._post:
            try:
                worker.conn.send(Stop())
            except (OSError, ValueError):
                pass
        for worker in self._decode + self._post:
            try:
                worker.process.wait(2)
            except subprocess.TimeoutExpired:
                worker.process.kill()
                worker.process.wait(2)
            worker.close()
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
