"""Which machine a figure was measured on, and the platform name it files under.

Speed and, through kernel choices, even output tolerances belong to a machine:
the same nightly on another CPU model, another core count, another NPU SoC or
another CANN or driver release measures something else. So every result
carries :func:`machine_identity`, a comparison against a baseline checks it
first (``m2det_impl.gating.regress``), and baselines and known failures are filed
under :func:`platform_name` (``cpu-x86_64-2core``, ``310P3-cann7.0.0-fp16``,
``t4-trt-fp16``). Everything here is best effort and never raises: a probe
that fails yields ``None``.
"""

from __future__ import annotations

import os
import platform
import re
from typing import Dict, Mapping, Optional

__all__ = [
    "MACHINE_KEYS",
    "cpu_model",
    "machine_identity",
    "platform_name",
    "current_platform",
]

#: The keys that identify a machine; a baseline states those it knows.
#: ``driver`` is the NPU's; a GPU host adds its driver, the CUDA version the
#: driver supports and TensorRT's version (``gpu_driver``, ``cuda``, ``tensorrt``).
MACHINE_KEYS = ("cpu", "cores", "arch", "soc", "cann", "driver", "gpu", "gpu_driver", "cuda", "tensorrt")


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what platform knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_identity(npu: Optional[Mapping[str, str]] = None,
                     gpu: Optional[Mapping[str, str]] = None) -> Dict[str, object]:
    """CPU model, core count, architecture, NPU SoC, CANN and driver versions,
    GPU model, its driver, CUDA and TensorRT versions.

    ``cores`` is ``os.cpu_count()``, as ``m2det bench`` records it. ``npu``
    defaults to :func:`m2det_impl.environment.npu_info` (empty off an Ascend
    host), ``gpu`` to :func:`m2det_impl.environment.gpu_info` (empty off an
    NVIDIA host).
    """
    if npu is None:
        try:
            from m2det_impl.environment import npu_info

            npu = npu_info()
        except Exception:  # noqa: BLE001 - identity is best effort
            npu = {}
    if gpu is None:
        from m2det_impl.environment import gpu_info

        gpu = gpu_info()
    soc = npu.get("soc")
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "arch": platform.machine(),
        "soc": f"Ascend{soc}" if soc and not str(soc).startswith("Ascend") else soc,
        "cann": npu.get("cann"),
        "driver": npu.get("driver"),
        "gpu": gpu.get("gpu"),
        "gpu_driver": gpu.get("driver"),
        "cuda": gpu.get("cuda"),
        "tensorrt": gpu.get("tensorrt"),
    }


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-")


def platform_name(identity: Mapping[str, object], precision: str = "fp32", runtime: Optional[str] = None) -> str:
    """The baseline file name for a machine: ``310P3-cann<version>-<precision>``
    on an Ascend host, ``<gpu>-<runtime>-<precision>`` on a GPU host when a GPU
    runtime is named (``t4-trt-fp16``), else ``cpu-<arch>-<cores>core``."""
    soc = identity.get("soc")
    if soc:
        cann = identity.get("cann") or "unknown"
        return f"{str(soc).replace('Ascend', '')}-cann{cann}-{precision}"
    gpu = identity.get("gpu")
    if gpu and runtime:
        short = _slug(str(gpu)).replace("tesla-", "").replace("nvidia-", "")
        return f"{short}-{runtime}-{precision}"
    return f"cpu-{identity.get('arch') or platform.machine()}-{identity.get('cores') or '?'}core"


def current_platform(precision: Optional[str] = None) -> str:
    """This machine's platform name; ``$M2DET_PLATFORM`` overrides it.

    The precision is ``$M2DET_PRECISION`` or, on an Ascend host, ``fp16``
    (``atc``'s default ``force_fp16``), else ``fp32``.
    """
    given = os.environ.get("M2DET_PLATFORM")
    if given:
        return given
    identity = machine_identity()
    precision = precision or os.environ.get("M2DET_PRECISION") or ("fp16" if identity.get("soc") else "fp32")
    return platform_name(identity, precision)
