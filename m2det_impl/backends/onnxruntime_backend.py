"""ONNX Runtime: CPU by default, CUDA (``onnxruntime-gpu``) or CANN
(``onnxruntime-cann``) when asked for and present.

ONNX Runtime silently falls back to the CPU when a requested provider fails
to load (a missing CUDA library, say); a comparison that believes it ran on
the GPU would then compare the CPU with itself. So the session's providers
are checked after it is created.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np

from m2det_impl.backends.base import default_threads
from m2det_impl.errors import BackendUnavailableError, InputFileError, ModelOutputError, UsageError

from .base import Backend, Outputs

__all__ = [
    "OnnxRuntimeBackend",
    "PROVIDER_ALIASES",
    "CANN_OPTIONS",
    "cann_provider_options",
    "onnxruntime_cann_backend",
    "cuda_backend",
    "tensorrt_backend",
    "tensorrt_engine_dir",
    "provider_options",
]

PROVIDER_ALIASES: Dict[str, str] = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cann": "CANNExecutionProvider",
}
_INSTALL_HINT = {
    "CUDAExecutionProvider": "install onnxruntime-gpu (instead of onnxruntime) on a host with CUDA",
    "CANNExecutionProvider": "install onnxruntime-cann on an Ascend host with the CANN toolkit",
}
_SHORT_NAME = {v: k for k, v in PROVIDER_ALIASES.items()}

ProviderSpec = Union[str, tuple]


def _provider_name(spec: ProviderSpec) -> str:
    name = spec[0] if isinstance(spec, tuple) else spec
    return PROVIDER_ALIASES.get(str(name).lower(), str(name))


class OnnxRuntimeBackend(Backend):
    """An ONNX file in ONNX Runtime.

    ``providers``: execution providers in priority order, full names or the
    aliases ``cpu``, ``cuda``, ``cann`` (a ``(name, options)`` tuple passes
    provider options); default CPU only. ``threads`` sets the intra-op thread
    count (default: ``$M2DET_THREADS``, else ONNX Runtime's choice). The file's outputs must be named
    ``scores`` and ``loc``; they are returned in that order whatever their
    position in the file.
    """

    def __init__(self, path: Union[str, Path], providers: Optional[Sequence[ProviderSpec]] = None,
                 threads: Optional[int] = None):
        try:
            import onnxruntime as ort
        except ImportError:
            raise BackendUnavailableError("onnxruntime is not installed: pip install onnxruntime") from None
        path = Path(path)
        if not path.is_file():
            raise InputFileError(path, "ONNX file not found")
        specs = list(providers) if providers else ["CPUExecutionProvider"]
        wanted = [_provider_name(s) for s in specs]
        available = ort.get_available_providers()
        missing = [w for w in wanted if w not in available]
        if missing:
            hints = "; ".join(_INSTALL_HINT.get(m, f"{m} is not part of this onnxruntime build") for m in missing)
            raise BackendUnavailableError(
                f"onnxruntime {ort.__version__} lacks {', '.join(missing)} (available: "
                f"{', '.join(available)}): {hints}"
            )
        options = ort.SessionOptions()
        threads = default_threads() if threads is None else threads
        if threads is not None:
            options.intra_op_num_threads = int(threads)
        resolved: List[ProviderSpec] = [
            (_provider_name(s), s[1]) if isinstance(s, tuple) else _provider_name(s) for s in specs
        ]
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options, providers=resolved)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types
            raise InputFileError(path, f"ONNX Runtime cannot load it ({type(exc).__name__}: {exc})") from None
        active = self.session.get_providers()
        dropped = [w for w in wanted if w not in active]
        if dropped:
            raise BackendUnavailableError(
                f"{path}: onnxruntime fell back to {', '.join(active)} instead of {', '.join(dropped)} "
                "(its libraries failed to load; see onnxruntime's log)"
            )
        self.providers = active
        self.source = str(path)
        primary = _SHORT_NAME.get(wanted[0], wanted[0])
        self.name = "onnxruntime" if primary == "cpu" else f"onnxruntime-{primary}"
        self._bind_io(path)

    def _bind_io(self, path: Path) -> None:
        inputs = self.session.get_inputs()
        outputs = self.session.get_outputs()
        found = ", ".join(f"{o.name}{list(o.shape)}" for o in outputs)
        names = [o.name for o in outputs]
        if sorted(names) != ["loc", "scores"]:
            raise ModelOutputError(
                f"{path}: outputs are [{found}]; expected exactly 'scores' [B,P,C] and 'loc' [B,P,4] "
                "(re-export with m2det_impl.export; the guide's exporter swaps these names)"
            )
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            raise ModelOutputError(
                f"{path}: inputs are {[(i.name, i.shape) for i in inputs]}; expected one image [B,3,S,S]"
            )
        self.input_name = inputs[0].name
        batch, _, side, _ = inputs[0].shape
        self.static_batch = batch if isinstance(batch, int) and batch > 0 else None
        self.input_size = side if isinstance(side, int) and side > 0 else None
        self.output_names = ["scores", "loc"]

    def _run(self, chunk: np.ndarray) -> Outputs:
        scores, loc = self.session.run(self.output_names, {self.input_name: chunk})
        return scores, loc

    def close(self) -> None:
        self.session = None


# ------------------------------------------------------------------ CANN (onnxruntime-cann)
#: The CANNExecutionProvider's documented options (ONNX Runtime's CANN-ExecutionProvider page):
#: name -> (type, allowed values or None, what it is).
CANN_OPTIONS: Dict[str, tuple] = {
    "device_id": (int, None, "NPU device id, 0 <= id < device count (default 0)"),
    "npu_mem_limit": (int, None, "arena size limit in bytes (default: no limit)"),
    "arena_extend_strategy": (str, ("kNextPowerOfTwo", "kSameAsRequested"), "how the arena grows"),
    "enable_cann_graph": (bool, None, "whole-graph engine (default true; false: single-operator engine)"),
    "dump_graphs": (bool, None, "dump the subgraphs as ONNX (default false)"),
    "dump_om_model": (bool, None, "dump the offline .om model (default true)"),
    "precision_mode": (str, ("force_fp32", "cube_fp16in_fp32out", "force_fp16", "allow_fp32_to_fp16",
                             "must_keep_origin_dtype", "allow_mix_precision", "allow_mix_precision_fp16"),
                       "operator precision (default force_fp16, as atc)"),
    "op_select_impl_mode": (str, ("high_precision", "high_performance"),
                            "operator implementation mode (default high_performance)"),
    "optypelist_for_implmode": (str, None, "comma-separated operator types that use op_select_impl_mode"),
}
_CANN_INSTALL = ("onnxruntime-cann with CANNExecutionProvider: pip install onnxruntime-cann (instead of onnxruntime) "
                 "on an Ascend host with the CANN toolkit (source set_env.sh first)")


def cann_provider_options(**options: object) -> Dict[str, object]:
    """The options dict for ``("CANNExecutionProvider", options)``, checked against
    :data:`CANN_OPTIONS`; a bad name or value is a :class:`UsageError` naming the
    option and what it takes. ``device_id`` is always present (default 0)."""
    out: Dict[str, object] = {"device_id": 0}
    for name, value in options.items():
        if value is None:
            continue
        if name not in CANN_OPTIONS:
            raise UsageError(f"onnxruntime-cann: unknown CANNExecutionProvider option {name!r}; "
                             f"known: {', '.join(CANN_OPTIONS)}")
        kind, allowed, what = CANN_OPTIONS[name]
        lowest = 0 if name == "device_id" else 1
        if kind is int and (isinstance(value, bool) or not isinstance(value, int) or value < lowest):
            raise UsageError(f"onnxruntime-cann option {name}: expected an integer >= {lowest} ({what}), "
                             f"got {value!r}")
        if kind is bool and not isinstance(value, bool):
            raise UsageError(f"onnxruntime-cann option {name}: expected True or False ({what}), got {value!r}")
        if kind is str:
            if not isinstance(value, str) or not value.strip():
                raise UsageError(f"onnxruntime-cann option {name}: expected text ({what}), got {value!r}")
            if allowed is not None and value not in allowed:
                raise UsageError(f"onnxruntime-cann option {name}: {value!r} is not one of {', '.join(allowed)}")
            if name == "optypelist_for_implmode" and (any(c.isspace() for c in value)
                                                      or not all(value.split(","))):
                raise UsageError(f"onnxruntime-cann option {name}: expected operator types separated by commas, "
                                 f"e.g. 'Pooling,SoftmaxV2', got {value!r}")
        out[name] = value
    return out


def onnxruntime_cann_backend(path: Union[str, Path], threads: Optional[int] = None,
                             **options: object) -> OnnxRuntimeBackend:
    """An ONNX file on an Ascend NPU through ONNX Runtime's ``CANNExecutionProvider``
    (pip package ``onnxruntime-cann``), options as :func:`cann_provider_options`.
    Without the provider, :class:`BackendUnavailableError` says what to install; the
    provider silently falling back to the CPU is refused as well (see the module)."""
    provider_options = cann_provider_options(**options)  # bad options fail before onnxruntime is imported
    try:
        import onnxruntime as ort
    except ImportError:
        raise BackendUnavailableError(f"onnxruntime is not installed: {_CANN_INSTALL}") from None
    available = list(ort.get_available_providers())
    if "CANNExecutionProvider" not in available:
        raise BackendUnavailableError(f"onnxruntime {getattr(ort, '__version__', '?')} has no CANNExecutionProvider "
                                      f"(it offers {', '.join(available) or 'none'}): {_CANN_INSTALL}")
    backend = OnnxRuntimeBackend(path, providers=[("CANNExecutionProvider", provider_options)], threads=threads)
    backend.name = "onnxruntime-cann"
    backend.provider_options = provider_options
    return backend


# ------------------------------------------------------------------ the gpu layer (issue #15)
# Kept apart from the class above: the two GPU backends are the class with
# checked provider options, built by the functions below.
#
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
GPU_INSTALL_HINT = {
    "CUDAExecutionProvider": "pip install onnxruntime-gpu (instead of onnxruntime) on a host with an NVIDIA GPU, "
                             "its driver, CUDA 12 and cuDNN 9",
    "TensorrtExecutionProvider": "pip install onnxruntime-gpu and TensorRT 10 (pip install tensorrt-cu12, or "
                                 "NVIDIA's TensorRT libraries on LD_LIBRARY_PATH) on a host with an NVIDIA GPU",
}


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
    from m2det_impl.errors import UsageError

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


def _require_gpu_providers(wanted: Sequence[str]) -> None:
    """:class:`BackendUnavailableError` naming what to install, before a session is tried."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise BackendUnavailableError(f"onnxruntime is not installed: {GPU_INSTALL_HINT[wanted[0]]}") from None
    available = list(ort.get_available_providers())
    missing = [w for w in wanted if w not in available]
    if missing:
        raise BackendUnavailableError(
            f"onnxruntime {getattr(ort, '__version__', '?')} lacks {', '.join(missing)} (available: "
            f"{', '.join(available) or 'none'}): " + "; ".join(GPU_INSTALL_HINT[m] for m in missing))


def cuda_backend(path: Union[str, Path], device_id: int = 0, options: Optional[Dict[str, object]] = None,
                 threads: Optional[int] = None) -> OnnxRuntimeBackend:
    """``onnxruntime-cuda``: ONNX Runtime's CUDAExecutionProvider, float32 (``use_tf32`` 0).

    The CPU provider stays listed after it (ONNX Runtime adds it anyway); a
    session that falls back to it is refused by :class:`OnnxRuntimeBackend`.
    """
    _require_gpu_providers(["CUDAExecutionProvider"])
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
    from m2det_impl.environment import gpu_info

    from .cache import cache_dir, key_of

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
    _require_gpu_providers(["TensorrtExecutionProvider", "CUDAExecutionProvider"])
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
