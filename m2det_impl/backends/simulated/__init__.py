"""The ``simulated-npu`` runtime: a fake 310P that holds the GIL a fixed time per image, for throughput work."""

from __future__ import annotations

from m2det_impl.backends.registry import Runtime, register

from .runner import DEFAULT_MS_PER_IMAGE, SimulatedNpuBackend, hold_gil_sleep

__all__ = ["SimulatedNpuBackend", "hold_gil_sleep", "DEFAULT_MS_PER_IMAGE", "SIMULATED_NPU"]


def _build(spec, cfg):
    return SimulatedNpuBackend(spec.sim_ms_per_image, input_size=cfg.size)


SIMULATED_NPU = register(Runtime(
    name="simulated-npu", device="sim",
    description="a fake 310P: holds the GIL a fixed time per image (aclruntime does), reference-shaped outputs",
    build=_build, install_hint="nothing to install (ships with m2det-conformance)",
    module="ctypes", model_files=frozenset(),
    identity=lambda spec: {"sim_ms_per_image": spec.sim_ms_per_image},
))
