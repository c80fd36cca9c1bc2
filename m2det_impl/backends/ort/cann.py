"""``onnxruntime-cann``: the ONNX export on an Ascend NPU through ONNX Runtime's
CANNExecutionProvider (pip package ``onnxruntime-cann``), with checked provider options."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Union

from m2det_impl.errors import UsageError

from .session import OnnxRuntimeBackend, require_providers

__all__ = ["CANN_OPTIONS", "cann_provider_options", "onnxruntime_cann_backend"]

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
    require_providers(["CANNExecutionProvider"])
    backend = OnnxRuntimeBackend(path, providers=[("CANNExecutionProvider", provider_options)], threads=threads)
    backend.name = "onnxruntime-cann"
    backend.provider_options = provider_options
    return backend


