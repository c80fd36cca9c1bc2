"""Inference backends behind one interface (see :class:`.base.Backend`).

``TorchBackend`` (eager PyTorch), ``OnnxRuntimeBackend`` (CPU, CUDA, CANN)
``OmBackend`` (Ascend ``.om``) and
``SimulatedNpuBackend`` (a fake 310P holding the GIL, for throughput work). The Ascend runtimes are imported only
when an ``OmBackend`` is created.
"""

from .base import Backend, Outputs, check_input_batch
from .om_backend import OmBackend, map_om_outputs
from .onnxruntime_backend import OnnxRuntimeBackend
from .simulated import SimulatedNpuBackend
from .torch_backend import TorchBackend

__all__ = [
    "Backend",
    "Outputs",
    "check_input_batch",
    "TorchBackend",
    "OnnxRuntimeBackend",
    "OmBackend",
    "SimulatedNpuBackend",
    "map_om_outputs",
]
