"""Ascend offline models (``.om``) through ``ais_bench`` or ``aclruntime``.

Neither runtime is on PyPI (they come with Ascend's ais_bench tool and need
the CANN toolkit and driver), so they are imported only when an ``OmBackend``
is created: the package works without them, and without them the error says
what to install.

Output order is not trusted: ``atc`` orders outputs as the ONNX file did, or
as ``--out_nodes`` said, and the guide's ONNX names are swapped (reference section
9). Outputs are matched to ``scores``/``loc`` by name (the part after the last
``:``, as ``atc`` writes ``node:index:name``) or, failing names, by shape
(``scores`` ends in the class count, ``loc`` in 4), never by position alone.
A name that contradicts its shape is an error, not a guess.

Execute times are the runtime's own (reference section 9): aclruntime times
``aclmdlExecute`` alone and keeps the figures in ``sumary().exec_time_list``
(the session's and the 2023 ``InferSession``'s ``sumary()``, newer ait's
``InferSession.summary()``; entries are milliseconds, or in newer ait
``(start, end)`` pairs), which is what ais_bench's throughput divides by.
As ais_bench does, each session runs one untimed warm-up execute on its first
batch before the timed ones (:attr:`OmBackend.warmup_executes`), and the
host-device copy times come from the runtime's one process-wide
``MemorySummary`` (entries made during this session's timed executes).

The batch is the model's: a static-batch ``.om`` runs its own batch (a
different ``batch_size`` asked for is refused), a dynamic-batch one (input
``shape[0]`` of -1, built with ``atc --dynamic_batch_size``) the asked
``batch_size``, checked by the runtime against the batches it was built with.

Release never ends ACL for the process: ``free_resource()`` where the session
has it (newer ait), else the session is dropped (its destructor unloads the
model). ``finalize()`` (the 2023 tools' per instance, ait's static) calls
``aclFinalize``, after which no session opens again in this process; the
runtime's own singleton finalises ACL at process exit
(docs/ascend-runtime-notes.md, section 6).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple, Union

import numpy as np

from m2det_impl.backends.base import Backend, Outputs
from m2det_impl.errors import BackendUnavailableError, InputFileError, ModelOutputError, UsageError

__all__ = [
    "OmBackend",
    "map_om_outputs",
    "INSTALL_HINT",
]

INSTALL_HINT = (
    "running an .om needs Ascend's Python runtime: install the aclruntime and ais_bench wheels "
    "built by the ais_bench tool (https://gitee.com/ascend/tools, ais-bench_workload/tool/ais_bench) "
    "on a host with an Ascend 310P, its driver and the CANN toolkit (source set_env.sh first)"
)


def _short_name(name: str) -> str:
    return str(name).rsplit(":", 1)[-1]


def _describe(metas: Sequence[Tuple[str, Sequence[int]]]) -> str:
    return ", ".join(f"{n}{list(s)}" for n, s in metas)


def map_om_outputs(metas: Sequence[Tuple[str, Sequence[int]]], num_classes: int,
                   source: str = "<om>") -> Tuple[int, int]:
    """Indices ``(scores, loc)`` among the model outputs ``[(name, shape), ...]``.

    By name when the outputs are called ``scores`` and ``loc`` (after the last
    ``:``), checked against their shapes; otherwise by shape, when exactly one
    output ends in ``num_classes`` and exactly one in 4. Raises
    :class:`ModelOutputError` naming ``source`` and what it found otherwise.
    """
    found = _describe(metas)
    short = [_short_name(n) for n, _ in metas]
    last = [int(s[-1]) if len(s) else None for _, s in metas]
    if num_classes == 4:
        raise ModelOutputError(f"{source}: with 4 classes scores and loc cannot be told apart by shape")
    if short.count("scores") == 1 and short.count("loc") == 1:
        si, li = short.index("scores"), short.index("loc")
        if last[si] != num_classes or last[li] != 4:
            raise ModelOutputError(
                f"{source}: outputs [{found}]: the one named 'scores' should end in {num_classes} and "
                f"'loc' in 4; names and shapes disagree (the guide's exporter swaps these names: "
                "re-export with m2det export and rebuild the .om)"
            )
        return si, li
    by_classes = [i for i, d in enumerate(last) if d == num_classes]
    by_four = [i for i, d in enumerate(last) if d == 4]
    if len(by_classes) == 1 and len(by_four) == 1:
        return by_classes[0], by_four[0]
    raise ModelOutputError(
        f"{source}: cannot tell scores from loc among outputs [{found}]: expected outputs named "
        f"'scores'/'loc', or exactly one ending in {num_classes} (scores) and one ending in 4 (loc)"
    )


def _exec_ms(entry: Any) -> float:
    """One ``exec_time_list`` entry in ms: a float (2023 tools) or a ``(start, end)`` pair (newer ait)."""
    if isinstance(entry, (tuple, list)):
        if len(entry) != 2:
            raise ModelOutputError(f"unexpected exec_time_list entry {entry!r}: expected ms or (start, end)")
        return float(entry[1]) - float(entry[0])
    return float(entry)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


class _Runner:
    """What both runtimes share: the runtime's own execute and copy times, the dynamic batch, the release."""

    kind = "?"
    session: Any = None
    memory: Any = None  # aclruntime.MemorySummary (process-wide), or None where the binding has none
    _seen = 0
    _copies_seen = (0, 0)
    dynamic = False

    def _open_memory(self, aclruntime: Any) -> None:
        summary = getattr(aclruntime, "MemorySummary", None) if aclruntime is not None else None
        self.memory = summary() if callable(summary) else None

    def set_batch(self, batch: int) -> None:
        """A dynamic-batch model's batch for the runs that follow (validated by the runtime)."""
        self.session.set_dynamic_batchsize(int(batch))
        self.dynamic = True

    def _copy_lists(self) -> Tuple[list, list]:
        if self.memory is None:
            return [], []
        return list(self.memory.H2D_time_list), list(self.memory.D2H_time_list)

    def mark(self) -> None:
        """Forget every execute and copy time so far (after the warm-up), as ais_bench's reset does; by
        position, not by ``reset()``: ``MemorySummary`` is the whole process's."""
        summary = self._summary()
        self._seen = len(list(summary.exec_time_list)) if summary is not None else 0
        h2d, d2h = self._copy_lists()
        self._copies_seen = (len(h2d), len(d2h))

    def new_copies_ms(self) -> Tuple[List[float], List[float]]:
        """(H2D ms, D2H ms) of the copies since the last call; empty where the runtime keeps none."""
        h2d, d2h = self._copy_lists()
        seen_h, seen_d = self._copies_seen
        if len(h2d) < seen_h or len(d2h) < seen_d:  # MemorySummary().reset() behind our back
            seen_h = seen_d = 0
        self._copies_seen = (len(h2d), len(d2h))
        return [float(t) for t in h2d[seen_h:]], [float(t) for t in d2h[seen_d:]]

    def _summary(self) -> Any:
        """The ``sumary`` object holding ``exec_time_list``, or ``None`` when the runtime keeps none."""
        for name in ("summary", "sumary"):  # newer ait InferSession: summary(); aclruntime and 2023 tools: sumary()
            method = getattr(self.session, name, None)
            if callable(method):
                return method()
        return None

    @property
    def clock(self) -> Optional[str]:
        """How the execute times are taken, or ``None`` when the runtime keeps none."""
        for name in ("summary", "sumary"):
            if callable(getattr(self.session, name, None)):
                return f"{self.kind} execute time (aclmdlExecute only, {name}().exec_time_list)"
        return None

    def new_execute_ms(self) -> Optional[float]:
        """Milliseconds of the executes since the last call (one per run with ``loop`` 1); ``None`` if unknown."""
        summary = self._summary()
        if summary is None:
            return None
        entries = list(summary.exec_time_list)
        if len(entries) < self._seen:  # the list was reset (reset_sumaryinfo) behind our back
            self._seen = 0
        fresh, self._seen = entries[self._seen:], len(entries)
        if not fresh:
            return None
        return sum(_exec_ms(e) for e in fresh)

    def release(self) -> None:
        """``free_resource()`` where the session has it (newer ait), else drop the session, whose destructor
        unloads the model. Never ``finalize()``: it ends ACL for the whole process, for good."""
        session, self.session = self.session, None
        method = getattr(session, "free_resource", None)
        if callable(method):
            method()


class _AisBenchRunner(_Runner):
    """``ais_bench.infer.interface.InferSession``."""

    kind = "ais_bench"

    def __init__(self, interface: Any, path: Path, device_id: int, acl_json: Optional[Path] = None):
        if acl_json is None:
            self.session = interface.InferSession(device_id, str(path))
        else:
            self.session = interface.InferSession(device_id, str(path), acl_json_path=str(acl_json))
        self._open_memory(sys.modules.get("aclruntime"))  # the binding ais_bench itself imported

    def run(self, array: np.ndarray, output_names: List[str]) -> List[np.ndarray]:
        # ait's infer(mode="static") calls set_staticbatch() first, which would undo a dynamic batch; its
        # "dymbatch" sets the batch from the feed; the 2023 infer ignores both modes
        mode = "dymbatch" if self.dynamic else "static"
        return [np.asarray(o) for o in self.session.infer([array], mode=mode)]


class _AclRuntimeRunner(_Runner):
    """The lower-level ``aclruntime`` API (reference section 9)."""

    kind = "aclruntime"

    def __init__(self, aclruntime: Any, path: Path, device_id: int, acl_json: Optional[Path] = None):
        self.acl = aclruntime
        self.device_id = device_id
        options = aclruntime.session_options()  # attributes loop, log_level, acl_json_path
        options.loop = 1  # one execute per run, so one exec_time_list entry per call
        if acl_json is not None:
            options.acl_json_path = str(acl_json)
        self.session = aclruntime.InferenceSession(str(path), device_id, options)
        self._open_memory(aclruntime)

    def run(self, array: np.ndarray, output_names: List[str]) -> List[np.ndarray]:
        tensor = self.acl.Tensor(array)
        tensor.to_device(self.device_id)
        outputs = self.session.run(output_names, [tensor])
        arrays = []
        for out in outputs:
            out.to_host()
            arrays.append(np.array(out))
        return arrays


def _open_runner(path: Path, device_id: int, runtime: Optional[str], acl_json: Optional[Path] = None):
    """The first importable runtime: ais_bench, then aclruntime (or only ``runtime``)."""
    order = [runtime] if runtime else ["ais_bench", "aclruntime"]
    errors = []
    for name in order:
        try:
            if name == "ais_bench":
                from ais_bench.infer import interface  # type: ignore[import-not-found]

                opener: Any = lambda: _AisBenchRunner(interface, path, device_id, acl_json)  # noqa: E731
            elif name == "aclruntime":
                import aclruntime  # type: ignore[import-not-found]

                opener = lambda: _AclRuntimeRunner(aclruntime, path, device_id, acl_json)  # noqa: E731
            else:
                raise UsageError(f"unknown Ascend runtime {name!r}: use 'ais_bench' or 'aclruntime'")
        except ImportError as exc:
            errors.append(f"{name}: {exc}")
            continue
        try:
            return opener()
        except RuntimeError as exc:  # no such device, ACL down, not an .om: the binding raises RuntimeError
            raise BackendUnavailableError(f"{path}: {name} could not open it on device {device_id}: "
                                          f"{_one_line(exc)}") from None
    raise BackendUnavailableError(f"{INSTALL_HINT} ({'; '.join(errors)})")


class OmBackend(Backend):
    """An ``.om`` on Ascend device ``device_id``, run at the model's own batch.

    aclruntime's ``run`` keeps the GIL while the NPU executes (:attr:`holds_gil`).

    ``runtime`` forces ``"ais_bench"`` or ``"aclruntime"``; by default the first
    importable. ``num_classes`` tells the scores output from loc by shape.
    ``batch_size``: for a dynamic-batch model, the batch to run (one it was
    built with); for a static-batch model, ``None`` or its own batch.
    ``acl_json``: an ``acl.json`` for ACL (a layer dump, as ``ais_bench --dump``
    writes it: :mod:`.acl_json`); the session then runs no warm-up execute.
    Inputs are cast to the model's input type (float16 when ``atc`` was told
    so); outputs come back as float32 ``(scores [B,P,C], loc [B,P,4])``.
    """

    warmup_executes = 1  # ais_bench's --warmup_count default: one untimed execute per session

    def __init__(self, path: Union[str, Path], device_id: int = 0, runtime: Optional[str] = None,
                 num_classes: int = 81, batch_size: Optional[int] = None, acl_json: Optional[Path] = None):
        path = Path(path)
        if not path.is_file():
            raise InputFileError(path, ".om model not found")
        self.source = str(path)
        self.device_id = int(device_id)
        self.num_classes = int(num_classes)
        self.runner = _open_runner(path, self.device_id, runtime, acl_json)
        if acl_json is not None:
            # ais_bench --dump runs no warm-up: every execute is dumped, and the first one must be the input's
            self.warmup_executes = 0
        self.acl_json = acl_json
        self.name = "om"
        clock = self.runner.clock
        #: True when :attr:`execute_times_ms` are the runtime's own execute times (what ais_bench divides by).
        self.runtime_timed = clock is not None
        if clock is not None:
            self.execute_clock = clock
        self.holds_gil = True
        #: True for a dynamic-batch model (input batch -1): :meth:`use_batch` switches its batch.
        self.dynamic_batch = False
        try:
            session = self.runner.session
            inputs = list(session.get_inputs())
            outputs = list(session.get_outputs())
            self._bind_input(inputs, batch_size)
            metas = [(o.name, [int(d) for d in o.shape]) for o in outputs]
            self.output_names = [o.name for o in outputs]
            self._scores_index, self._loc_index = map_om_outputs(metas, self.num_classes, self.source)
            self.flat_scores = len(metas[self._scores_index][1]) == 2  # the guide's [B*P, C]
        except BaseException:
            self.close()
            raise

    def _bind_input(self, inputs: list, batch_size: Optional[int]) -> None:
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            found = _describe([(i.name, i.shape) for i in inputs])
            raise ModelOutputError(f"{self.source}: inputs [{found}]; expected one image [B,3,S,S]")
        shape = [int(d) for d in inputs[0].shape]
        self.input_size = shape[2] if shape[2] > 0 else None
        self.input_dtype = np.float16 if "float16" in str(inputs[0].datatype).lower() else np.float32
        if shape[0] > 0:
            if batch_size is not None and int(batch_size) != shape[0]:
                raise UsageError(f"{self.source}: a static batch-{shape[0]} model, asked for batch {batch_size}: "
                                 f"leave --batch-size out (the model's batch is used) or give {shape[0]}")
            self.static_batch = shape[0]
            return
        self.dynamic_batch = True
        if batch_size is None:
            raise UsageError(f"{self.source}: a dynamic-batch model (input {shape}): give --batch-size, one of the "
                             "batches atc built it for (--dynamic_batch_size)")
        self.use_batch(batch_size)

    def use_batch(self, batch_size: int) -> None:
        """Run a dynamic-batch model at ``batch_size`` from now on (the runtime checks it is one the model was
        built for); the next execute is warmed up again, a new batch being cold."""
        if not self.dynamic_batch:
            if int(batch_size) != self.static_batch:
                raise UsageError(f"{self.source}: a static batch-{self.static_batch} model cannot run batch "
                                 f"{batch_size}")
            return
        try:
            self.runner.set_batch(int(batch_size))
        except RuntimeError as exc:
            raise UsageError(f"{self.source}: batch {batch_size} is not one this dynamic-batch model was built for "
                             f"(atc --dynamic_batch_size); the runtime says: {_one_line(exc)}") from None
        self.static_batch = int(batch_size)
        self.__dict__["_warmed"] = False

    def _after_warm_up(self) -> None:
        if self.runner is not None:
            self.runner.mark()

    def _run(self, chunk: np.ndarray) -> Outputs:
        arrays = self.runner.run(chunk.astype(self.input_dtype, copy=False), self.output_names)
        if len(arrays) != len(self.output_names):
            raise ModelOutputError(
                f"{self.source}: the runtime returned {len(arrays)} outputs, the model declares "
                f"{len(self.output_names)}"
            )
        batch = chunk.shape[0]
        scores = arrays[self._scores_index].astype(np.float32, copy=False)
        loc = arrays[self._loc_index].astype(np.float32, copy=False)
        if loc.size % (batch * 4) or scores.size % (batch * self.num_classes):
            raise ModelOutputError(
                f"{self.source}: outputs of {scores.size} and {loc.size} values do not split into "
                f"{batch} images of [P, {self.num_classes}] scores and [P, 4] loc"
            )
        # The guide's scores are [B*P, C]; ours are [B, P, C]: same bytes.
        return scores.reshape(batch, -1, self.num_classes), loc.reshape(batch, -1, 4)

    def _execute_ms(self, wall_ms: float) -> float:
        """The runtime's own execute time of the call just made; NaN (not measured) when it gave none."""
        if self.runner is None or self.runner.clock is None:
            return wall_ms
        measured = self.runner.new_execute_ms()
        h2d, d2h = self.runner.new_copies_ms()
        self.h2d_times_ms.extend(h2d)
        self.d2h_times_ms.extend(d2h)
        return float("nan") if measured is None else measured

    def close(self) -> None:
        runner, self.runner = getattr(self, "runner", None), None
        if runner is not None:
            runner.release()
