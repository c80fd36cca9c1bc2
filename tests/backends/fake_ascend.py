"""A stand-in for Ascend's Python runtimes (``aclruntime`` and ``ais_bench.infer.interface``), for the cpu layer.

NOT a test of a 310P: a fake that behaves as the real bindings do in every
point docs/ascend-runtime-notes.md establishes from their sources (the 2023
tools "T", ``generation="2023"``, and newer ait "A", ``generation="ait"``):

1. the batch is the model's input ``shape[0]``; a dynamic-batch model says
   ``-1``, needs ``set_dynamic_batchsize(n)`` (checked against the batches it
   was built with) before a batch of n, and its ``realsize`` follows n; an
   input whose byte size is not ``realsize`` is refused;
2. the first execute of a session is cold (``cold_ms``), later ones warm
   (``exec_ms``); ``sumary().exec_time_list`` (A: ``(start, end)`` pairs)
   and ``reset_sumaryinfo()``;
3. one process-wide ``MemorySummary()`` with ``H2D_time_list`` and
   ``D2H_time_list``, filled by every copy to and from the device;
4. outputs come back ``[n, P, C]`` / ``[n, P, 4]`` (or the guide's flat
   ``[n*P, C]`` scores), on the device until ``to_host()``;
5. ``finalize()`` (T: per instance; A: static) ends ACL for the whole
   process: every open session dies, and a new one fails, forever;
   ``free_resource()`` (A only) releases one session; dropping a session
   unloads its model;
6. per-device state: a device's executes are serialised (a lock file per
   device when ``log_dir`` is set, so across processes), devices run
   concurrently, ids beyond ``device_count`` fail;
7. every load, execute and release can be logged (``log_dir``) as JSON
   lines with wall-clock times, pid and device, so a test can see what ran
   where, when, and on which images.

The fake model is described by the ``.om`` file itself (JSON written by
:meth:`FakeOm.write`), so a worker process that is handed only the path
builds the same model. Its outputs derive from each image's mean
(:func:`expected_outputs`), so a misplaced row or a leaked padding row shows.

Two ways in:

- :func:`install` puts freshly built modules into ``sys.modules`` of this
  process (monkeypatch): fresh ACL state per test;
- :func:`use_shim` writes a folder holding ``aclruntime.py`` and an
  ``ais_bench`` package that build the fake on import, and puts that folder
  on ``sys.path`` and ``PYTHONPATH``: a worker started with
  ``multiprocessing`` 'spawn' (which passes ``sys.path``) or as
  ``python -c`` with the environment (as pipeline/hostproc.py does) imports
  the fake as if the wheels were installed. No ``sitecustomize``.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import sys
import threading
import time
import types
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

__all__ = [
    "FakeOm",
    "expected_outputs",
    "build_aclruntime",
    "build_ais_bench",
    "install",
    "use_shim",
    "write_shim",
    "read_events",
    "overlaps",
]

MAGIC = "fake-ascend-om/1"
GENERATIONS = ("2023", "ait")
RUNTIME_MODULES = ("aclruntime", "ais_bench", "ais_bench.infer", "ais_bench.infer.interface")


@dataclass
class FakeOm:
    """One fake ``.om``: what ``atc`` would have built, and how long the device takes."""

    batch: int = 1  # static batch, or -1: a dynamic-batch model built for ``dynamic_batches``
    dynamic_batches: Tuple[int, ...] = ()
    size: int = 4  # input side S: [batch, 3, S, S]
    priors: int = 6
    classes: int = 5
    input_dtype: str = "float32"
    flat_scores: bool = False  # the guide's scores [B*P, C] instead of [B, P, C]
    output_names: Tuple[str, str] = ("Softmax_1:0:scores", "Reshape_1:0:loc")  # in .om output order
    output_kinds: Tuple[str, str] = ("scores", "loc")  # what each output is, same order
    exec_ms: Union[float, Dict[str, float]] = 60.0  # warm execute ms, or {str(batch): ms}
    cold_ms: float = 900.0  # the first execute of a session (model load, first touch)
    h2d_ms: float = 1.5  # per host-to-device copy
    d2h_ms: float = 0.5  # per device-to-host copy
    sleep_ms: float = 0.0  # real time each execute holds its device (for overlap checks)
    device_count: int = 8
    log_dir: Optional[str] = None
    #: An ``.npz`` of ``scores`` [K, P, C] and ``loc`` [K, P, 4]: image i gets case (its mean's digits) mod K
    #: instead of :func:`expected_outputs` (outputs shaped like a trained model's, for cheap post-processing).
    cases: Optional[str] = None
    extra: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        self.dynamic_batches = tuple(int(b) for b in self.dynamic_batches)
        if self.batch == -1 and not self.dynamic_batches:
            raise ValueError("a dynamic-batch fake needs dynamic_batches")
        if self.batch != -1 and self.batch < 1:
            raise ValueError("batch must be positive, or -1 for a dynamic-batch model")

    @property
    def max_batch(self) -> int:
        return max(self.dynamic_batches) if self.batch == -1 else self.batch

    def warm_ms(self, batch: int) -> float:
        if isinstance(self.exec_ms, dict):
            return float(self.exec_ms[str(batch)])
        return float(self.exec_ms)

    def write(self, path: Union[str, Path]) -> Path:
        path = Path(path)
        data = asdict(self)
        path.write_text(json.dumps({"magic": MAGIC, **data}))
        return path

    @classmethod
    def read(cls, path: Union[str, Path]) -> "FakeOm":
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            raise RuntimeError(f"[ERROR] load model from file failed, model file is {path} ({exc})") from None
        if not isinstance(data, dict) or data.pop("magic", None) != MAGIC:
            raise RuntimeError(f"[ERROR] load model from file failed, model file is {path}")
        data["dynamic_batches"] = tuple(data.get("dynamic_batches", ()))
        data["output_names"] = tuple(data["output_names"])
        data["output_kinds"] = tuple(data["output_kinds"])
        return cls(**data)


def expected_outputs(images: np.ndarray, priors: int = 6, classes: int = 5) -> Tuple[np.ndarray, np.ndarray]:
    """What a fake model computes for ``images`` [n, 3, S, S]: (scores [n, P, C], loc [n, P, 4]) float32,
    every value of image i derived from its mean."""
    m = np.asarray(images).astype(np.float64).reshape(len(images), -1).mean(axis=1)
    scores = (m[:, None, None] + np.arange(priors * classes).reshape(1, priors, classes)).astype(np.float32)
    loc = (m[:, None, None] * 10 + np.arange(priors * 4).reshape(1, priors, 4)).astype(np.float32)
    return scores, loc


# ----------------------------------------------------------------------------- event log
def _log(spec: FakeOm, event: str, **fields) -> None:
    if not spec.log_dir:
        return
    line = json.dumps({"event": event, "pid": os.getpid(), "time": time.time(), **fields}) + "\n"
    fd = os.open(os.path.join(spec.log_dir, f"events-{os.getpid()}.jsonl"), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def read_events(log_dir: Union[str, Path], event: Optional[str] = None) -> List[dict]:
    """Every logged event of every process, in time order (optionally only one kind)."""
    events = []
    for path in sorted(Path(log_dir).glob("events-*.jsonl")):
        events.extend(json.loads(line) for line in path.read_text().splitlines() if line)
    events.sort(key=lambda e: e["time"])
    return [e for e in events if event is None or e["event"] == event]


def overlaps(a: Sequence[dict], b: Sequence[dict]) -> bool:
    """Whether some execute of ``a`` ran while some execute of ``b`` did (``start``/``end`` wall times)."""
    return any(x["start"] < y["end"] and y["start"] < x["end"] for x in a for y in b)


# ----------------------------------------------------------------------------- aclruntime
class _DType:
    """A value of the pybind enum ``aclruntime.dtype``: ``str`` gives ``dtype.<name>``."""

    VALUES = {"float32": 0, "float16": 1, "int8": 2, "int32": 3, "uint8": 4, "int16": 6, "uint16": 7,
              "uint32": 8, "int64": 9, "uint64": 10, "double": 11, "bool": 12}

    def __init__(self, name: str):
        self.name, self.value = name, self.VALUES[name]

    def __str__(self):
        return f"dtype.{self.name}"

    def __repr__(self):
        return f"<dtype.{self.name}: {self.value}>"

    def __int__(self):
        return self.value

    def __eq__(self, other):
        return isinstance(other, _DType) and other.value == self.value

    def __hash__(self):
        return self.value


def build_aclruntime(generation: str = "2023") -> types.ModuleType:
    """A fresh fake ``aclruntime`` module with its own process-wide ACL state."""
    if generation not in GENERATIONS:
        raise ValueError(f"generation must be one of {GENERATIONS}")
    mod = types.ModuleType("aclruntime")  # no __version__, as the real module
    acl = types.SimpleNamespace(initialized=False, finalized=False, h2d=[], d2h=[], loaded=0,
                                sessions=0, contexts=set(), locks={}, generation=generation)
    mod._acl = acl  # for tests of the fake itself

    def ensure_acl(device_id: int, device_count: int = 8) -> None:
        """TensorContext's singleton: aclInit once per process, never again after aclFinalize."""
        if acl.finalized:
            raise RuntimeError(f"[ERROR] acl open device {device_id} failed: aclrtSetDevice after aclFinalize "
                               "(ACL was finalized in this process and is never initialized again)")
        if not (0 <= device_id < device_count):
            raise RuntimeError(f"[ERROR] acl open device {device_id} failed (devices 0..{device_count - 1})")
        acl.initialized = True
        acl.contexts.add(device_id)

    def finalize_acl() -> int:
        if acl.finalized or not acl.initialized:
            return 507899  # DestroyDevices with nothing initialized: an error code, no exception
        acl.finalized = True
        acl.contexts.clear()
        return 0

    class session_options:  # noqa: N801 - the binding's name
        __slots__ = ("loop", "log_level", "acl_json_path")  # def_readwrite, nothing else

        def __init__(self):
            self.loop, self.log_level, self.acl_json_path = 1, 2, ""

    class tensor_desc:  # noqa: N801
        def __init__(self, name, datatype, shape, size):
            self.name, self.datatype, self.shape = name, datatype, list(shape)
            self.format = 0  # NCHW
            self.size = self.realsize = int(size)

    class sumary:  # noqa: N801 - sic
        __slots__ = ("exec_time_list",)

        def __init__(self, times=()):
            self.exec_time_list = list(times)

    class BaseTensor:
        def __init__(self, buf: int, size: int):
            self.buf, self.size = int(buf), int(size)

    class Tensor:
        def __init__(self, array, *, _device=None, _spec=None):
            self._array = np.ascontiguousarray(array)
            self._device = _device
            self._spec = _spec

        @property
        def shape(self):
            return list(self._array.shape)

        @property
        def device(self):
            return -1 if self._device is None else self._device

        def to_device(self, device_id: int) -> None:
            ensure_acl(int(device_id))
            if self._device is None:
                acl.h2d.append(self._spec.h2d_ms if self._spec else 1.5)
            self._device = int(device_id)

        def to_host(self) -> None:
            if self._device is not None:
                if self._device not in acl.contexts:
                    raise RuntimeError("[ERROR] aclrtMemcpy failed: the device's context is gone")
                acl.d2h.append(self._spec.d2h_ms if self._spec else 0.5)
            self._device = None

        def __array__(self, dtype=None, copy=None):
            if self._device is not None:
                raise RuntimeError("tensor is in npu. can't convert to numpy array")
            return self._array if dtype is None else self._array.astype(dtype)

    class MemorySummary:
        """A view on the one process-wide copy record (a pybind nodelete pointer to a static)."""

        @property
        def H2D_time_list(self):  # noqa: N802 - the binding's name
            return list(acl.h2d)

        @property
        def D2H_time_list(self):  # noqa: N802
            return list(acl.d2h)

        def reset(self):
            acl.h2d.clear()
            acl.d2h.clear()

    def device_lock(spec: FakeOm, device_id: int):
        """Executes on one device are serialised: across processes through a lock file, else a thread lock."""
        if spec.log_dir:
            class _FileLock:
                def __enter__(self):
                    self.fd = os.open(os.path.join(spec.log_dir, f"device{device_id}.lock"), os.O_RDWR | os.O_CREAT)
                    fcntl.flock(self.fd, fcntl.LOCK_EX)

                def __exit__(self, *exc):
                    fcntl.flock(self.fd, fcntl.LOCK_UN)
                    os.close(self.fd)
            return _FileLock()
        return acl.locks.setdefault(device_id, threading.Lock())

    class InferenceSession:
        def __init__(self, model_path, device_id, options):
            if not isinstance(options, session_options):
                raise TypeError("InferenceSession(): options must be aclruntime.session_options")
            if not isinstance(model_path, str) or not isinstance(device_id, int):
                raise TypeError("InferenceSession(): incompatible constructor arguments (str, int, session_options)")
            spec = FakeOm.read(model_path)
            ensure_acl(device_id, spec.device_count)
            self._spec, self._device, self._options = spec, device_id, options
            self._path = model_path
            self._times: list = []
            self._executes = 0
            self._dyn_batch: Optional[int] = None
            self._loaded = True
            self._zero = 100.0  # ait: (start, end) in ms from the session's zero point
            acl.loaded += 1
            acl.sessions += 1
            item = 2 if spec.input_dtype == "float16" else 4
            s = spec.size
            self._inputs = [tensor_desc("image", _DType(spec.input_dtype), [spec.batch, 3, s, s],
                                        spec.max_batch * 3 * s * s * item)]
            self._outputs = []
            for name, kind in zip(spec.output_names, spec.output_kinds):
                if kind == "scores":
                    shape = [spec.max_batch * spec.priors, spec.classes] if spec.flat_scores else \
                        [spec.max_batch, spec.priors, spec.classes]
                else:
                    shape = [spec.max_batch, spec.priors, 4]
                self._outputs.append(tensor_desc(name, _DType("float32"), shape, 4 * int(np.prod(shape))))
            _log(spec, "load", device=device_id, path=model_path, generation=generation,
                 acl_json=getattr(self._options, "acl_json_path", ""))

        # -- description
        def options(self):
            return self._options

        def get_inputs(self):
            return self._inputs

        def get_outputs(self):
            return self._outputs

        def __str__(self):
            return f"<Model>\ndevice:\t{self._device}\n(fake {self._path})"

        __repr__ = __str__

        # -- dynamic batch
        def set_staticbatch(self):
            self._dyn_batch = None
            self._inputs[0].realsize = self._inputs[0].size
            return 0

        def set_dynamic_batchsize(self, batch):
            batch = int(batch)
            spec = self._spec
            if spec.batch != -1:
                raise RuntimeError("[ERROR] the dynamic_batch_size parameter is not specified for model conversion")
            if batch not in spec.dynamic_batches:
                raise RuntimeError(f"[ERROR] the dymBatch parameter is not correct: {batch} not in the model's "
                                   f"batches {list(spec.dynamic_batches)}")
            self._dyn_batch = batch
            self._inputs[0].realsize = self._inputs[0].size * batch // spec.max_batch
            _log(spec, "set_dynamic_batchsize", device=self._device, batch=batch)
            return 0

        # -- timing
        def sumary(self):
            return sumary(self._times)

        def reset_sumaryinfo(self):
            self._times.clear()
            return 0

        # -- run
        def _check_alive(self):
            if not self._loaded:
                raise RuntimeError("[ERROR] model not loaded (the session was released)")
            if acl.finalized or self._device not in acl.contexts:
                raise RuntimeError("[ERROR] SetContext failed: this device's context was destroyed "
                                   "(ACL finalized in this process)")

        def run(self, output_names, feeds):
            self._check_alive()
            spec = self._spec
            names = [o.name for o in self._outputs]
            for name in output_names:
                if name not in names:
                    raise RuntimeError(f"[ERROR] outnames {name} not valid")
            if len(feeds) != len(self._inputs):
                raise RuntimeError(f"[ERROR] intensors in:{len(feeds)} need:{len(self._inputs)} not match")
            feed = feeds[0]
            if isinstance(feed, BaseTensor):
                data = ctypes.string_at(feed.buf, feed.size)  # the binding copies the host buffer to the device
                acl.h2d.append(spec.h2d_ms)
            elif isinstance(feed, Tensor):
                if feed._device is None:
                    raise RuntimeError("[ERROR] input tensor is not on the device (call to_device first)")
                data = feed._array.tobytes()
            else:
                raise TypeError("run(): feeds must be aclruntime.Tensor or aclruntime.BaseTensor")
            desc = self._inputs[0]
            if len(data) != desc.realsize:
                raise RuntimeError(f"[ERROR] Check i:0 name:{desc.name} in size:{len(data)} "
                                   f"needsize:{desc.realsize} not match")
            if spec.batch == -1 and self._dyn_batch is None:
                raise RuntimeError("[ERROR] aclmdlExecute failed: dynamic-batch model executed without "
                                   "set_dynamic_batchsize")
            n = self._dyn_batch or spec.batch
            images = np.frombuffer(data, dtype=np.dtype(spec.input_dtype)).reshape(n, 3, spec.size, spec.size)
            for _ in range(max(1, int(self._options.loop))):
                with device_lock(spec, self._device):
                    start = time.time()
                    if spec.sleep_ms:
                        time.sleep(spec.sleep_ms / 1000.0)
                    end = time.time()
                cold = self._executes == 0
                ms = spec.cold_ms if cold else spec.warm_ms(n)
                self._executes += 1
                if generation == "ait":
                    self._times.append((self._zero, self._zero + ms))
                    self._zero += ms + 1.0
                else:
                    self._times.append(ms)
                means = [round(float(v), 6) for v in images.astype(np.float64).reshape(n, -1).mean(axis=1)]
                _log(spec, "execute", device=self._device, start=start, end=end, batch=n, ms=ms, cold=cold,
                     means=means)
            if spec.cases:
                with np.load(spec.cases) as cases:
                    picks = [int(abs(m) * 1e4) % len(cases["scores"]) for m in means]
                    scores, loc = cases["scores"][picks], cases["loc"][picks]
            else:
                scores, loc = expected_outputs(images, spec.priors, spec.classes)
            if spec.flat_scores:
                scores = scores.reshape(n * spec.priors, spec.classes)
            by_kind = {"scores": scores, "loc": loc}
            kinds = dict(zip(names, spec.output_kinds))
            return [Tensor(by_kind[kinds[name]], _device=self._device, _spec=spec) for name in output_names]

        # -- release
        def _unload(self, how: str):
            if self._loaded:
                self._loaded = False
                acl.loaded -= 1
                _log(self._spec, how, device=self._device)

        def __del__(self):
            try:
                self._unload("unload")
            except Exception:  # noqa: BLE001 - interpreter teardown
                pass

    if generation == "2023":
        def finalize(self):
            """T: Destroy() this session, then DestroyDevices(): aclFinalize for the whole process."""
            self._unload("finalize")
            return finalize_acl()

        InferenceSession.finalize = finalize
    else:
        def free_resource(self):
            """A: unload this model and destroy this session's context; ACL stays up."""
            self._unload("free_resource")
            return 0

        def finalize_static():
            """A: static; aclFinalize for the whole process."""
            return finalize_acl()

        def get_max_dym_batchsize(self):
            return self._spec.max_batch if self._spec.batch == -1 else -1

        InferenceSession.free_resource = free_resource
        InferenceSession.finalize = staticmethod(finalize_static)
        InferenceSession.get_max_dym_batchsize = get_max_dym_batchsize

    mod.session_options = session_options
    mod.tensor_desc = tensor_desc
    mod.sumary = sumary
    mod.BaseTensor = BaseTensor
    mod.Tensor = Tensor
    mod.MemorySummary = MemorySummary
    mod.InferenceSession = InferenceSession
    mod.dtype = types.SimpleNamespace(**{n: _DType(n) for n in _DType.VALUES})
    return mod


# ----------------------------------------------------------------------------- ais_bench
def build_ais_bench(aclruntime: types.ModuleType, generation: str = "2023") -> types.ModuleType:
    """A fake ``ais_bench.infer.interface`` over ``aclruntime`` (the 2023 tools' or newer ait's)."""
    interface = types.ModuleType("ais_bench.infer.interface")
    acl = aclruntime

    class InferSession:
        def __init__(self, device_id: int, model_path: str, acl_json_path: str = None, debug: bool = False,
                     loop: int = 1):
            self.device_id, self.model_path, self.loop = device_id, model_path, loop
            options = acl.session_options()
            if acl_json_path is not None:
                options.acl_json_path = acl_json_path
            options.log_level = 1 if debug else 2
            options.loop = loop
            self.session = acl.InferenceSession(model_path, device_id, options)
            self.outputs_names = [m.name for m in self.session.get_outputs()]

        def get_inputs(self):
            return self.session.get_inputs()

        def get_outputs(self):
            return self.session.get_outputs()

        def set_loop_count(self, loop):
            self.session.options().loop = loop

        def set_staticbatch(self):
            self.session.set_staticbatch()

        def set_dynamic_batchsize(self, batch):
            self.session.set_dynamic_batchsize(batch)

        def create_tensor_from_arrays_to_device(self, arrays):
            tensor = acl.Tensor(arrays)
            tensor.to_device(self.device_id)
            return tensor

        @staticmethod
        def convert_tensors_to_host(tensors):
            for tensor in tensors:
                tensor.to_host()

        @staticmethod
        def convert_tensors_to_arrays(tensors):
            return [np.array(t) for t in tensors]

        def run(self, feeds, out_array=False):
            if feeds and isinstance(feeds[0], np.ndarray):
                keep = [np.ascontiguousarray(a) for a in feeds]  # alive until the copy is made
                inputs = [acl.BaseTensor(a.__array_interface__["data"][0], a.nbytes) for a in keep]
            else:
                inputs = feeds
            outputs = self.session.run(self.outputs_names, inputs)
            if out_array:
                self.convert_tensors_to_host(outputs)
                return self.convert_tensors_to_arrays(outputs)
            return outputs

        def infer(self, feeds, mode="static", custom_sizes=100000, out_array=True):
            """T: only dymshape/dymdims do anything before the run (any other mode is a plain run); A: every
            mode prepares the session first, "static" by set_staticbatch(), "dymbatch" by setting the batch
            from the feed's shape[0] (A interface.py:470-507, 652-666)."""
            arrays = [np.ascontiguousarray(f) for f in feeds]
            if mode in ("dymshape", "dymdims", "dymhw"):
                raise RuntimeError(f"the fake InferSession.infer does not do {mode!r}")
            if generation == "ait":
                if mode == "static":
                    self.set_staticbatch()
                elif mode == "dymbatch":
                    if self.get_inputs()[0].shape[0] >= 0:
                        raise RuntimeError("not a dymbatch model!")
                    self.set_dynamic_batchsize(arrays[0].shape[0])
                else:
                    raise RuntimeError(f"wrong infer_mode:{mode}")
            return self.run(arrays, out_array=True)

    if generation == "2023":
        def reset_sumaryinfo(self):
            self.session.reset_sumaryinfo()

        def sumary(self):
            return self.session.sumary()

        def finalize(self):
            if hasattr(self.session, "finalize"):
                self.session.finalize()

        InferSession.reset_sumaryinfo = reset_sumaryinfo
        InferSession.sumary = sumary
        InferSession.finalize = finalize

        class MemorySummary:
            @staticmethod
            def get_H2D_time_list():  # noqa: N802 - T's names
                return acl.MemorySummary().H2D_time_list if hasattr(acl, "MemorySummary") else []

            @staticmethod
            def get_D2H_time_list():  # noqa: N802
                return acl.MemorySummary().D2H_time_list if hasattr(acl, "MemorySummary") else []

            @staticmethod
            def reset():
                if hasattr(acl, "MemorySummary"):
                    acl.MemorySummary().reset()
    else:
        def reset_summaryinfo(self):
            self.session.reset_sumaryinfo()

        def summary(self):
            return self.session.sumary()

        def free_resource(self):
            if hasattr(self.session, "free_resource"):
                self.session.free_resource()

        def finalize():
            if hasattr(acl.InferenceSession, "finalize"):
                acl.InferenceSession.finalize()

        def get_max_dym_batchsize(self):
            return self.session.get_max_dym_batchsize()

        InferSession.reset_summaryinfo = reset_summaryinfo
        InferSession.summary = summary
        InferSession.free_resource = free_resource
        InferSession.finalize = staticmethod(finalize)
        InferSession.get_max_dym_batchsize = get_max_dym_batchsize

        class MemorySummary:
            @staticmethod
            def get_h2d_time_list():
                return acl.MemorySummary().H2D_time_list if hasattr(acl, "MemorySummary") else []

            @staticmethod
            def get_d2h_time_list():
                return acl.MemorySummary().D2H_time_list if hasattr(acl, "MemorySummary") else []

            @staticmethod
            def reset():
                if hasattr(acl, "MemorySummary"):
                    acl.MemorySummary().reset()

    interface.InferSession = InferSession
    interface.MemorySummary = MemorySummary
    return interface


def _packages(interface: types.ModuleType) -> Dict[str, types.ModuleType]:
    infer_pkg = types.ModuleType("ais_bench.infer")
    infer_pkg.interface = interface
    pkg = types.ModuleType("ais_bench")  # an empty __init__, no __version__
    pkg.infer = infer_pkg
    return {"ais_bench": pkg, "ais_bench.infer": infer_pkg, "ais_bench.infer.interface": interface}


# ----------------------------------------------------------------------------- installing
def install(monkeypatch, generation: str = "2023", ais_bench: bool = True,
            aclruntime: bool = True) -> types.ModuleType:
    """Fresh fake runtimes in this process's ``sys.modules`` (undone by ``monkeypatch``).

    ``ais_bench=False`` hides ais_bench (``import ais_bench`` fails);
    ``aclruntime=False`` hides the bare binding while ais_bench still uses it.
    Returns the fake aclruntime module (its ``_acl`` is the process-wide state)."""
    acl = build_aclruntime(generation)
    monkeypatch.setitem(sys.modules, "aclruntime", acl if aclruntime else None)
    if ais_bench:
        for name, module in _packages(build_ais_bench(acl, generation)).items():
            monkeypatch.setitem(sys.modules, name, module)
    else:
        for name in RUNTIME_MODULES[1:]:
            monkeypatch.setitem(sys.modules, name, None)  # import ais_bench -> ImportError
    return acl


_SHIM_ACL = '''"""Fake aclruntime (tests/backends/fake_ascend.py), {generation} generation."""
import sys as _sys
_sys.path.insert(0, {here!r})
import fake_ascend as _fake
_sys.path.remove({here!r})
_sys.modules[__name__] = _fake.build_aclruntime({generation!r})
'''

_SHIM_INTERFACE = '''"""Fake ais_bench.infer.interface (tests/backends/fake_ascend.py), {generation} generation."""
import sys as _sys
import aclruntime as _acl
_sys.path.insert(0, {here!r})
import fake_ascend as _fake
_sys.path.remove({here!r})
_sys.modules[__name__] = _fake.build_ais_bench(_acl, {generation!r})
'''


def write_shim(folder: Union[str, Path], generation: str = "2023", ais_bench: bool = True) -> Path:
    """A folder that, on ``sys.path``, makes ``import aclruntime`` (and ``ais_bench.infer.interface``)
    give the fake, in this process or any process started with it on its path."""
    if generation not in GENERATIONS:
        raise ValueError(f"generation must be one of {GENERATIONS}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    here = str(Path(__file__).resolve().parent)
    (folder / "aclruntime.py").write_text(_SHIM_ACL.format(here=here, generation=generation))
    if ais_bench:
        (folder / "ais_bench" / "infer").mkdir(parents=True, exist_ok=True)
        (folder / "ais_bench" / "__init__.py").write_text("")
        (folder / "ais_bench" / "infer" / "__init__.py").write_text("")
        (folder / "ais_bench" / "infer" / "interface.py").write_text(
            _SHIM_INTERFACE.format(here=here, generation=generation))
    return folder


def use_shim(monkeypatch, folder: Union[str, Path], generation: str = "2023", ais_bench: bool = True) -> Path:
    """:func:`write_shim`, then put it first on ``sys.path`` and ``PYTHONPATH`` and forget any runtime
    module already imported, so this process and its workers import the fake."""
    shim = write_shim(folder, generation, ais_bench)
    monkeypatch.syspath_prepend(str(shim))
    old = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(shim)] + ([old] if old else [])))
    for name in RUNTIME_MODULES:  # set then delete: monkeypatch restores the state before (absent or not)
        monkeypatch.setitem(sys.modules, name, None)
        monkeypatch.delitem(sys.modules, name)
    if not ais_bench:
        for name in RUNTIME_MODULES[1:]:
            monkeypatch.setitem(sys.modules, name, None)
    return shim
