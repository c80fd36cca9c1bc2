"""The backends this project knows, in one place: name, device, whether it can run here, which version.

Every other module asks here for backend names (the CLI's choices, the
capability probes of the test suite, report headers), so adding a runtime
means adding one entry. Probes import nothing heavy until asked, and never
raise: an absent runtime is a reason string, not an exception.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

from m2det_impl.environment import distribution_version
from m2det_impl.errors import UsageError

__all__ = ["BackendEntry", "BACKENDS", "backend_names", "availability", "is_available", "backend_version"]


@dataclass(frozen=True)
class BackendEntry:
    """One runtime: what it runs on, which module and distribution carry it,
    and what it needs beyond that (an ONNX Runtime execution provider)."""

    name: str
    device: str  # cpu, npu, gpu, sim (simulated)
    module: str  # import name of the runtime
    distributions: Tuple[str, ...]  # pip distributions that may carry it, first found wins
    provider: Optional[str] = None  # ONNX Runtime execution provider it needs
    description: str = ""


BACKENDS: Dict[str, BackendEntry] = {e.name: e for e in (
    BackendEntry("onnxruntime", "cpu", "onnxruntime", ("onnxruntime",), "CPUExecutionProvider",
                 "ONNX Runtime, float32, on the CPU"),
    BackendEntry("onnxruntime-int8", "cpu", "onnxruntime", ("onnxruntime",), "CPUExecutionProvider",
                 "ONNX Runtime on the CPU with the static int8 (QDQ) model"),
    BackendEntry("torch", "cpu", "torch", ("torch",), None, "eager PyTorch, float32, on the CPU"),
    BackendEntry("om", "npu", "aclruntime", ("aclruntime", "ais_bench"), None,
                 "an atc-built .om on an Ascend NPU through aclruntime / ais_bench"),
    BackendEntry("onnxruntime-cann", "npu", "onnxruntime", ("onnxruntime-cann", "onnxruntime"), "CANNExecutionProvider",
                 "ONNX Runtime's CANNExecutionProvider (pip onnxruntime-cann) on an Ascend NPU, from the ONNX export"),
    BackendEntry("simulated-npu", "sim", "ctypes", (), None,
                 "a fake 310P: holds the GIL a fixed time per image (aclruntime does), reference-shaped outputs"),
    # gpu layer (issue #15): both through onnxruntime-gpu, the same ONNX file and output contract
    BackendEntry("onnxruntime-cuda", "gpu", "onnxruntime", ("onnxruntime-gpu", "onnxruntime"), "CUDAExecutionProvider",
                 "ONNX Runtime's CUDA execution provider, float32 with TF32 off"),
    BackendEntry("tensorrt", "gpu", "onnxruntime", ("onnxruntime-gpu",), "TensorrtExecutionProvider",
                 "TensorRT fp16 through ONNX Runtime's TensorRT execution provider (engines cached)"),
)}


def backend_names(device: Optional[str] = None) -> Tuple[str, ...]:
    """Names of the known backends, optionally only those of one device kind."""
    return tuple(n for n, e in BACKENDS.items() if device is None or e.device == device)


def _entry(name: str) -> BackendEntry:
    if name not in BACKENDS:
        raise UsageError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    return BACKENDS[name]


def availability(name: str, importer: Callable[[str], object] = importlib.import_module) -> Tuple[bool, str]:
    """(can it run here, why not). Imports the runtime; never raises."""
    entry = _entry(name)
    try:
        module = importer(entry.module)
    except Exception as exc:  # noqa: BLE001 - absent or broken runtimes are the same to a probe
        return False, f"{entry.module} is not importable ({type(exc).__name__}: {exc})"
    if entry.provider is not None:
        try:
            providers = list(module.get_available_providers())
        except Exception as exc:  # noqa: BLE001
            return False, f"{entry.module} cannot list its execution providers ({exc})"
        if entry.provider not in providers:
            return False, f"{entry.module} has no {entry.provider} (it offers {', '.join(providers) or 'none'})"
    return True, ""


def is_available(name: str) -> bool:
    """Whether ``name`` can run on this host (see :func:`availability`)."""
    return availability(name)[0]


def backend_version(name: str) -> Optional[str]:
    """The installed version of the runtime behind ``name`` (package metadata), or ``None``."""
    entry = _entry(name)
    return distribution_version(entry.module, *entry.distributions)
