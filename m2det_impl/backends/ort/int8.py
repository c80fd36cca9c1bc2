"""int8 on the CPU: static QDQ quantization of the float32 export with ONNX Runtime.

On a 2-core AVX2 host M2Det512 takes about 2.6 s per image in float32 ONNX
Runtime; the int8 model runs about twice as fast (more with AVX512-VNNI) in
about a third of the memory. This module makes that model, reproducibly:

- source: the cached float32 dynamic-batch export (opset 11, shared with
  everything else), brought to opset 13 by onnx's version converter:
  per-channel ``QuantizeLinear``/``DequantizeLinear`` need opset 13's ``axis``;
- format QDQ, weights int8 symmetric per output channel, activations uint8
  asymmetric per tensor (U8S8: ONNX Runtime's fast path on x86; S8S8 ran
  slower than float32 here), MinMax calibration;
- every operator ONNX Runtime can quantize, except ``Softmax``: its output is
  the scores, which the post-processing thresholds at 0.1 and soft-NMS ranks;
  as uint8 they would move in steps of 1/255;
- calibration on real images (the bundled mini COCO set, or a COCO folder:
  ``val2014`` images outside minival2014 when there are enough of them, so the
  images scored are not the images calibrated on), chosen evenly over the
  sorted file list, so the same folder and count always give the same model.

Quantizing takes about as long as running the float32 model over the
calibration images plus half a minute, so the result is cached like the ONNX
export (:func:`m2det_impl.backends.cache.cached_export`): keyed by the float32
export's key, the calibration images' bytes, the settings and the onnxruntime
version; file-locked so pytest-xdist workers and parallel CLI runs quantize
once; pruned after 14 days unused.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from m2det_impl._io import PathLike, atomic_link_or_copy, atomic_output, atomic_write_json, read_json_object
from m2det_impl.backends.cache import cached_export, cached_file, export_key
from m2det_impl.errors import InputFileError, M2DetError, UsageError
from m2det_impl.logs import get_logger
from m2det_impl.network.config import M2DetConfig
from m2det_impl.network.weights_identity import weights_tag

__all__ = [
    "write_int8_model",
    "DEFAULT_CALIBRATION_IMAGES",
    "QUANT_OPSET",
    "QUANT_SETTINGS",
    "calibration_files",
    "ImageCalibrationReader",
    "quantize_onnx",
    "Int8Record",
    "int8_parts",
    "cached_int8",
    "describe_int8",
    "check_int8_model",
    "to_quant_opset",
]

logger = get_logger(__name__)

#: Calibration images when none are given (MinMax settles after a few dozen).
DEFAULT_CALIBRATION_IMAGES = 16
QUANT_OPSET = 13
QUANT_SETTINGS: Dict[str, object] = {
    "format": "QDQ",
    "per_channel": True,
    "activation_type": "QUInt8",
    "weight_type": "QInt8",
    "calibrate_method": "MinMax",
    "reduce_range": False,
    "exclude_op_types": ["Softmax"],
}
_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}


# ------------------------------------------------------------------ calibration
def _images_in(folder: Path) -> List[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in _IMAGE_SUFFIXES)


def calibration_files(source: Optional[PathLike] = None, count: int = DEFAULT_CALIBRATION_IMAGES) -> List[Path]:
    """``count`` images from ``source``, evenly spread over its sorted files.

    ``source`` is a folder of images or a COCO root (images in ``val2014/``);
    default: the bundled mini COCO set. When the root also holds
    ``instances_minival2014.json`` and ``val2014/`` has at least ``count``
    images outside minival, those are used (calibrating on the images that
    are then scored flatters the AP); otherwise the choice overlaps minival
    and ``log`` says so.
    """
    from m2det_impl.pipeline.dataset import DEFAULT_DATASET, find_annotation_file

    if count < 1:
        raise UsageError(f"calibration needs at least one image, got {count}")
    root = Path(source) if source is not None else DEFAULT_DATASET
    if not root.is_dir():
        raise InputFileError(root, "calibration folder not found")
    folder = root / "val2014" if (root / "val2014").is_dir() else root
    files = _images_in(folder)
    if not files:
        raise InputFileError(folder, "no calibration images (*.jpg, *.jpeg, *.png, *.bmp) here")
    try:
        annotations = find_annotation_file(root)
    except InputFileError:
        annotations = None
    if annotations is not None:
        data = read_json_object(annotations, "COCO annotation file")
        images = data.get("images", [])
        if not isinstance(images, list) or not all(isinstance(e, dict) for e in images):
            raise InputFileError(annotations, "COCO annotation file: 'images' must be a list of objects")
        scored = {Path(str(e.get("file_name", ""))).stem for e in images}
        outside = [f for f in files if f.stem not in scored]
        if len(outside) >= count:
            files = outside
        else:
            logger.warning(f"calibrating on images that {annotations.name} also scores ({len(outside)} of {len(files)} "
                f"images in {folder} lie outside it, {count} needed): the AP of the int8 model is flattered")
    if len(files) < count:
        raise InputFileError(folder, f"{len(files)} calibration images here, {count} asked for")
    picks = np.unique(np.round(np.linspace(0, len(files) - 1, count)).astype(int))
    return [files[i] for i in picks]


def _reader_class():
    """The reader class, defined on first use: onnxruntime is imported lazily."""
    from onnxruntime.quantization import CalibrationDataReader

    class ImageCalibrationReader(CalibrationDataReader):
        """Feeds preprocessed images, one per call, to the calibrator."""

        def __init__(self, files: Sequence[Path], cfg: M2DetConfig, input_name: str = "image",
                     progress: bool = False):
            from tqdm.auto import tqdm

            self.files = list(files)
            self.cfg = cfg
            self.input_name = input_name
            self._next = 0
            self._bar = tqdm(total=len(self.files), unit="img", desc="int8 calibration", disable=not progress)

        def get_next(self):
            from m2det_impl.pipeline.preprocess import load_and_preprocess

            if self._next >= len(self.files):
                self._bar.close()
                return None
            tensor, _ = load_and_preprocess(self.files[self._next], self.cfg)
            self._next += 1
            self._bar.update(1)
            return {self.input_name: tensor[None]}

        def rewind(self) -> None:
            self._next = 0

    return ImageCalibrationReader


def ImageCalibrationReader(files: Sequence[Path], cfg: M2DetConfig, input_name: str = "image",  # noqa: N802
                           progress: bool = False):
    """An ``onnxruntime.quantization.CalibrationDataReader`` over image files."""
    return _reader_class()(files, cfg, input_name, progress)


# ------------------------------------------------------------------ quantization
def to_quant_opset(model):
    """``model`` (a ModelProto) at opset :data:`QUANT_OPSET`, converted by
    onnx's version converter when older (the opset-11 export for atc becomes
    the quantizer's input without a second 15 s export; outputs are
    bit-identical: the converter rewrites only the Softmax-11 axis semantics,
    as Flatten -> Softmax -> Reshape)."""
    from onnx import version_converter

    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if opset >= QUANT_OPSET:
        return model
    return version_converter.convert_version(model, QUANT_OPSET)


def quantize_onnx(fp32_path: PathLike, out_path: PathLike, calibration: Sequence[Path], cfg: M2DetConfig,
                  progress: bool = False) -> Path:
    """Quantize the float32 model at ``fp32_path`` (converted to opset 13 when
    older) to ``out_path`` (QDQ, :data:`QUANT_SETTINGS`), calibrated on
    ``calibration`` images.

    Written to a temporary name and renamed, so a killed run leaves no
    half-written model behind.
    """
    import logging

    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    fp32_path, out_path = Path(fp32_path), Path(out_path)
    if not fp32_path.is_file():
        raise InputFileError(fp32_path, "float32 ONNX model not found")
    try:
        model = to_quant_opset(onnx.load(str(fp32_path)))
    except Exception as exc:  # noqa: BLE001 - onnx raises its own types
        raise InputFileError(fp32_path, f"cannot read it or bring it to opset {QUANT_OPSET} "
                                        f"({type(exc).__name__}: {exc})") from None
    excluded = [n.name for n in model.graph.node if n.op_type in QUANT_SETTINGS["exclude_op_types"]]
    input_name = model.graph.input[0].name
    out_path.parent.mkdir(parents=True, exist_ok=True)
    logger.info(f"quantizing {fp32_path.name} to int8 (QDQ, per-channel weights, opset {QUANT_OPSET}), calibrating on "
            f"{len(calibration)} images ...")
    root_logger = logging.getLogger()
    level = root_logger.level
    root_logger.setLevel(logging.ERROR)  # the quantizer's advice to pre-process is about other models
    try:
        with atomic_output(out_path) as tmp:
            quantize_static(
                model, str(tmp), ImageCalibrationReader(calibration, cfg, input_name, progress),
                quant_format=QuantFormat.QDQ, per_channel=bool(QUANT_SETTINGS["per_channel"]),
                reduce_range=bool(QUANT_SETTINGS["reduce_range"]),
                activation_type=getattr(QuantType, str(QUANT_SETTINGS["activation_type"])),
                weight_type=getattr(QuantType, str(QUANT_SETTINGS["weight_type"])),
                nodes_to_exclude=excluded,
                calibrate_method=getattr(CalibrationMethod, str(QUANT_SETTINGS["calibrate_method"])),
            )
    finally:
        root_logger.setLevel(level)
    return out_path


def describe_int8(path: PathLike) -> Dict[str, object]:
    """What a QDQ model holds: opset, Q/DQ counts, per-channel weights, the
    operators left in float (their inputs not dequantized from int8)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    nodes = list(model.graph.node)
    counts = Counter(n.op_type for n in nodes)
    inits = {t.name for t in model.graph.initializer}
    per_channel = 0
    for n in nodes:
        if n.op_type == "DequantizeLinear" and n.input[0] in inits:
            axis_given = any(a.name == "axis" for a in n.attribute)
            scale = next((t for t in model.graph.initializer if t.name == n.input[1]), None)
            if axis_given or (scale is not None and len(scale.dims) == 1 and scale.dims[0] > 1):
                per_channel += 1
    readers: Dict[str, List[str]] = {}
    for n in nodes:
        for i in n.input:
            readers.setdefault(i, []).append(n.op_type)
    outputs = {o.name for o in model.graph.output}
    skip = {"QuantizeLinear", "DequantizeLinear", "Constant", "Shape", "Gather", "Unsqueeze", "Slice", "Concat",
            "Reshape", "Transpose"}
    # operators whose result stays float: not re-quantized by a QuantizeLinear
    float_ops = Counter(n.op_type for n in nodes if n.op_type not in skip and any(
        o in outputs or set(readers.get(o, [])) - {"QuantizeLinear"} for o in n.output))
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    return {"opset": opset, "quantize_linear": counts.get("QuantizeLinear", 0),
            "dequantize_linear": counts.get("DequantizeLinear", 0), "per_channel_weights": per_channel,
            "conv": counts.get("Conv", 0), "float_ops": dict(sorted(float_ops.items())),
            "bytes": Path(path).stat().st_size}


# ------------------------------------------------------------------ the cache
@dataclass(frozen=True)
class Int8Record:
    """A cached int8 model: its file, how long quantization took when it was
    made, its size, whether this call reused it, and what it was calibrated on."""

    path: Path
    seconds: float
    bytes: int
    reused: bool
    calibration: Tuple[str, ...]
    source: Path


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def int8_parts(fp32_key: str, calibration: Sequence[Path]) -> Dict[str, object]:
    """What an int8 model is made of: the float32 export's key, the calibration
    images (name and content), the settings, onnxruntime's version and this
    module's source."""
    import onnxruntime

    return {
        "fp32_export": fp32_key,
        "calibration": [f"{p.name}:{_file_digest(p)[:16]}" for p in calibration],
        "settings": QUANT_SETTINGS,
        "onnxruntime": onnxruntime.__version__,
        "source": hashlib.sha256(Path(__file__).resolve().read_bytes()).hexdigest()[:16],
    }


def cached_int8(cfg: M2DetConfig, weights: Optional[PathLike] = None, calib: Optional[PathLike] = None,
                calib_images: int = DEFAULT_CALIBRATION_IMAGES, salt: int = 0,
                model_factory: Optional[Callable[[], object]] = None, progress: bool = False) -> Int8Record:
    """The int8 model of ``weights`` (golden weights by default) calibrated on
    ``calib_images`` images of ``calib`` (default: the bundled mini COCO set),
    quantized at most once across processes (the one model cache,
    :func:`m2det_impl.backends.cache.cached_file`)."""
    files = calibration_files(calib, calib_images)
    source = cached_export(cfg, weights, None, salt=salt, model_factory=model_factory)
    fp32_key, _ = export_key(cfg, weights_tag(weights, salt), None, 11)

    def build(path: Path) -> Dict[str, object]:
        quantize_onnx(source.path, path, files, cfg, progress=progress)
        return {"calibration_files": [str(f) for f in files], "size": cfg.size, "weights": weights_tag(weights, salt)}

    record = cached_file("int8", int8_parts(fp32_key, files), f"m2det{cfg.size}_int8.onnx", build)
    if not record.reused:
        logger.info(f"quantized in {record.seconds:.1f} s: {record.path} ({record.bytes / 1e6:.0f} MB)")
    return Int8Record(record.path, record.seconds, record.bytes, record.reused,
                      tuple(record.info.get("calibration_files", [])), source.path)


def check_int8_model(path: PathLike) -> Path:
    """``path`` if it is a QDQ model, else an error saying what it is."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(path, "int8 ONNX model not found")
    info = describe_int8(path)
    if not info["dequantize_linear"]:
        raise M2DetError(f"{path}: not an int8 QDQ model (no DequantizeLinear nodes): make one with "
                         "m2det export --int8 --calib DIR")
    return path


def write_int8_model(cfg: M2DetConfig, out_dir: Path, *, weights: Optional[PathLike] = None,
                     calib: Optional[PathLike] = None, calib_images: int = DEFAULT_CALIBRATION_IMAGES,
                     progress: bool = False) -> Tuple[Path, List[str]]:
    """``m2det export --int8``'s file: the cached int8 model copied to ``out_dir`` with its
    description (``.json``) beside it; returns the path and the lines to show the user."""
    record = cached_int8(cfg, weights, calib, calib_images, progress=progress)
    path = Path(out_dir) / f"m2det{cfg.size}_int8.onnx"
    atomic_link_or_copy(record.path, path)
    info = describe_int8(path)
    atomic_write_json(path.with_suffix(".json"), {**info, "calibration_files": list(record.calibration),
                                                  "quantize_seconds": record.seconds, "fp32_source": str(record.source),
                                                  "weights": None if weights is None else str(weights)}, indent=1)
    lines = [
        f"{path}: int8 QDQ (opset {info['opset']}, {info['per_channel_weights']} per-channel weight tensors, "
        f"{info['quantize_linear']} QuantizeLinear; kept float: {info['float_ops'] or 'none'}), "
        f"{info['bytes'] / 1e6:.1f} MB; quantized in {record.seconds:.1f} s" + (" (cached)" if record.reused else ""),
        f"calibrated on {len(record.calibration)} images: " + ", ".join(Path(f).name for f in record.calibration),
        f"run it: m2det run --backend onnxruntime-int8 --onnx {path} (the int8 runtime, so the records say int8); "
        f"against float32: m2det compare --int8 --int8-onnx {path}",
    ]
    return path, lines
