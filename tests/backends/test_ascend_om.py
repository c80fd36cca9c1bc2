"""The .om adapter's logic, against FAKE Ascend runtimes (cpu layer).

These are NOT tests of a 310P. The fakes follow the real bindings in every
point the adapter touches (reference section 9; /tmp notes on Ascend/tools
@2023 "T" and ait @2024 "A"):

- ``aclruntime``: ``session_options()`` is an object with exactly the
  attributes ``loop``, ``log_level``, ``acl_json_path``;
  ``InferenceSession(path, device_id, options)`` positional, metas
  (``tensor_desc``) with ``name``, ``shape``, ``datatype`` (a pybind enum
  printing ``dtype.float16``), ``format``, ``realsize``, ``size``;
  ``Tensor(array).to_device(id)``, ``run(names, feeds)``, ``to_host()`` then
  ``np.array(out)``; ``sumary()`` (sic) whose ``exec_time_list`` gains one
  entry (ms) per execute (``loop`` per run); ``reset_sumaryinfo()``;
  ``finalize()``; NO ``free_resource`` and NO ``__version__``.
- ``ais_bench`` 2023 (T): ``InferSession(device_id, model_path, acl_json_path=None,
  debug=False, loop=1)``, ``infer(feeds, mode="static", custom_sizes=100000)``,
  ``sumary()``, instance ``finalize()``; no ``summary``, no ``free_resource``.
- ``ais_bench`` in newer ait (A): ``summary()`` whose ``exec_time_list`` holds
  ``(start, end)`` pairs, ``free_resource()``, and ``finalize`` a staticmethod
  that finalizes the whole ACL runtime (so the adapter must not call it).

They check what the adapter does with them: lazy import, output mapping by
name or shape, padding of the last partial batch, the warm-up execute, dtype
handling, execute times, release (never ``finalize``), errors. The fuller
stand-in for the runtime's behaviour (cold executes, MemorySummary, dynamic
batches, several devices) is tests/backends/fake_ascend.py, used by
tests/backends/test_om_runtime.py. The real runtime is exercised by
tests/hardware/test_npu.py (``npu`` marker).
"""

from __future__ import annotations

import math
import subprocess
import sys
import types

import numpy as np
import pytest
from fake_ascend import _DType

from m2det_impl.backends.ascend import OmBackend, map_om_outputs
from m2det_impl.errors import BackendUnavailableError, InputFileError, ModelOutputError, UsageError

pytestmark = pytest.mark.cpu

P, C, S = 6, 5, 4  # tiny model: 6 priors, 5 classes, 4x4 input
EXEC_MS = 7.25  # what the fake device "takes" per execute


DType = _DType  # the one fake of aclruntime's dtype enum (tests/backends/fake_ascend.py)


class Meta:
    """``aclruntime.tensor_desc``."""

    def __init__(self, name, shape, datatype="float32"):
        self.name, self.shape, self.datatype = name, list(shape), DType(datatype)
        self.format = 0  # NCHW
        count = int(np.prod([max(d, 0) for d in self.shape]))
        self.realsize = self.size = count * (2 if datatype == "float16" else 4)


def expected_outputs(batch: np.ndarray):
    """What the fake model computes: every value of image i derives from its mean,
    so a row in the wrong place or a padded row that leaks is visible."""
    m = batch.astype(np.float64).reshape(len(batch), -1).mean(axis=1)
    scores = (m[:, None, None] + np.arange(P * C).reshape(1, P, C)).astype(np.float32)
    loc = (m[:, None, None] * 10 + np.arange(P * 4).reshape(1, P, 4)).astype(np.float32)
    return scores, loc


class FakeModel:
    """Shared state of one fake .om: its metas, and a log of what it was fed and how it was released."""

    def __init__(self, batch=2, outputs=None, input_dtype="float32", flat_scores=False):
        self.batch = batch
        scores_shape = [batch * P, C] if flat_scores else [batch, P, C]
        self.inputs = [Meta("image", [batch, 3, S, S], input_dtype)]
        self.outputs = outputs or [Meta("Reshape_1:0:loc", [batch, P, 4]),
                                   Meta("Softmax_1:0:scores", scores_shape)]
        self.fed = []
        self.devices = []
        self.released = []
        self.options = []

    def compute(self, array):
        self.fed.append(np.array(array))
        scores, loc = expected_outputs(array)
        by_last = {C: scores, 4: loc}
        return [by_last[m.shape[-1]].reshape(m.shape) for m in self.outputs]


def fake_aclruntime(model: FakeModel) -> types.ModuleType:
    mod = types.ModuleType("aclruntime")  # no __version__, as the real module

    class session_options:  # noqa: N801 - the binding's name
        __slots__ = ("loop", "log_level", "acl_json_path")  # def_readwrite, nothing else

        def __init__(self):
            self.loop, self.log_level, self.acl_json_path = 1, 2, ""

    class sumary:  # noqa: N801 - sic, the binding's name
        __slots__ = ("exec_time_list",)

        def __init__(self, times):
            self.exec_time_list = list(times)

    class Tensor:
        def __init__(self, array):
            self.array = np.asarray(array)
            self.on_device = None

        def to_device(self, device_id):
            self.on_device = device_id
            model.devices.append(device_id)

        def to_host(self):
            self.on_device = None

        def __array__(self, dtype=None, copy=None):
            assert self.on_device is None, "read before to_host()"
            return self.array if dtype is None else self.array.astype(dtype)

    class InferenceSession:
        def __init__(self, path, device_id, options):
            assert isinstance(options, session_options), "options must be aclruntime.session_options()"
            assert isinstance(path, str) and isinstance(device_id, int)
            self.path, self._options, self._times = path, options, []
            model.options.append(options)

        def options(self):
            return self._options

        def get_inputs(self):
            return model.inputs

        def get_outputs(self):
            return model.outputs

        def run(self, names, feeds):
            assert names == [m.name for m in model.outputs]
            assert len(feeds) == 1 and feeds[0].on_device is not None, "input not on the device"
            for _ in range(self._options.loop):
                outs = [Tensor(a) for a in model.compute(feeds[0].array)]
                self._times.append(EXEC_MS)
            for t in outs:
                t.on_device = 0
            return outs

        def sumary(self):
            return sumary(self._times)

        def reset_sumaryinfo(self):
            self._times.clear()

        def finalize(self):
            model.released.append("InferenceSession.finalize")

    mod.session_options = session_options
    mod.sumary = sumary
    mod.Tensor = Tensor
    mod.InferenceSession = InferenceSession
    mod.dtype = types.SimpleNamespace(**{n: DType(n) for n in DType.VALUES})
    return mod


def fake_ais_bench(model: FakeModel, generation: str = "2023") -> types.ModuleType:
    """``ais_bench.infer.interface`` of the 2023 tools (T) or of newer ait (A), over the fake aclruntime."""
    interface = types.ModuleType("ais_bench.infer.interface")
    acl = fake_aclruntime(model)

    class InferSession2023:
        def __init__(self, device_id, model_path, acl_json_path=None, debug=False, loop=1):
            options = acl.session_options()
            options.log_level = 1 if debug else 2
            options.loop = loop
            self.session = acl.InferenceSession(model_path, device_id, options)

        def get_inputs(self):
            return self.session.get_inputs()

        def get_outputs(self):
            return self.session.get_outputs()

        def infer(self, feeds, mode="static", custom_sizes=100000):
            tensor = acl.Tensor(feeds[0])
            tensor.to_device(0)
            outs = self.session.run([m.name for m in model.outputs], [tensor])
            for o in outs:
                o.to_host()
            return [np.array(o) for o in outs]

        def reset_sumaryinfo(self):
            self.session.reset_sumaryinfo()

        def sumary(self):
            return self.session.sumary()

        def finalize(self):
            model.released.append("InferSession.finalize")

    class InferSessionAit(InferSession2023):
        sumary = None  # gone in ait: summary() replaces it
        reset_sumaryinfo = None

        def infer(self, feeds, mode="static", custom_sizes=100000, out_array=True):
            return super().infer(feeds, mode, custom_sizes)

        def summary(self):
            # (start, end) ms from the session's zero point, as ait's execTimeList
            pairs, t = [], 100.0
            for ms in self.session.sumary().exec_time_list:
                pairs.append((t, t + ms))
                t += ms + 3.0
            return acl.sumary(pairs)

        def reset_summaryinfo(self):
            self.session.reset_sumaryinfo()

        def free_resource(self):
            model.released.append("InferSession.free_resource")

        @staticmethod
        def finalize():
            model.released.append("aclruntime finalize: the whole ACL runtime")

    interface.InferSession = InferSession2023 if generation == "2023" else InferSessionAit
    return interface


@pytest.fixture
def om_file(tmp_path):
    path = tmp_path / "m2det512_bs2.om"
    path.write_bytes(b"not a real om")
    return path


@pytest.fixture
def only_aclruntime(monkeypatch):
    """Install a fake aclruntime, hide ais_bench; returns a setter for the model."""
    monkeypatch.setitem(sys.modules, "ais_bench", None)  # import ais_bench -> ImportError
    monkeypatch.setitem(sys.modules, "ais_bench.infer", None)

    def install(model: FakeModel):
        monkeypatch.setitem(sys.modules, "aclruntime", fake_aclruntime(model))
        return model

    return install


def _images(n):
    rng = np.random.default_rng(n)
    return rng.standard_normal((n, 3, S, S)).astype(np.float32)


# ------------------------------------------------------------------ mapping
def test_maps_outputs_by_name_whatever_their_order(om_file, only_aclruntime):
    model = only_aclruntime(FakeModel(batch=2))  # loc first in the .om
    backend = OmBackend(om_file, num_classes=C)
    images = _images(2)
    scores, loc = backend.infer(images)
    want_scores, want_loc = expected_outputs(images)
    assert np.array_equal(scores, want_scores) and np.array_equal(loc, want_loc)
    assert model.devices == [0, 0]  # the warm-up execute, then the timed one


def test_maps_outputs_by_shape_without_names(om_file, only_aclruntime):
    only_aclruntime(FakeModel(batch=1, outputs=[Meta("output_0", [1, P, 4]), Meta("output_1", [1, P, C])]))
    images = _images(1)
    scores, loc = OmBackend(om_file, num_classes=C).infer(images)
    assert np.array_equal(scores, expected_outputs(images)[0])
    assert np.array_equal(loc, expected_outputs(images)[1])


def test_reference_flat_scores_are_reshaped(om_file, only_aclruntime):
    """The guide's .om returns scores as [B*P, C]."""
    only_aclruntime(FakeModel(batch=2, flat_scores=True))
    images = _images(2)
    scores, _ = OmBackend(om_file, num_classes=C).infer(images)
    assert scores.shape == (2, P, C)
    assert np.array_equal(scores, expected_outputs(images)[0])


def test_names_that_contradict_shapes_are_an_error(om_file, only_aclruntime):
    """The guide's ONNX calls loc 'scores' and scores 'boxes'... or, renamed, swaps them."""
    only_aclruntime(FakeModel(outputs=[Meta("a:0:scores", [2, P, 4]), Meta("b:0:loc", [2, P, C])]))
    with pytest.raises(ModelOutputError) as info:
        OmBackend(om_file, num_classes=C)
    assert str(om_file) in str(info.value) and "swap" in str(info.value)


@pytest.mark.parametrize("outputs", [
    [Meta("o0", [2, P, 4]), Meta("o1", [2, P, 4])],                          # two loc-like outputs
    [Meta("o0", [2, P, C])],                                                  # one output
    [Meta("o0", [2, P, 7]), Meta("o1", [2, P, 4])],                           # wrong class count
])
def test_unidentifiable_outputs_are_an_error(om_file, only_aclruntime, outputs):
    only_aclruntime(FakeModel(outputs=outputs))
    with pytest.raises(ModelOutputError) as info:
        OmBackend(om_file, num_classes=C)
    assert str(om_file) in str(info.value) and "o0" in str(info.value)


def test_map_om_outputs_is_never_positional():
    assert map_om_outputs([("x:0:loc", [1, P, 4]), ("y:0:scores", [1, P, 81])], 81) == (1, 0)
    assert map_om_outputs([("output_0", [1, P, 81]), ("output_1", [1, P, 4])], 81) == (0, 1)
    assert map_om_outputs([("output_0", [1, P, 4]), ("output_1", [P, 81])], 81) == (1, 0)


# ------------------------------------------------------------------ batching
@pytest.mark.parametrize("n", [1, 3, 4, 5])
def test_static_batch_pads_the_last_chunk_and_drops_the_padding(om_file, only_aclruntime, n):
    model = only_aclruntime(FakeModel(batch=4))
    backend = OmBackend(om_file, num_classes=C)
    assert backend.static_batch == 4 and backend.batch_sizes == (4,)
    images = _images(n)
    scores, loc = backend.infer(images)
    assert scores.shape == (n, P, C) and loc.shape == (n, P, 4)
    want_scores, want_loc = expected_outputs(images)
    assert np.array_equal(scores, want_scores) and np.array_equal(loc, want_loc)
    chunks = -(-n // 4)
    assert [f.shape[0] for f in model.fed] == [4] * (1 + chunks)  # one warm-up execute on the first chunk
    assert np.array_equal(model.fed[0], model.fed[1])
    fed = np.concatenate(model.fed[1:])
    assert np.array_equal(fed[:n], images)
    assert not fed[n:].any(), "padding must be zeros"


def test_float16_input_models_get_float16(om_file, only_aclruntime):
    model = only_aclruntime(FakeModel(batch=1, input_dtype="float16"))
    backend = OmBackend(om_file, num_classes=C)
    scores, _ = backend.infer(_images(1))
    assert model.fed[0].dtype == np.float16
    assert scores.dtype == np.float32


def test_dynamic_batch_om_needs_a_batch(om_file, only_aclruntime):
    model = FakeModel(batch=1)
    model.inputs = [Meta("image", [-1, 3, S, S])]
    only_aclruntime(model)
    with pytest.raises(UsageError, match="dynamic-batch model .* give --batch-size"):
        OmBackend(om_file, num_classes=C)


def test_close_never_finalizes_acl(om_file, only_aclruntime):
    """finalize() ends ACL for the whole process, for good (docs/ascend-runtime-notes.md, section 6):
    without free_resource (the 2023 binding), closing drops the session and calls nothing."""
    model = only_aclruntime(FakeModel(batch=1))
    with OmBackend(om_file, num_classes=C) as backend:
        pass
    assert model.released == []
    assert backend.runner is None


def test_session_options_are_the_bindings_object_with_loop_one(om_file, only_aclruntime):
    model = only_aclruntime(FakeModel(batch=1))
    OmBackend(om_file, num_classes=C).close()
    (options,) = model.options
    assert (options.loop, options.log_level, options.acl_json_path) == (1, 2, "")


def test_execute_times_are_aclruntimes_own(om_file, only_aclruntime):
    """One exec_time_list entry per execute, whatever the wall clock says; 3 images at batch 2 = 2 executes."""
    only_aclruntime(FakeModel(batch=2))
    with OmBackend(om_file, num_classes=C) as backend:
        backend.infer(_images(3))
        backend.infer(_images(1))
        assert backend.execute_times_ms == [EXEC_MS] * 3
        assert backend.runtime_timed and "sumary().exec_time_list" in backend.execute_clock
        backend.runner.session.reset_sumaryinfo()  # a reset behind the adapter's back is survived
        backend.infer(_images(2))
        assert backend.execute_times_ms == [EXEC_MS] * 4


# ------------------------------------------------------------------ runtimes
def _install_ais_bench(monkeypatch, model, generation):
    interface = fake_ais_bench(model, generation)
    infer_pkg = types.ModuleType("ais_bench.infer")
    infer_pkg.interface = interface
    pkg = types.ModuleType("ais_bench")  # empty __init__, no __version__
    pkg.infer = infer_pkg
    monkeypatch.setitem(sys.modules, "ais_bench", pkg)
    monkeypatch.setitem(sys.modules, "ais_bench.infer", infer_pkg)
    monkeypatch.setitem(sys.modules, "ais_bench.infer.interface", interface)
    monkeypatch.setitem(sys.modules, "aclruntime", None)


@pytest.mark.parametrize("generation, release, clock", [
    ("2023", [], "sumary()"),
    ("ait", ["InferSession.free_resource"], "summary()"),
])
def test_ais_bench_is_preferred_when_present(om_file, monkeypatch, generation, release, clock):
    model = FakeModel(batch=2)
    _install_ais_bench(monkeypatch, model, generation)
    backend = OmBackend(om_file, num_classes=C)
    assert backend.runner.kind == "ais_bench"
    images = _images(3)
    scores, loc = backend.infer(images)
    assert np.array_equal(loc, expected_outputs(images)[1])
    # ait's (start, end) pairs become end - start: the same figure as the 2023 tools' ms
    assert backend.execute_times_ms == [EXEC_MS, EXEC_MS] and clock in backend.execute_clock
    backend.close()
    assert model.released == release  # never ait's static finalize, which ends the whole ACL runtime


def test_a_missing_execute_time_is_not_measured_not_wall_clock(om_file, only_aclruntime):
    """A run that adds no exec_time_list entry records NaN: a gate then fails as unmeasured."""
    only_aclruntime(FakeModel(batch=1))
    with OmBackend(om_file, num_classes=C) as backend:
        backend.runner.session.run = lambda names, feeds, run=backend.runner.session.run: (
            run(names, feeds), backend.runner.session.reset_sumaryinfo())[0]
        backend.infer(_images(1))
        assert math.isnan(backend.execute_times_ms[0])


def test_without_a_runtime_the_error_says_what_to_install(om_file, monkeypatch):
    for name in ("ais_bench", "ais_bench.infer", "ais_bench.infer.interface", "aclruntime"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(BackendUnavailableError) as info:
        OmBackend(om_file)
    message = str(info.value)
    assert "aclruntime" in message and "ais_bench" in message and "CANN" in message


def test_missing_om_file(tmp_path, only_aclruntime):
    only_aclruntime(FakeModel())
    with pytest.raises(InputFileError, match="not found"):
        OmBackend(tmp_path / "none.om")


def test_the_package_imports_no_ascend_runtime():
    code = ("import sys, m2det_impl.backends, m2det_impl.backends.registry, m2det_impl.evaluation.tolerances, m2det_impl.network.export, m2det_impl.environment; "
            "print(sorted(m for m in ('aclruntime', 'ais_bench', 'torch', 'onnxruntime') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ------------------------------------------------------------------ host probes
def test_npu_header_reads_a_fake_ascend_host(tmp_path, monkeypatch):
    """environment.npu_header_lines on a fake install: version files, atc and npu-smi."""
    from m2det_impl import environment

    home = tmp_path / "Ascend"
    (home / "ascend-toolkit/latest/x86_64-linux").mkdir(parents=True)
    (home / "ascend-toolkit/latest/x86_64-linux/ascend_toolkit_install.info").write_text(
        "package_name=Ascend-cann-toolkit\nversion=7.0.RC1\n")
    (home / "driver").mkdir()
    (home / "driver/version.info").write_text("Version=23.0.rc3\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "atc").write_text("#!/bin/sh\necho 'ATC start working now, please wait for a moment.'\n"
                                 "echo 'ATC version 7.0.RC1'\n")
    (bin_dir / "npu-smi").write_text("#!/bin/sh\necho '| npu-smi 23.0.rc3  Version: 23.0.rc3 |'\n"
                                     "echo '| 0     310P3     | OK  | NA  52  0 / 0 |'\n")
    for tool in ("atc", "npu-smi"):
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("ASCEND_HOME", str(home))
    monkeypatch.delenv("ASCEND_TOOLKIT_HOME", raising=False)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    info = environment.npu_info()
    assert info == {"cann": "7.0.RC1", "driver": "23.0.rc3", "atc": "ATC version 7.0.RC1",
                    "soc": "310P3", "npu_smi": "23.0.rc3"}
    assert environment.npu_header_lines() == [
        "ascend: cann 7.0.RC1, driver 23.0.rc3, atc ATC version 7.0.RC1, soc 310P3, npu_smi 23.0.rc3"]
    assert environment.library_versions()["npu"]["soc"] == "310P3"


def test_npu_header_is_empty_off_an_ascend_host(tmp_path, monkeypatch):
    from m2det_impl import environment

    monkeypatch.setenv("ASCEND_HOME", str(tmp_path))  # an empty folder
    monkeypatch.delenv("ASCEND_TOOLKIT_HOME", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert environment.npu_header_lines() == []
