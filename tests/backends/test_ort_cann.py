"""The onnxruntime-cann route's logic, against a FAKE onnxruntime (cpu layer).

NOT a test of an NPU. The fake follows ONNX Runtime's documented Python API
where the adapter touches it: ``get_available_providers()``,
``SessionOptions`` (``intra_op_num_threads``), ``InferenceSession(path,
sess_options=..., providers=[(name, options_dict), ...])``,
``get_providers()`` (what actually loaded: a provider that fails to load is
silently dropped), ``get_inputs()``/``get_outputs()`` (NodeArg ``name``,
``shape``, ``type``) and ``run(output_names, input_feed)``; and the
CANNExecutionProvider's documented options (device_id, npu_mem_limit,
arena_extend_strategy, enable_cann_graph, dump_graphs, dump_om_model,
precision_mode, op_select_impl_mode, optypelist_for_implmode). The real
provider runs in tests/hardware/test_npu.py (``npu`` marker).
"""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

from m2det_impl.backends.ort.cann import cann_provider_options, onnxruntime_cann_backend
from m2det_impl.backends.registry import availability, runtime_names, runtimes
from m2det_impl.errors import BackendUnavailableError, UsageError

pytestmark = pytest.mark.cpu

P, C, S = 6, 5, 4
CANN_DOC_KEYS = {"device_id", "npu_mem_limit", "arena_extend_strategy", "enable_cann_graph", "dump_graphs",
                 "dump_om_model", "precision_mode", "op_select_impl_mode", "optypelist_for_implmode"}


class NodeArg:
    def __init__(self, name, shape):
        self.name, self.shape, self.type = name, shape, "tensor(float)"


def fake_onnxruntime(providers=("CANNExecutionProvider", "CPUExecutionProvider"), loads=True):
    """``loads=False``: the CANN libraries fail to load and the session silently runs on the CPU."""
    mod = types.ModuleType("onnxruntime")
    mod.__version__ = "1.22.1"
    mod.sessions = []

    class SessionOptions:
        def __init__(self):
            self.intra_op_num_threads = 0

    class InferenceSession:
        def __init__(self, path_or_bytes, sess_options=None, providers=None, provider_options=None, **kwargs):
            assert isinstance(path_or_bytes, str) and provider_options is None and not kwargs
            assert sess_options is None or isinstance(sess_options, SessionOptions)
            for p in providers or []:
                if isinstance(p, tuple):
                    assert len(p) == 2 and isinstance(p[0], str) and isinstance(p[1], dict), p
            names = [p[0] if isinstance(p, tuple) else p for p in providers or ["CPUExecutionProvider"]]
            unknown = [n for n in names if n not in mod.get_available_providers()]
            if unknown:
                raise ValueError(f"{unknown} not in available providers")
            self.path, self.providers, self.sess_options = path_or_bytes, providers, sess_options
            self._active = [n for n in names if loads or n != "CANNExecutionProvider"] or ["CPUExecutionProvider"]
            if "CPUExecutionProvider" not in self._active:
                self._active.append("CPUExecutionProvider")  # ORT always appends the CPU fallback
            mod.sessions.append(self)

        def get_providers(self):
            return list(self._active)

        def get_inputs(self):
            return [NodeArg("image", ["batch", 3, S, S])]

        def get_outputs(self):
            return [NodeArg("loc", ["batch", P, 4]), NodeArg("scores", ["batch", P, C])]

        def run(self, output_names, input_feed):
            (x,) = input_feed.values()
            m = x.reshape(len(x), -1).mean(axis=1)
            out = {"scores": np.broadcast_to(m[:, None, None], (len(x), P, C)).astype(np.float32),
                   "loc": np.broadcast_to(m[:, None, None] * 2, (len(x), P, 4)).astype(np.float32)}
            return [out[n] for n in output_names]

    mod.SessionOptions = SessionOptions
    mod.InferenceSession = InferenceSession
    mod.get_available_providers = lambda: list(providers)
    return mod


@pytest.fixture
def onnx_file(tmp_path):
    path = tmp_path / "m2det512.onnx"
    path.write_bytes(b"fake onnx")
    return path


def test_documented_options_reach_the_session(onnx_file, monkeypatch):
    ort = fake_onnxruntime()
    monkeypatch.setitem(sys.modules, "onnxruntime", ort)
    options = {"device_id": 1, "npu_mem_limit": 2 * 1024 ** 3, "arena_extend_strategy": "kSameAsRequested",
               "enable_cann_graph": False, "dump_graphs": True, "precision_mode": "must_keep_origin_dtype",
               "op_select_impl_mode": "high_precision", "optypelist_for_implmode": "Pooling,SoftmaxV2"}
    backend = onnxruntime_cann_backend(onnx_file, threads=2, **options)
    (session,) = ort.sessions
    assert session.providers == [("CANNExecutionProvider", options)]
    assert session.sess_options.intra_op_num_threads == 2
    assert backend.name == "onnxruntime-cann" and backend.providers[0] == "CANNExecutionProvider"
    images = np.full((3, 3, S, S), 0.5, np.float32)
    scores, loc = backend.infer(images)
    assert scores.shape == (3, P, C) and np.allclose(loc, 1.0)


def test_device_id_defaults_to_zero_and_unset_options_are_left_to_the_provider():
    assert cann_provider_options() == {"device_id": 0}
    assert cann_provider_options(device_id=3, precision_mode=None) == {"device_id": 3}
    assert set(cann_provider_options.__globals__["CANN_OPTIONS"]) == CANN_DOC_KEYS


@pytest.mark.parametrize("options, needle", [
    ({"device_id": -1}, "device_id"),
    ({"device_id": True}, "device_id"),
    ({"npu_mem_limit": 0}, "npu_mem_limit"),
    ({"npu_mem_limit": "2GB"}, "npu_mem_limit"),
    ({"arena_extend_strategy": "kDouble"}, "kNextPowerOfTwo"),
    ({"enable_cann_graph": "yes"}, "enable_cann_graph"),
    ({"dump_graphs": 1}, "dump_graphs"),
    ({"precision_mode": "fp16"}, "force_fp16"),
    ({"op_select_impl_mode": "fast"}, "high_performance"),
    ({"optypelist_for_implmode": "Pooling, SoftmaxV2"}, "optypelist_for_implmode"),
    ({"precision_mode_v2": "fp16"}, "unknown CANNExecutionProvider option 'precision_mode_v2'"),
])
def test_bad_options_give_one_clear_line(options, needle, onnx_file, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # checked before onnxruntime is imported
    with pytest.raises(UsageError) as info:
        onnxruntime_cann_backend(onnx_file, **options)
    message = str(info.value)
    assert needle in message and "\n" not in message and message.startswith("onnxruntime-cann")


def test_without_the_provider_the_error_says_what_to_install(onnx_file, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", fake_onnxruntime(providers=("CPUExecutionProvider",)))
    with pytest.raises(BackendUnavailableError) as info:
        onnxruntime_cann_backend(onnx_file)
    assert "pip install onnxruntime-cann" in str(info.value) and "CPUExecutionProvider" in str(info.value)


def test_without_onnxruntime_the_error_says_what_to_install(onnx_file, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(BackendUnavailableError, match="pip install onnxruntime-cann"):
        onnxruntime_cann_backend(onnx_file)


def test_a_silent_fallback_to_the_cpu_is_refused(onnx_file, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", fake_onnxruntime(loads=False))
    with pytest.raises(BackendUnavailableError, match="fell back to CPUExecutionProvider"):
        onnxruntime_cann_backend(onnx_file)


def test_registry_entry_and_probe():
    entry = runtimes()["onnxruntime-cann"]
    assert (entry.device, entry.module, entry.provider, entry.distributions) == (
        "npu", "onnxruntime", "CANNExecutionProvider", ("onnxruntime-cann", "onnxruntime"))
    assert set(runtime_names("npu")) == {"om", "onnxruntime-cann"}
    ok, why = availability("onnxruntime-cann", importer=lambda name: fake_onnxruntime(("CPUExecutionProvider",)))
    assert not ok and "CANNExecutionProvider" in why
    assert availability("onnxruntime-cann", importer=lambda name: fake_onnxruntime()) == (True, "")


def test_make_backend_runs_the_onnx_export_on_the_given_device(onnx_file, monkeypatch, cfg512):
    from m2det_impl.backends.spec import ModelSpec

    ort = fake_onnxruntime()
    monkeypatch.setitem(sys.modules, "onnxruntime", ort)
    backend = ModelSpec(backend="onnxruntime-cann", onnx=onnx_file, device_id=2).create(cfg512)
    assert backend.name == "onnxruntime-cann"
    assert ort.sessions[0].providers == [("CANNExecutionProvider", {"device_id": 2})]


def test_make_backend_without_the_provider_fails_before_exporting(monkeypatch, cfg512):
    """No ONNX export (minutes, 530 MB) for a backend that cannot run."""
    import m2det_impl.backends.cache as cache
    from m2det_impl.backends.spec import ModelSpec

    monkeypatch.setitem(sys.modules, "onnxruntime", fake_onnxruntime(providers=("CPUExecutionProvider",)))
    monkeypatch.setattr(cache, "cached_onnx", lambda *a, **k: pytest.fail("exported for an unavailable backend"))
    with pytest.raises(BackendUnavailableError, match="install onnxruntime-cann"):
        ModelSpec(backend="onnxruntime-cann").create(cfg512)


@pytest.mark.parametrize("argv", [["run", "--backend", "onnxruntime-cann"], ["bench", "--versus", "onnxruntime-cann"]])
def test_the_cli_offers_it(argv):
    from m2det_impl.cli.app import build_parser

    args = build_parser().parse_args(argv)
    assert "onnxruntime-cann" in (args.backend, getattr(args, "versus", None))
