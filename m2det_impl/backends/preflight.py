"""Checks that fail a long run in its first second instead of its last hour.

An evaluation over COCO minival takes hours on a laptop and minutes on an
NPU; finding only at the end (or after a 15 s export and a model load) that
the ``.om`` path has a typo, the Ascend runtime is not installed, or one of
5000 ``.bin`` inputs is truncated wastes all of it. Each check here is cheap
(a stat, an import) and raises the project's own error naming what is wrong.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Iterable, Optional, Sequence

from m2det_impl._io import PathLike
from m2det_impl.errors import BackendUnavailableError, CheckpointError, InputFileError
from m2det_impl.network.config import M2DetConfig

__all__ = [
    "check_model_inputs",
    "check_om_runtime",
    "check_bin_inputs",
    "check_gpu_runtime",
]

_OM_RUNTIMES = ("ais_bench.infer.interface", "aclruntime")


def check_om_runtime(modules: Sequence[str] = _OM_RUNTIMES) -> str:
    """The name of the first importable Ascend runtime, or
    :class:`BackendUnavailableError` saying what to install.

    Importing is what :class:`~m2det_impl.backends.OmBackend` does later, so a
    runtime that imports here but is broken (no CANN libraries) fails there,
    still before any image is processed.
    """
    from m2det_impl.backends.om_backend import INSTALL_HINT

    errors = []
    for name in modules:
        try:
            importlib.import_module(name)
            return name
        except Exception as exc:  # noqa: BLE001 - a half-installed SDK raises more than ImportError
            errors.append(f"{name}: {type(exc).__name__}: {exc}")
    raise BackendUnavailableError(f"{INSTALL_HINT} ({'; '.join(errors)})")


def _existing_file(path: Optional[PathLike], what: str, error=InputFileError) -> None:
    if path is None:
        return
    p = Path(path)
    if not p.exists():
        raise error(p, f"{what} not found")
    if not p.is_file():
        raise error(p, f"expected a {what}, found a folder or a device")


def check_model_inputs(backend: Optional[str], *, weights: Optional[PathLike] = None,
                       onnx: Optional[PathLike] = None, om: Optional[PathLike] = None) -> None:
    """Everything a backend will need, checked before the dataset is read or an
    output folder written: the files given exist, an ``om`` run has an ``.om``
    and an Ascend runtime."""
    _existing_file(weights, "checkpoint file", CheckpointError)
    _existing_file(onnx, "ONNX file")
    if backend == "om":
        if om is None:
            raise InputFileError(None, "the om backend needs an .om model: give --om PATH")
        _existing_file(om, ".om model")
        check_om_runtime()
    elif om is not None and backend is not None:
        raise InputFileError(Path(om), f"--om is for --backend om, not --backend {backend}")
    check_gpu_runtime(backend)


def check_gpu_runtime(backend: Optional[str]) -> None:
    """A GPU backend's execution provider is offered by the installed
    onnxruntime, or :class:`BackendUnavailableError` naming what to install."""
    from m2det_impl.backends.onnxruntime_backend import GPU_INSTALL_HINT
    from m2det_impl.backends.registry import BACKENDS, availability

    entry = BACKENDS.get(backend or "")
    if entry is None or entry.device != "gpu":
        return
    ok, why = availability(entry.name)
    if not ok:
        raise BackendUnavailableError(f"--backend {entry.name}: {why}: {GPU_INSTALL_HINT.get(entry.provider, '')}")


def check_bin_inputs(files: Iterable[PathLike], cfg: M2DetConfig) -> None:
    """Every ``.bin`` input has the size of one preprocessed image (a stat
    each), so a truncated file among thousands fails before inference starts."""
    from m2det_impl.pipeline.preprocess import bin_nbytes

    expected = bin_nbytes(cfg)
    for f in files:
        p = Path(f)
        if p.suffix != ".bin":
            continue
        try:
            info = p.stat()
        except OSError as exc:
            raise InputFileError(p, f"cannot read input .bin file ({exc.strerror or exc})") from None
        if info.st_size != expected:
            raise InputFileError(p, f"wrong .bin size: {info.st_size} bytes, expected {expected} "
                                    f"(float32 1x3x{cfg.size}x{cfg.size})")
