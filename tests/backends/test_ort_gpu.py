"""The gpu layer's adapters on a host without a GPU: a fake ``onnxruntime``
module that follows ONNX Runtime's documented Python API
(``get_available_providers``, ``SessionOptions``, ``InferenceSession(path,
sess_options=, providers=[name | (name, {option: value})])``,
``session.get_providers()``, ``get_inputs()``, ``get_outputs()``, ``run``)
records what the adapters ask for: which providers, in which order, with
which options, and what happens when a provider is absent or fails to load.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import List

import numpy as np
import pytest

from m2det_impl.backends.ort import gpu as ortb
from m2det_impl.backends.registry import availability, runtime_names, runtimes
from m2det_impl.cli import main
from m2det_impl.errors import BackendUnavailableError, UsageError
from m2det_impl.exit_codes import EXIT_BAD_INPUT

pytestmark = pytest.mark.cpu

CPU, CUDA, TRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"


class _NodeArg:
    def __init__(self, name: str, shape: list):
        self.name, self.shape, self.type = name, shape, "tensor(float)"


def fake_onnxruntime(available=(TRT, CUDA, CPU), fails_to_load=()) -> types.ModuleType:
    """A stand-in for ``onnxruntime`` (onnxruntime-gpu's module); ``fails_to_load``
    lists providers a session silently drops, as ONNX Runtime does when a
    provider's libraries do not load."""
    ort = types.ModuleType("onnxruntime")
    ort.__version__ = "1.22.0"
    ort.sessions = []

    class SessionOptions:
        intra_op_num_threads = 0

    class InferenceSession:
        def __init__(self, path, sess_options=None, providers=None, provider_options=None):
            for p in providers:  # the documented forms only
                assert isinstance(p, str) or (isinstance(p, tuple) and len(p) == 2 and isinstance(p[1], dict)), p
                if isinstance(p, tuple):
                    assert all(isinstance(k, str) and isinstance(v, str) for k, v in p[1].items()), p
            names = [p if isinstance(p, str) else p[0] for p in providers]
            unknown = [n for n in names if n not in available]
            if unknown:
                raise ValueError(f"unknown provider {unknown}")
            self.path, self.sess_options, self.providers = path, sess_options, list(providers)
            self._active = [n for n in names if n not in fails_to_load] + ([CPU] if CPU not in names else [])
            ort.sessions.append(self)

        def get_providers(self):
            return list(self._active)

        def get_inputs(self):
            return [_NodeArg("image", ["batch", 3, 512, 512])]

        def get_outputs(self):
            return [_NodeArg("loc", ["batch", 6, 4]), _NodeArg("scores", ["batch", 6, 81])]

        def run(self, names, feed):
            batch = next(iter(feed.values())).shape[0]
            shapes = {"scores": (batch, 6, 81), "loc": (batch, 6, 4)}
            return [np.full(shapes[n], 0.5, np.float32) for n in names]

    ort.SessionOptions = SessionOptions
    ort.InferenceSession = InferenceSession
    ort.get_available_providers = lambda: list(available)
    return ort


@pytest.fixture
def model(tmp_path) -> Path:
    path = tmp_path / "m2det512.onnx"
    path.write_bytes(b"not read by the fake")
    return path


@pytest.fixture
def fake(monkeypatch, tmp_path):
    """Install a fake onnxruntime; ``fake(**kwargs)`` replaces it. The project
    cache is a temporary folder."""
    monkeypatch.setenv("M2DET_CACHE_DIR", str(tmp_path / "cache"))

    def install(**kwargs):
        module = fake_onnxruntime(**kwargs)
        monkeypatch.setitem(sys.modules, "onnxruntime", module)
        return module

    install()
    return install


def _providers(session) -> List:
    return session.providers


# ------------------------------------------------------------------ CUDA
def test_cuda_runs_float32_on_the_asked_device(fake, model):
    ort = fake()
    with ortb.cuda_backend(model, device_id=1) as backend:
        scores, loc = backend.infer(np.zeros((2, 3, 512, 512), np.float32))
    assert _providers(ort.sessions[0]) == [(CUDA, {"device_id": "1", "use_tf32": "0"}), CPU]
    assert backend.name == "onnxruntime-cuda" and backend.providers[0] == CUDA
    assert scores.shape == (2, 6, 81) and loc.shape == (2, 6, 4)


def test_cuda_refuses_tf32_and_unknown_options(fake, model):
    with pytest.raises(UsageError, match="use_tf32 must be 0"):
        ortb.cuda_backend(model, options={"use_tf32": 1})
    with pytest.raises(UsageError, match="unknown provider option.*use_tf23.*known: .*use_tf32"):
        ortb.cuda_backend(model, options={"use_tf23": 0})
    with pytest.raises(UsageError, match="gpu_mem_limit must be a string, number or boolean"):
        ortb.cuda_backend(model, options={"gpu_mem_limit": [1]})


def test_cuda_options_are_strings_and_booleans_are_1_or_0(fake, model):
    ort = fake()
    ortb.cuda_backend(model, options={"do_copy_in_default_stream": True, "gpu_mem_limit": 2 ** 31})
    options = ort.sessions[0].providers[0][1]
    assert options == {"device_id": "0", "use_tf32": "0", "do_copy_in_default_stream": "1",
                       "gpu_mem_limit": str(2 ** 31)}


# ------------------------------------------------------------------ TensorRT
def test_tensorrt_runs_fp16_with_engines_in_the_project_cache(fake, model, tmp_path):
    from m2det_impl.backends.cache import cache_dir

    ort = fake()
    with ortb.tensorrt_backend(model) as backend:
        backend.infer(np.zeros((1, 3, 512, 512), np.float32))
    (trt, trt_options), (cuda, cuda_options), cpu = _providers(ort.sessions[0])
    assert (trt, cuda, cpu) == (TRT, CUDA, CPU)  # TensorRT first, CUDA for what it does not take
    assert trt_options["trt_fp16_enable"] == "1" and trt_options["trt_engine_cache_enable"] == "1"
    engines = Path(trt_options["trt_engine_cache_path"])
    assert engines.is_dir() and engines.parent == cache_dir() / "tensorrt"
    assert cache_dir() == tmp_path / "cache"
    assert trt_options["trt_timing_cache_path"] == str(engines)
    assert cuda_options["use_tf32"] == "0"
    assert backend.name == "tensorrt" and backend.engine_dir == engines


def test_tensorrt_refuses_to_be_anything_but_an_fp16_cached_engine(fake, model):
    with pytest.raises(UsageError, match="trt_fp16_enable must be 1"):
        ortb.tensorrt_backend(model, options={"trt_fp16_enable": False})
    with pytest.raises(UsageError, match="trt_engine_cache_enable must be 1"):
        ortb.tensorrt_backend(model, options={"trt_engine_cache_enable": "0"})
    with pytest.raises(UsageError, match="unknown provider option.*trt_fp8_enable"):
        ortb.tensorrt_backend(model, options={"trt_fp8_enable": True})


def test_engines_of_another_model_file_go_elsewhere(fake, model, tmp_path):
    other = tmp_path / "other.onnx"
    other.write_bytes(b"another model, another engine")
    assert ortb.tensorrt_engine_dir(model) == ortb.tensorrt_engine_dir(model)
    assert ortb.tensorrt_engine_dir(model) != ortb.tensorrt_engine_dir(other)
    assert ortb.tensorrt_engine_dir(model, 0) != ortb.tensorrt_engine_dir(model, 1)


# ------------------------------------------------------------------ absent or broken providers
@pytest.mark.parametrize("build, available, needle", [
    (ortb.cuda_backend, (CPU,), "lacks CUDAExecutionProvider.*pip install onnxruntime-gpu"),
    (ortb.tensorrt_backend, (CUDA, CPU), "lacks TensorrtExecutionProvider.*TensorRT 10"),
])
def test_an_absent_provider_names_what_to_install(fake, model, build, available, needle):
    ort = fake(available=available)
    with pytest.raises(BackendUnavailableError, match=needle):
        build(model)
    assert ort.sessions == []  # refused before a session was tried


def test_without_onnxruntime_the_error_names_the_package(monkeypatch, model):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails
    with pytest.raises(BackendUnavailableError, match="onnxruntime is not installed.*onnxruntime-gpu"):
        ortb.cuda_backend(model)


@pytest.mark.parametrize("build, dropped", [(ortb.cuda_backend, CUDA), (ortb.tensorrt_backend, TRT)])
def test_a_silent_fallback_to_the_cpu_is_refused(fake, model, build, dropped):
    fake(fails_to_load=(dropped,))
    with pytest.raises(BackendUnavailableError, match=f"fell back .* instead of .*{dropped}"):
        build(model)


# ------------------------------------------------------------------ registry, jobs, command line
def test_the_registry_knows_both_gpu_backends_and_their_providers(fake):
    assert runtime_names("gpu") == ("onnxruntime-cuda", "tensorrt")
    assert (runtimes()["onnxruntime-cuda"].provider, runtimes()["tensorrt"].provider) == (CUDA, TRT)
    assert availability("tensorrt") == (True, "")
    fake(available=(CUDA, CPU))
    ok, why = availability("tensorrt")
    assert not ok and "no TensorrtExecutionProvider" in why
    assert availability("onnxruntime-cuda") == (True, "")


@pytest.mark.parametrize("kind, first", [("onnxruntime-cuda", CUDA), ("tensorrt", TRT)])
def test_make_backend_builds_each_gpu_backend(fake, model, kind, first, cfg512):
    from m2det_impl.backends.spec import ModelSpec

    ort = fake()
    backend = ModelSpec(backend=kind, onnx=model, device_id=2).create(cfg512)
    assert backend.name == kind and backend.providers[0] == first
    assert ort.sessions[0].providers[0][1]["device_id"] == "2"


@pytest.mark.parametrize("argv", [
    ["run", "--backend", "tensorrt"],
    ["bench", "--backend", "onnxruntime-cuda"],
    ["bench", "--versus", "tensorrt"],
])
def test_the_command_line_fails_first_naming_what_to_install(fake, model, tmp_path, capsys, argv):
    fake(available=(CPU,))
    out = tmp_path / "out"
    assert main([*argv, "--onnx", str(model), "--output", str(out), "--quiet", "--limit", "1"]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "Traceback" not in err and "onnxruntime-gpu" in err and "ExecutionProvider" in err
    assert not out.exists()  # before any output folder or model work
