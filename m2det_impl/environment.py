"""The software and hardware that decide the numbers.

Two runs of the same model differ by kernel choices that follow the library
versions and the device, so every result is recorded with them. Everything
here is best effort: a probe that fails yields nothing, never an exception,
because it runs inside ``pytest_report_header`` and result writers.
"""

from __future__ import annotations

import functools
import glob
import os
import platform
import re
import shutil
import subprocess
from pathlib import Path
from typing import Dict, List, Optional

__all__ = [
    "distribution_version",
    "library_versions",
    "npu_info",
    "npu_header_lines",
    "ascend_home",
    "gpu_info",
    "parse_nvidia_smi",
]

#: (record key, import name, distribution name) of the libraries that decide the numbers.
_LIBRARIES = (
    ("numpy", "numpy", "numpy"),
    ("torch", "torch", "torch"),
    ("onnx", "onnx", "onnx"),
    ("onnxruntime", "onnxruntime", "onnxruntime"),
    ("opencv", "cv2", "opencv-python-headless"),
    ("numba", "numba", "numba"),
    ("pycocotools", "pycocotools", "pycocotools"),
)
_RUNTIMES = (("ais_bench", "ais_bench", "ais_bench"), ("aclruntime", "aclruntime", "aclruntime"))


def _distributions_of(module_name: str) -> List[str]:
    """The installed distributions that provide ``module_name``. ``packages_distributions()`` reads the
    file list of every installed distribution (half a second in a full environment), so it is read
    once per process: what is installed does not change under a running job."""
    return list(_packages_distributions().get(module_name, []))


@functools.lru_cache(maxsize=1)
def _packages_distributions() -> Dict[str, List[str]]:
    from importlib.metadata import packages_distributions

    return packages_distributions()


def distribution_version(module_name: str, *distributions: str) -> Optional[str]:
    """The installed version of a library: from package metadata
    (``importlib.metadata``; pycocotools, aclruntime and ais_bench have no
    ``__version__``), else the module's ``__version__``; ``None`` when it is
    not installed, ``"?"`` when it is but says no version."""
    from importlib.metadata import PackageNotFoundError, version

    for names in (distributions, None):  # the names given first; the scan of every distribution only if they miss
        for name in names if names is not None else _distributions_of(module_name):
            try:
                return version(name)
            except PackageNotFoundError:
                continue
    try:
        module = __import__(module_name)
    except Exception:  # noqa: BLE001 - absent or broken is the same here
        return None
    found = getattr(module, "__version__", None)
    return str(found) if found is not None else "?"


def library_versions() -> Dict[str, object]:
    """Versions of the libraries and runtimes behind a result, for recording.

    Absent libraries map to ``None``; ``onnxruntime_providers`` lists the
    execution providers the installed onnxruntime offers; ``npu`` holds
    :func:`npu_info` (empty off an Ascend host).
    """
    info: Dict[str, object] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
    }
    for key, module, dist in _LIBRARIES:
        info[key] = distribution_version(module, dist)
    try:
        import onnxruntime

        info["onnxruntime_providers"] = list(onnxruntime.get_available_providers())
    except Exception:  # noqa: BLE001
        info["onnxruntime_providers"] = []
    for key, module, dist in _RUNTIMES:
        info[key] = distribution_version(module, dist)
    info["npu"] = npu_info()
    return info


# ------------------------------------------------------------------ Ascend
def ascend_home() -> Path:
    """The CANN install root: ``$ASCEND_HOME_PATH``'s parent install or /usr/local/Ascend."""
    for var in ("ASCEND_HOME", "ASCEND_INSTALL_PATH"):
        value = os.environ.get(var)
        if value and Path(value).is_dir():
            return Path(value)
    return Path("/usr/local/Ascend")


def _read_version_file(path: Path) -> Optional[str]:
    """``version=X`` / ``Version=X`` / ``package_version=X`` from a CANN info file."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    match = re.search(r"^\s*(?:package_)?version\s*[=:]\s*(\S+)", text, re.IGNORECASE | re.MULTILINE)
    return match.group(1) if match else None


def _cann_version(home: Path) -> Optional[str]:
    toolkit_env = os.environ.get("ASCEND_TOOLKIT_HOME")
    roots = [Path(toolkit_env)] if toolkit_env else []
    roots += [home / "ascend-toolkit" / "latest", home / "latest"]
    patterns = ("version.cfg", "*/version.info", "*/ascend_toolkit_install.info", "version.info")
    for root in roots:
        for pattern in patterns:
            for candidate in sorted(glob.glob(str(root / pattern))):
                version = _read_version_file(Path(candidate))
                if version:
                    return version
    return None


def _run(argv: List[str], timeout: float = 10.0) -> Optional[str]:
    if shutil.which(argv[0]) is None:
        return None
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    text = (done.stdout or "") + (done.stderr or "")
    return text.strip() or None


def _soc_from_npu_smi(text: str) -> Optional[str]:
    match = re.search(r"\b(Ascend\s?)?(310P\d?|310B\d?|310|910[A-Z0-9]*)\b", text)
    return match.group(2) if match else None


def npu_info() -> Dict[str, str]:
    """CANN, driver and ``atc`` versions and the SoC, each only when found."""
    info: Dict[str, str] = {}
    home = ascend_home()
    cann = _cann_version(home)
    if cann:
        info["cann"] = cann
    driver = _read_version_file(home / "driver" / "version.info")
    if driver:
        info["driver"] = driver
    atc = _run(["atc", "--version"])
    if atc:  # keep only a line that states a version, not an error message
        lines = [ln for ln in atc.splitlines() if re.search(r"\d+\.\d+", ln) and "rror" not in ln]
        if lines:
            info["atc"] = lines[-1].strip()[:120]
    smi = _run(["npu-smi", "info"])
    if smi:
        soc = _soc_from_npu_smi(smi)
        if soc:
            info["soc"] = soc
        version = re.search(r"npu-smi\s+(\S+)", smi)
        if version:
            info["npu_smi"] = version.group(1)
    return info


def npu_header_lines() -> List[str]:
    """Lines for ``pytest_report_header``: nothing off an Ascend host."""
    try:
        info = npu_info()
    except Exception:  # noqa: BLE001 - a header must never break a run
        return []
    if not info:
        return []
    return ["ascend: " + ", ".join(f"{k} {v}" for k, v in info.items())]


# ------------------------------------------------------------------ NVIDIA GPU
#: Distributions that may carry TensorRT's Python package or libraries.
_TENSORRT_DISTRIBUTIONS = ("tensorrt", "tensorrt-cu12", "tensorrt-cu12-libs", "tensorrt-libs", "tensorrt-cu11")


def parse_nvidia_smi(query: Optional[str], banner: Optional[str]) -> Dict[str, str]:
    """GPU name and driver from ``nvidia-smi --query-gpu=name,driver_version
    --format=csv,noheader`` (first line), the CUDA version the driver supports
    from plain ``nvidia-smi``'s banner (``CUDA Version: 12.4``)."""
    info: Dict[str, str] = {}
    lines = [ln.strip() for ln in (query or "").splitlines() if ln.strip()]
    name, _, driver = (lines[0] if lines else "").rpartition(",")
    if name.strip() and re.fullmatch(r"\d+(\.\d+)+", driver.strip()):  # else an error message, not a GPU
        info["gpu"], info["driver"] = name.strip(), driver.strip()
    match = re.search(r"CUDA Version:\s*([0-9][0-9.]*)", banner or "")
    if match:
        info["cuda"] = match.group(1)
    return info


def _tensorrt_library_version() -> Optional[str]:
    """``getInferLibVersion()`` of the libnvinfer the loader finds (TensorRT
    installed outside pip), as ``major.minor.patch``."""
    import ctypes

    for name in ("libnvinfer.so.10", "libnvinfer.so.8", "libnvinfer.so"):
        try:
            number = int(ctypes.CDLL(name).getInferLibVersion())
        except (OSError, AttributeError, ValueError):
            continue
        if number >= 10000:  # TensorRT >= 10: MAJOR*10000 + MINOR*100 + PATCH
            return f"{number // 10000}.{number // 100 % 100}.{number % 100}"
        return f"{number // 1000}.{number // 100 % 10}.{number % 100}"  # TensorRT 8: MAJOR*1000 + MINOR*100 + PATCH
    return None


def gpu_info(device_id: int = 0) -> Dict[str, str]:
    """GPU model, driver, the CUDA version the driver supports, the CUDA
    onnxruntime was built for, TensorRT's and onnxruntime's versions: each only
    when found (nothing off an NVIDIA host; never raises)."""
    info: Dict[str, str] = {}
    try:
        info.update(parse_nvidia_smi(
            _run(["nvidia-smi", "-i", str(device_id), "--query-gpu=name,driver_version", "--format=csv,noheader"]),
            _run(["nvidia-smi"])))
        onnxruntime = distribution_version("onnxruntime", "onnxruntime-gpu", "onnxruntime")
        if onnxruntime:
            info["onnxruntime"] = onnxruntime
        try:
            from onnxruntime.capi import build_and_package_info as built  # noqa: PLC0415

            if getattr(built, "cuda_version", None):
                info["onnxruntime_cuda"] = str(built.cuda_version)
        except Exception:  # noqa: BLE001 - a CPU build has no CUDA
            pass
        if info.get("gpu"):  # TensorRT matters (and is looked for) only where there is a GPU
            from importlib.metadata import PackageNotFoundError, version

            for dist in _TENSORRT_DISTRIBUTIONS:
                try:
                    info["tensorrt"] = version(dist)
                    break
                except PackageNotFoundError:
                    continue
            else:
                found = _tensorrt_library_version()
                if found:
                    info["tensorrt"] = found
    except Exception:  # noqa: BLE001 - identity is best effort
        pass
    return info
