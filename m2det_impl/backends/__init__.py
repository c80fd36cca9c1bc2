"""Inference runtimes behind one interface (:class:`.base.Backend`), one registered entry each.

The runtime packages: ``ort`` (ONNX Runtime: CPU float32 and int8, CUDA,
TensorRT, CANN), ``pytorch`` (eager PyTorch), ``ascend`` (``.om`` through
aclruntime / ais_bench, and atc), ``simulated`` (a fake 310P holding the GIL).
Jobs name what they run with a :class:`.spec.ModelSpec` and the registry
(:mod:`.registry`) builds it; nothing outside this folder names a runtime.
Hardware SDKs are imported only when a backend that needs them is created.
"""

from .base import Backend, Outputs, check_input_batch
from .registry import DEFAULT_RUNTIME, Runtime, availability, runtime, runtime_names, runtimes
from .spec import GOLDEN_WARNING, ModelSpec

__all__ = [
    "Backend",
    "Outputs",
    "check_input_batch",
    "Runtime",
    "DEFAULT_RUNTIME",
    "runtime",
    "runtimes",
    "runtime_names",
    "availability",
    "ModelSpec",
    "GOLDEN_WARNING",
]
