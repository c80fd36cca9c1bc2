"""The ``simulated-npu`` runtime: a fake 310P that holds the GIL a fixed time per image, for throughput work."""

from __future__ import annotations

from m2det_impl.backends.registry import Runtime, register

from .runner import DEFAULT_MS_PER_IMAGE, SimulatedNpuBackend, hold_gil_sleep

__all__ = ["SimulatedNpuBackend", "hold_gil_sleep", "DEFAULT_MS_PER_IMAGE", "SIMULATED_NPU"]


def _ms_per_image(spec) -> float:
    return DEFAULT_MS_PER_IMAGE if spec.sim_ms_per_image is None else spec.sim_ms_per_image


def _build(spec, cfg):
    return SimulatedNpuBackend(_ms_per_image(spec), input_size=cfg.size)


SIMULATED_NPU = register(Runtime(
    name="simulated-npu", device="sim",
    description="a fake 310P: holds the GIL a fixed time per image (aclruntime does), reference-shaped outputs",
    build=_build, install_hint="nothing to install (ships with m2det-conformance)",
    module="ctypes", model_files=frozenset(), options=frozenset({"sim_ms_per_image"}),
    identity=lambda spec: {"sim_ms_per_image": _ms_per_image(spec)},
))
