"""Inference backends behind one interface (see :class:`.base.Backend`).

``TorchBackend`` (eager PyTorch), ``OnnxRuntimeBackend`` (CPU, CUDA, CANN)
and ``OmBackend`` (Ascend ``.om``). The Ascend runtimes are imported only
when an ``OmBackend`` is created.
"""

from .base import Backend, Outputs, check_input_batch
from .om_backend import OmBackend, map_om_outputs
from .onnxruntime_backend import OnnxRuntimeBackend
from .torch_backend import TorchBackend

__all__ = [
    "Backend",
    "Outputs",
    "check_input_batch",
    "TorchBackend",
    "OnnxRuntimeBackend",
    "OmBackend",
    "map_om_outputs",
]
