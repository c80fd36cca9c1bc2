"""Which model a job runs: a backend built from weights, an ONNX file, an int8 model or an .om.

Orchestration, above the layers it draws on: the export cache
(backends.cache), the int8 quantizer (precision.int8) and the backend
registry (backends.registry). Below this, every function takes the model it
runs as an explicit argument.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional

from m2det_impl._io import PathLike
from m2det_impl.backends.base import default_threads
from m2det_impl.backends.cache import cached_onnx
from m2det_impl.backends.registry import BACKENDS
from m2det_impl.errors import BackendUnavailableError, UsageError
from m2det_impl.network.config import M2DetConfig
from m2det_impl.network.model import load_model, weights_tag

__all__ = ["GOLDEN_WARNING", "ModelSpec", "make_backend"]

GOLDEN_WARNING = (
    "WARNING: no --weights given: using the deterministic GOLDEN weights (random, salt 0).\n"
    "WARNING: the pipeline is real, the AP is MEANINGLESS. Pass --weights m2det512_vgg.pth for a real score."
)


@dataclass(frozen=True)
class ModelSpec:
    """What a job runs: the backend's name and the files it needs."""

    backend: str = "onnxruntime"
    weights: Optional[PathLike] = None
    onnx: Optional[PathLike] = None
    om: Optional[PathLike] = None
    device_id: int = 0
    threads: Optional[int] = None
    calib: Optional[PathLike] = None
    calib_images: Optional[int] = None
    sim_ms_per_image: float = 15.0  # simulated-npu: device time per image

    @property
    def golden(self) -> bool:
        """True when the run uses golden (untrained) weights."""
        return self.weights is None and self.backend not in ("om", "simulated-npu") and not self.onnx

    def preflight(self) -> None:
        """Fail in the first second on what would otherwise fail after hours."""
        from m2det_impl.backends.preflight import check_model_inputs

        check_model_inputs(self.backend, weights=self.weights, onnx=self.onnx, om=self.om)

    def create(self, cfg: M2DetConfig, log: Optional[Callable[[str], None]] = None):
        """The backend, exporting or quantizing (once, cached) when needed."""
        if self.golden and log is not None:
            log(GOLDEN_WARNING)
        return make_backend(self.backend, cfg, weights=self.weights, onnx_path=self.onnx, om_path=self.om,
                            device_id=self.device_id, threads=self.threads, log=log, calib=self.calib,
                            calib_images=self.calib_images, sim_ms_per_image=self.sim_ms_per_image)

    def identity(self, cfg: M2DetConfig) -> Dict[str, object]:
        """What decides a run's numbers, recorded with its results (a resumed run must match it)."""
        model = self.om or self.onnx
        ident: Dict[str, object] = {
            "size": cfg.size,
            "backend": self.backend,
            "model": str(Path(model).resolve()) if model else None,
            "weights": weights_tag(self.weights),
            "test": dict(vars(cfg.test)),
        }
        if self.backend == "simulated-npu":
            ident["sim_ms_per_image"] = self.sim_ms_per_image
        if self.backend == "onnxruntime-int8" and not self.onnx:
            ident["calibration"] = {"dir": str(Path(self.calib).resolve()) if self.calib else "bundled mini COCO",
                                    "images": self.calib_images}
        return ident


def make_backend(kind: str, cfg: M2DetConfig, *, weights: Optional[PathLike] = None,
                 onnx_path: Optional[PathLike] = None, om_path: Optional[PathLike] = None,
                 device_id: int = 0, threads: Optional[int] = None, log=None,
                 calib: Optional[PathLike] = None, calib_images: Optional[int] = None,
                 sim_ms_per_image: float = 15.0):
    """Build the backend a run asked for. ``onnxruntime`` uses ``onnx_path`` or a
    cached export of ``weights``; ``onnxruntime-int8`` uses ``onnx_path`` (a QDQ
    model) or the cached int8 model of ``weights`` calibrated on ``calib_images``
    images of ``calib`` (:func:`m2det_impl.precision.int8.cached_int8`);
    ``onnxruntime-cuda`` (float32, TF32 off) and ``tensorrt`` (fp16 engine
    cached) take the ONNX file as ``onnxruntime`` does, on GPU ``device_id``;
    ``om`` needs ``om_path`` and an Ascend runtime; ``onnxruntime-cann`` runs ``onnx_path``
    or the cached export on NPU ``device_id`` through ``onnxruntime-cann``; ``simulated-npu``
    is a fake 310P holding the GIL ``sim_ms_per_image`` per image (no model: size 512 only)."""
    from m2det_impl import backends

    if kind not in BACKENDS:
        raise UsageError(f"unknown backend {kind!r}; choose one of {', '.join(BACKENDS)}")
    if kind == "torch":
        import torch

        threads = threads or default_threads()
        if threads:
            torch.set_num_threads(int(threads))
        return backends.TorchBackend(load_model(cfg, weights))
    if kind == "onnxruntime":
        path = Path(onnx_path) if onnx_path else cached_onnx(cfg, weights, log=log)
        return backends.OnnxRuntimeBackend(path, threads=threads)
    if kind == "onnxruntime-int8":
        from m2det_impl.precision.int8 import DEFAULT_CALIBRATION_IMAGES, cached_int8, check_int8_model

        if onnx_path:
            path = check_int8_model(onnx_path)
        else:
            path = cached_int8(cfg, weights, calib, calib_images or DEFAULT_CALIBRATION_IMAGES, log=log).path
        backend = backends.OnnxRuntimeBackend(path, threads=threads)
        backend.name = "onnxruntime-int8"
        return backend
    if kind == "onnxruntime-cann":
        return _onnxruntime_cann(cfg, weights, onnx_path, device_id, threads, log)
    if kind in ("onnxruntime-cuda", "tensorrt"):
        from m2det_impl.backends.onnxruntime_backend import cuda_backend, tensorrt_backend

        path = Path(onnx_path) if onnx_path else cached_onnx(cfg, weights, log=log)
        if kind == "onnxruntime-cuda":
            return cuda_backend(path, device_id=device_id, threads=threads)
        if log is not None:
            log("tensorrt: the first call at each batch size builds an fp16 engine (minutes; cached for later runs)")
        return tensorrt_backend(path, device_id=device_id)
    if kind == "om":
        if om_path is None:
            raise UsageError("the om backend needs an .om model: give --om PATH")
        return backends.OmBackend(om_path, device_id=device_id)
    if kind == "simulated-npu":
        return backends.SimulatedNpuBackend(sim_ms_per_image, input_size=cfg.size)
    raise UsageError(f"backend {kind!r} is known but cannot be built by this job")


def _onnxruntime_cann(cfg: M2DetConfig, weights: Optional[PathLike], onnx_path: Optional[PathLike],
                      device_id: int, threads: Optional[int], log):
    """``onnxruntime-cann``: the ONNX export (given or cached) through the CANNExecutionProvider.
    The provider is checked before anything is exported."""
    from m2det_impl.backends.onnxruntime_backend import cann_provider_options, onnxruntime_cann_backend
    from m2det_impl.backends.registry import availability

    cann_provider_options(device_id=device_id)  # a bad device id fails first
    ok, why = availability("onnxruntime-cann")
    if not ok:
        raise BackendUnavailableError(f"backend onnxruntime-cann: {why}; install onnxruntime-cann (instead of "
                                      "onnxruntime) on an Ascend host with the CANN toolkit")
    path = Path(onnx_path) if onnx_path else cached_onnx(cfg, weights, log=log)
    return onnxruntime_cann_backend(path, threads=threads, device_id=device_id)
