"""ONNX Runtime's runtimes: float32 and int8 on the CPU, CUDA and TensorRT on an
NVIDIA GPU, CANN on an Ascend NPU. One session class (:mod:`.session`) with
the provider each entry asks for; the int8 entry also owns its build step,
static quantization (:mod:`.int8`)."""

from __future__ import annotations

import logging
from pathlib import Path

from m2det_impl.backends.registry import Runtime, register
from m2det_impl.errors import UnusedOptionError

from .session import INSTALL_HINTS, OnnxRuntimeBackend

__all__ = ["OnnxRuntimeBackend", "ONNXRUNTIME", "ONNXRUNTIME_INT8", "ONNXRUNTIME_CUDA", "TENSORRT",
           "ONNXRUNTIME_CANN"]

logger = logging.getLogger(__name__)


def _onnx_file(spec, cfg) -> Path:
    """The ONNX file a float32 entry runs: the one given, else the cached export of the spec's weights."""
    from m2det_impl.backends.cache import cached_onnx

    return Path(spec.onnx) if spec.onnx else cached_onnx(cfg, spec.weights)


def _build_cpu(spec, cfg):
    return OnnxRuntimeBackend(_onnx_file(spec, cfg), threads=spec.threads)


def _build_int8(spec, cfg):
    from .int8 import DEFAULT_CALIBRATION_IMAGES, cached_int8, check_int8_model

    if spec.onnx:
        path = check_int8_model(spec.onnx)
    else:
        path = cached_int8(cfg, spec.weights, spec.calib, spec.calib_images or DEFAULT_CALIBRATION_IMAGES).path
    backend = OnnxRuntimeBackend(path, threads=spec.threads)
    backend.name = ONNXRUNTIME_INT8.name
    return backend


def _int8_identity(spec):
    from .int8 import DEFAULT_CALIBRATION_IMAGES

    if spec.onnx:
        return {}
    return {"calibration": {"dir": str(Path(spec.calib).resolve()) if spec.calib else "bundled mini COCO",
                            "images": spec.calib_images or DEFAULT_CALIBRATION_IMAGES}}


def _int8_preflight(spec) -> None:
    """The calibration images a quantization will need are there (a stat and a listing), before an output
    folder, a golden-weights warning or an export: a typo in --calib fails first, in one line. A given int8
    model is not quantized again: calibration options beside it would be read by nothing, and are refused."""
    if spec.onnx is not None:
        given = "--calib" if spec.calib is not None else "--calib-images" if spec.calib_images is not None else None
        if given is not None:
            raise UnusedOptionError(given, f"the {ONNXRUNTIME_INT8.name} backend quantizes nothing when --onnx "
                                           f"gives the int8 model (its calibration is done)",
                                    f"drop {given}, or drop --onnx to quantize on these images")
    else:
        from .int8 import DEFAULT_CALIBRATION_IMAGES, calibration_files

        calibration_files(spec.calib, spec.calib_images or DEFAULT_CALIBRATION_IMAGES)


def _describe_int8(path: str):
    from .int8 import describe_int8

    return describe_int8(path)


def _export_int8(cfg, out_dir, **options):
    from .int8 import write_int8_model

    return write_int8_model(cfg, out_dir, **options)


def _build_cuda(spec, cfg):
    from .gpu import cuda_backend

    return cuda_backend(_onnx_file(spec, cfg), device_id=spec.device_id, threads=spec.threads)


def _build_tensorrt(spec, cfg):
    from .gpu import tensorrt_backend

    path = _onnx_file(spec, cfg)
    logger.info("tensorrt: the first call at each batch size builds an fp16 engine (minutes; cached for later runs)")
    return tensorrt_backend(path, device_id=spec.device_id)


def _cann_preflight(spec):
    from .cann import cann_provider_options

    cann_provider_options(device_id=spec.device_id)  # a bad device id fails first
    ONNXRUNTIME_CANN.require()  # the provider is checked before anything is exported


def _build_cann(spec, cfg):
    from .cann import onnxruntime_cann_backend

    _cann_preflight(spec)
    return onnxruntime_cann_backend(_onnx_file(spec, cfg), threads=spec.threads, device_id=spec.device_id)


def _gpu_preflight(entry_name: str):
    def check(spec) -> None:
        from m2det_impl.backends.registry import runtime

        runtime(entry_name).require()
    return check


ONNXRUNTIME = register(Runtime(
    name="onnxruntime", device="cpu", description="ONNX Runtime, float32, on the CPU",
    build=_build_cpu, install_hint=INSTALL_HINTS["CPUExecutionProvider"],
    module="onnxruntime", distributions=("onnxruntime",), provider="CPUExecutionProvider",
    options=frozenset({"threads"}),
))
ONNXRUNTIME_INT8 = register(Runtime(
    name="onnxruntime-int8", device="cpu",
    description="ONNX Runtime on the CPU with the static int8 (QDQ) model",
    build=_build_int8, install_hint=INSTALL_HINTS["CPUExecutionProvider"],
    module="onnxruntime", distributions=("onnxruntime",), provider="CPUExecutionProvider",
    identity=_int8_identity, precision="int8", reference="onnxruntime", describe_model=_describe_int8,
    export_model=_export_int8, preflight=_int8_preflight, options=frozenset({"threads", "calib"}),
))
ONNXRUNTIME_CANN = register(Runtime(
    name="onnxruntime-cann", device="npu",
    description="ONNX Runtime's CANNExecutionProvider (pip onnxruntime-cann) on an Ascend NPU, from the ONNX export",
    build=_build_cann, install_hint=INSTALL_HINTS["CANNExecutionProvider"],
    module="onnxruntime", distributions=("onnxruntime-cann", "onnxruntime"), provider="CANNExecutionProvider",
    preflight=_cann_preflight, options=frozenset({"threads", "device_id"}),
))
# gpu layer (issue #15): both through onnxruntime-gpu, the same ONNX file and output contract
ONNXRUNTIME_CUDA = register(Runtime(
    name="onnxruntime-cuda", device="gpu", description="ONNX Runtime's CUDA execution provider, float32 with TF32 off",
    build=_build_cuda, install_hint=INSTALL_HINTS["CUDAExecutionProvider"],
    module="onnxruntime", distributions=("onnxruntime-gpu", "onnxruntime"), provider="CUDAExecutionProvider",
    preflight=_gpu_preflight("onnxruntime-cuda"), options=frozenset({"threads", "device_id"}),
))
TENSORRT = register(Runtime(
    name="tensorrt", device="gpu",
    description="TensorRT fp16 through ONNX Runtime's TensorRT execution provider (engines cached)",
    build=_build_tensorrt, install_hint=INSTALL_HINTS["TensorrtExecutionProvider"],
    module="onnxruntime", distributions=("onnxruntime-gpu",), provider="TensorrtExecutionProvider",
    preflight=_gpu_preflight("tensorrt"), options=frozenset({"device_id"}),
))
