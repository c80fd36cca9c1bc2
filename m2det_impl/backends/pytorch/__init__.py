"""The ``torch`` runtime: eager PyTorch on the CPU, the reference the exported graphs are held to."""

from __future__ import annotations

from m2det_impl.backends.registry import Runtime, register

from .runner import TorchBackend

__all__ = ["TorchBackend", "TORCH"]


def _build(spec, cfg):
    import torch

    from m2det_impl.backends.base import default_threads
    from m2det_impl.network.model import load_model

    threads = spec.threads or default_threads()
    if threads:
        torch.set_num_threads(int(threads))
    return TorchBackend(load_model(cfg, spec.weights))


TORCH = register(Runtime(
    name="torch", device="cpu", description="eager PyTorch, float32, on the CPU",
    build=_build, install_hint="pip install torch==2.13.0 (the CPU wheel this project is validated with)",
    module="torch", distributions=("torch",), model_files=frozenset({"weights"}), options=frozenset({"threads"}),
))
