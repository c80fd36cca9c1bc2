"""The .om adapter's logic, against FAKE Ascend runtimes (cpu layer).

These are NOT tests of a 310P: the fake ``aclruntime`` module below follows
the API documented in reference section 9 (session metas with ``name``/``shape``/
``datatype``, ``Tensor(array).to_device(id)``, ``run(names, feeds)``,
``to_host()`` then ``np.array(out)``) and the fake ``ais_bench`` follows
``InferSession(device_id, path).infer([array])``. They check what the adapter
does with them: lazy import, output mapping by name or shape, padding of the
last partial batch, dtype handling, errors. The real runtime is exercised by
tests/hardware/test_npu.py (``npu`` marker).
"""

from __future__ import annotations

import subprocess
import sys
import types

import numpy as np
import pytest

from m2det_impl.backends import OmBackend, map_om_outputs
from m2det_impl.errors import BackendUnavailableError, InputFileError, ModelOutputError

pytestmark = pytest.mark.cpu

P, C, S = 6, 5, 4  # tiny model: 6 priors, 5 classes, 4x4 input


class Meta:
    def __init__(self, name, shape, datatype="dtype.float32"):
        self.name, self.shape, self.datatype = name, list(shape), datatype


def expected_outputs(batch: np.ndarray):
    """What the fake model computes: every value of image i derives from its mean,
    so a row in the wrong place or a padded row that leaks is visible."""
    m = batch.astype(np.float64).reshape(len(batch), -1).mean(axis=1)
    scores = (m[:, None, None] + np.arange(P * C).reshape(1, P, C)).astype(np.float32)
    loc = (m[:, None, None] * 10 + np.arange(P * 4).reshape(1, P, 4)).astype(np.float32)
    return scores, loc


class FakeModel:
    """Shared state of one fake .om: its metas, and a log of what it was fed."""

    def __init__(self, batch=2, outputs=None, input_dtype="dtype.float32", flat_scores=False):
        self.batch = batch
        scores_shape = [batch * P, C] if flat_scores else [batch, P, C]
        self.inputs = [Meta("image", [batch, 3, S, S], input_dtype)]
        self.outputs = outputs or [Meta("Reshape_1:0:loc", [batch, P, 4]),
                                   Meta("Softmax_1:0:scores", scores_shape)]
        self.fed = []
        self.devices = []
        self.freed = 0

    def compute(self, array):
        self.fed.append(np.array(array))
        scores, loc = expected_outputs(array)
        by_last = {C: scores, 4: loc}
        return [by_last[m.shape[-1]].reshape(m.shape) for m in self.outputs]


def fake_aclruntime(model: FakeModel) -> types.ModuleType:
    mod = types.ModuleType("aclruntime")

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
            assert isinstance(options, dict)
            self.path = path

        def get_inputs(self):
            return model.inputs

        def get_outputs(self):
            return model.outputs

        def run(self, names, feeds):
            assert names == [m.name for m in model.outputs]
            assert len(feeds) == 1 and feeds[0].on_device is not None, "input not on the device"
            outs = [Tensor(a) for a in model.compute(feeds[0].array)]
            for t in outs:
                t.on_device = 0
            return outs

        def free_resource(self):
            model.freed += 1

    mod.Tensor = Tensor
    mod.InferenceSession = InferenceSession
    mod.session_options = lambda: {}
    return mod


def fake_ais_bench(model: FakeModel) -> types.ModuleType:
    interface = types.ModuleType("ais_bench.infer.interface")

    class InferSession:
        def __init__(self, device_id, model_path):
            self.device_id = device_id

        def get_inputs(self):
            return model.inputs

        def get_outputs(self):
            return model.outputs

        def infer(self, feeds):
            return model.compute(feeds[0])

        def free_resource(self):
            model.freed += 1

    interface.InferSession = InferSession
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
    assert model.devices == [0]


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
    assert [f.shape[0] for f in model.fed] == [4] * chunks
    fed = np.concatenate(model.fed)
    assert np.array_equal(fed[:n], images)
    assert not fed[n:].any(), "padding must be zeros"


def test_float16_input_models_get_float16(om_file, only_aclruntime):
    model = only_aclruntime(FakeModel(batch=1, input_dtype="dtype.float16"))
    backend = OmBackend(om_file, num_classes=C)
    scores, _ = backend.infer(_images(1))
    assert model.fed[0].dtype == np.float16
    assert scores.dtype == np.float32


def test_dynamic_batch_om_is_refused(om_file, only_aclruntime):
    model = FakeModel(batch=1)
    model.inputs = [Meta("image", [-1, 3, S, S])]
    only_aclruntime(model)
    with pytest.raises(ModelOutputError, match="static-batch"):
        OmBackend(om_file, num_classes=C)


def test_close_frees_the_session(om_file, only_aclruntime):
    model = only_aclruntime(FakeModel(batch=1))
    with OmBackend(om_file, num_classes=C):
        pass
    assert model.freed == 1


# ------------------------------------------------------------------ runtimes
def test_ais_bench_is_preferred_when_present(om_file, monkeypatch):
    model = FakeModel(batch=2)
    interface = fake_ais_bench(model)
    infer_pkg = types.ModuleType("ais_bench.infer")
    infer_pkg.interface = interface
    pkg = types.ModuleType("ais_bench")
    pkg.infer = infer_pkg
    monkeypatch.setitem(sys.modules, "ais_bench", pkg)
    monkeypatch.setitem(sys.modules, "ais_bench.infer", infer_pkg)
    monkeypatch.setitem(sys.modules, "ais_bench.infer.interface", interface)
    monkeypatch.setitem(sys.modules, "aclruntime", None)
    backend = OmBackend(om_file, num_classes=C)
    assert backend.runner.kind == "ais_bench"
    images = _images(3)
    scores, loc = backend.infer(images)
    assert np.array_equal(loc, expected_outputs(images)[1])
    backend.close()
    assert model.freed == 1


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
