"""The gpu layer's two runtimes (``onnxruntime-cuda``, ``tensorrt``): the
ONNX Runtime session with checked provider options.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Union

from m2det_impl.errors import UsageError

from .session import INSTALL_HINTS, OnnxRuntimeBackend, require_providers

__all__ = ["cuda_backend", "tensorrt_backend", "tensorrt_engine_dir", "provider_options",
           "CUDA_OPTION_KEYS", "TENSORRT_OPTION_KEYS", "GPU_INSTALL_HINT"]

# Why TensorRT through ONNX Runtime's TensorrtExecutionProvider rather than
# TensorRT's own Python API (``tensorrt`` + an engine built by hand): one
# adapter (this class: the same session, the same silent-fallback check, the
# same static/dynamic batch handling), the same ONNX file the CPU, CUDA and
# atc paths take, and the same input/output contract (outputs found by name,
# ``scores`` and ``loc``, whatever their order), so a TensorRT run differs from
# the CPU reference in the runtime alone. TensorRT's API would need a second
# adapter with its own bindings, buffers, CUDA streams and output mapping, and
# a PyCUDA or cuda-python dependency; the engine it builds is the same.

#: Provider options each GPU provider accepts here (ONNX Runtime's documented
#: names); anything else is refused, since ONNX Runtime ignores or rejects
#: unknown keys depending on its version.
CUDA_OPTION_KEYS = frozenset({
    "device_id", "use_tf32", "gpu_mem_limit", "arena_extend_strategy", "cudnn_conv_algo_search",
    "do_copy_in_default_stream", "cudnn_conv_use_max_workspace", "enable_cuda_graph",
})
TENSORRT_OPTION_KEYS = frozenset({
    "device_id", "trt_fp16_enable", "trt_engine_cache_enable", "trt_engine_cache_path",
    "trt_timing_cache_enable", "trt_timing_cache_path", "trt_max_workspace_size",
    "trt_builder_optimization_level", "trt_max_partition_iterations", "trt_min_subgraph_size",
    "trt_profile_min_shapes", "trt_profile_max_shapes", "trt_profile_opt_shapes", "trt_force_sequential_engine_build",
})
#: What each GPU backend is, fixed: a caller may not turn it into something else.
CUDA_FIXED_OPTIONS = {"use_tf32": "0"}  # float32 like the CPU: TF32's 10-bit mantissa is a precision choice
TENSORRT_FIXED_OPTIONS = {"trt_fp16_enable": "1", "trt_engine_cache_enable": "1"}
GPU_INSTALL_HINT = {p: INSTALL_HINTS[p] for p in ("CUDAExecutionProvider", "TensorrtExecutionProvider")}


def _option_text(value: object) -> str:
    """ONNX Runtime takes provider options as strings; booleans as ``1``/``0``."""
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def provider_options(provider: str, allowed: frozenset, fixed: Dict[str, str], defaults: Dict[str, object],
                     given: Optional[Dict[str, object]] = None) -> Dict[str, str]:
    """``defaults`` overlaid with ``given``, checked: every key known for
    ``provider``, every value a plain string/number/bool, and the ``fixed``
    options (what makes the backend what its name says) unchanged."""
    merged = {**defaults, **dict(given or {})}
    unknown = sorted(k for k in merged if k not in allowed)
    if unknown:
        raise UsageError(f"{provider}: unknown provider option(s) {', '.join(unknown)}; "
                         f"known: {', '.join(sorted(allowed))}")
    bad = sorted(k for k, v in merged.items() if not isinstance(v, (str, int, float, bool)))
    if bad:
        raise UsageError(f"{provider}: option(s) {', '.join(bad)} must be a string, number or boolean")
    options = {k: _option_text(v) for k, v in merged.items()}
    for key, value in fixed.items():
        if options.setdefault(key, value) != value:
            raise UsageError(f"{provider}: option {key} must be {value} for this backend, got {options[key]}")
    return options


def cuda_backend(path: Union[str, Path], device_id: int = 0, options: Optional[Dict[str, object]] = None,
                 threads: Optional[int] = None) -> OnnxRuntimeBackend:
    """``onnxruntime-cuda``: ONNX Runtime's CUDAExecutionProvider, float32 (``use_tf32`` 0).

    The CPU provider stays listed after it (ONNX Runtime adds it anyway); a
    session that falls back to it is refused by :class:`OnnxRuntimeBackend`.
    """
    require_providers(["CUDAExecutionProvider"])
    opts = provider_options("CUDAExecutionProvider", CUDA_OPTION_KEYS, CUDA_FIXED_OPTIONS,
                            {"device_id": int(device_id)}, options)
    backend = OnnxRuntimeBackend(path, providers=[("CUDAExecutionProvider", opts), "CPUExecutionProvider"],
                                 threads=threads)
    backend.name = "onnxruntime-cuda"
    backend.provider_options = {"CUDAExecutionProvider": opts}
    return backend


def tensorrt_engine_dir(path: Union[str, Path], device_id: int = 0) -> Path:
    """Where the TensorRT engines of one ONNX file live: under the project
    cache (:func:`m2det_impl.backends.cache.cache_dir`), keyed by what makes an
    engine unportable (the file, the GPU, onnxruntime's and TensorRT's
    versions; ONNX Runtime checks none of them when it loads a cached engine)."""
    from m2det_impl.backends.cache import cache_dir, key_of
    from m2det_impl.environment import gpu_info

    stat = Path(path).stat()
    parts = {"model": str(Path(path).resolve()), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns,
             "device_id": int(device_id),
             **{k: v for k, v in gpu_info(device_id).items() if k in ("gpu", "driver", "onnxruntime", "tensorrt")}}
    return cache_dir() / "tensorrt" / key_of(parts)


def tensorrt_backend(path: Union[str, Path], device_id: int = 0, options: Optional[Dict[str, object]] = None,
                     engine_dir: Optional[Union[str, Path]] = None) -> OnnxRuntimeBackend:
    """``tensorrt``: TensorRT fp16 (``trt_fp16_enable``) through ONNX Runtime's
    TensorrtExecutionProvider, engines and timing cache kept under
    :func:`tensorrt_engine_dir` (an M2Det512 engine takes minutes to build).

    CUDA follows it for any node TensorRT does not take (ONNX Runtime's
    documented arrangement); a session whose TensorRT provider failed to load
    is refused. With a dynamic-batch file, the first call at a new batch size
    builds (or loads) an engine for it: warm up before timing.
    """
    require_providers(["TensorrtExecutionProvider", "CUDAExecutionProvider"])
    folder = Path(engine_dir) if engine_dir is not None else tensorrt_engine_dir(path, device_id)
    folder.mkdir(parents=True, exist_ok=True)
    opts = provider_options("TensorrtExecutionProvider", TENSORRT_OPTION_KEYS, TENSORRT_FIXED_OPTIONS,
                            {"device_id": int(device_id), "trt_engine_cache_path": str(folder),
                             "trt_timing_cache_enable": True, "trt_timing_cache_path": str(folder)}, options)
    cuda = provider_options("CUDAExecutionProvider", CUDA_OPTION_KEYS, CUDA_FIXED_OPTIONS,
                            {"device_id": int(device_id)})
    backend = OnnxRuntimeBackend(path, providers=[("TensorrtExecutionProvider", opts),
                                                  ("CUDAExecutionProvider", cuda), "CPUExecutionProvider"])
    backend.name = "tensorrt"
    backend.provider_options = {"TensorrtExecutionProvider": opts, "CUDAExecutionProvider": cuda}
    backend.engine_dir = folder
    return backend
