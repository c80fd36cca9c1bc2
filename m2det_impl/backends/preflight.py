"""Checks that fail a long run in its first second instead of its last hour.

An evaluation over COCO minival takes hours on a laptop and minutes on an
NPU; finding only at the end (or after a 15 s export and a model load) that
the ``.om`` path has a typo, the Ascend runtime is not installed, or one of
5000 ``.bin`` inputs is truncated wastes all of it. Each check here is cheap
(a stat, an import) and raises the project's own error naming what is wrong.
The runtime's own checks are its registered entry's ``preflight``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Iterable, List, Optional, Sequence

from m2det_impl._io import PathLike
from m2det_impl.backends.registry import runtimes
from m2det_impl.errors import CheckpointError, InputFileError, UnusedOptionError
from m2det_impl.network.config import M2DetConfig

if TYPE_CHECKING:
    from m2det_impl.backends.spec import ModelSpec

__all__ = [
    "check_model_inputs",
    "check_models",
    "check_onnx_model",
    "check_model_file",
    "check_options_read",
    "check_bin_inputs",
]

_WHAT = {"weights": "checkpoint file", "onnx": "ONNX file", "om": ".om model"}
_OPTION = {"weights": "--weights", "onnx": "--onnx", "om": "--om"}
_FILE_NOUN = {"onnx": "an ONNX file", "om": "an .om model"}
#: Each runtime option (registry.RUNTIME_OPTIONS): its spec fields with their command-line spellings, and a noun.
_RUNTIME_OPTION = {
    "device_id": ((("device_id", "--device-id"),), "a device id"),
    "threads": ((("threads", "--threads"),), "a thread count"),
    "calib": ((("calib", "--calib"), ("calib_images", "--calib-images")), "int8 calibration images"),
    "sim_ms_per_image": ((("sim_ms_per_image", "--sim-ms-per-image"),), "a simulated device time"),
}


def check_model_file(path: Optional[PathLike], what: str, error=InputFileError) -> None:
    """``path`` (when given) is an existing regular file, or ``error`` naming it and ``what`` it should be."""
    if path is None:
        return
    p = Path(path)
    if not p.exists():
        raise error(p, f"{what} not found")
    if not p.is_file():
        raise error(p, f"expected a {what}, found a folder or a device")


def check_onnx_model(path: PathLike, cfg: Optional[M2DetConfig] = None, batch_one: Optional[str] = None,
                     outputs: Optional[Sequence[str]] = None, batch: Optional[int] = None) -> None:
    """An ONNX file is whole, takes an image, and (with ``cfg``) takes ``cfg.size``; with
    ``batch_one`` (what needs it) its batch is dynamic or 1; with ``batch`` (``--batch-size``) a
    static batch is that one (as an ``.om``'s: a static model runs its own batch only); with ``outputs``
    (what reads them by name, e.g. the fp16 forecast) it has outputs of those names. Reads the header
    only (:mod:`m2det_impl.network.onnx_header`): milliseconds for a 530 MB export."""
    from m2det_impl.network.onnx_header import image_input, onnx_outputs

    found = image_input(path)
    height, width = found.dims[2], found.dims[3]
    if cfg is not None and isinstance(height, int) and isinstance(width, int) and (height, width) != (cfg.size, cfg.size):
        raise InputFileError(Path(path), f"the model's input is {height}x{width}, but --size {cfg.size} was asked: "
                                         f"give --size {height} or an ONNX model of {cfg.size}x{cfg.size}")
    static = found.static_batch
    if batch_one is not None and static is not None and static != 1:
        raise InputFileError(Path(path), f"the model's batch is static {static}, and {batch_one} one image at a "
                                         f"time: give a dynamic-batch or batch-1 model (m2det export without "
                                         f"--batch, or --batch 1)")
    if batch is not None and static is not None and batch != static:
        raise InputFileError(Path(path), f"a static batch-{static} model, asked for --batch-size {batch}: leave "
                                         f"--batch-size out (the model's batch is used) or give {static}, or "
                                         f"export a dynamic-batch model (m2det export without --batch)")
    if outputs is not None:
        names = [o.name for o in onnx_outputs(path)]
        missing = [name for name in outputs if name not in names]
        if missing:
            raise InputFileError(Path(path), f"the model's outputs are {names or 'none'}, without "
                                             f"{' and '.join(missing)}: give an M2Det export (m2det export), "
                                             f"whose outputs are {' and '.join(outputs)}")


def check_model_inputs(spec: "ModelSpec", cfg: Optional[M2DetConfig] = None, device_ids: Sequence[int] = ()) -> None:
    """Everything a backend will need, checked before the dataset is read or an
    output folder written: the files given exist, the runtime reads each of
    them and each runtime option given (``device_ids``: the job's, when it was
    given some), the runtime's own checks (an ``.om`` and an Ascend runtime, a GPU
    provider) pass, and an ONNX file is whole, (with ``cfg``) of the size asked
    and of the batch asked when its batch is static."""
    check_models([spec], cfg, device_ids)


def check_models(specs: Sequence["ModelSpec"], cfg: Optional[M2DetConfig] = None,
                 device_ids: Sequence[int] = ()) -> None:
    """:func:`check_model_inputs` for every spec a job runs (``bench --versus``: two, ``device_ids``
    the first one's), the options and runtimes of all of them before any model file is read: an absent
    runtime is the first thing to fix."""
    readers = [spec.runtime for spec in specs]  # the job's options are shared: read by one of its runtimes is read
    for i, spec in enumerate(specs):
        _check_options_and_runtime(spec, device_ids if i == 0 else (), readers)
    for spec in specs:
        if spec.onnx is not None and "onnx" in spec.runtime.model_files:
            check_onnx_model(spec.onnx, cfg, batch=spec.batch_size)


def check_options_read(spec: "ModelSpec", device_ids: Sequence[int] = (), readers: Sequence = ()) -> None:
    """Every model file (``--onnx``, ``--om``) and runtime option (``--device-id``, ``--threads``,
    ``--calib``, ``--sim-ms-per-image``) given is one the runtime reads, as its registry entry declares
    (``model_files``, ``options``), or :class:`UnusedOptionError` naming the option, the runtime and the
    runtimes that read it: a record never credits what the job did not use. ``readers``: the runtimes of
    the whole job (``bench --versus``: two), which share its runtime options; one of them reading an
    option is enough. ``--weights`` has its own lines (:func:`check_model_inputs`)."""
    entry = spec.runtime
    for kind in ("onnx", "om"):
        if getattr(spec, kind) is not None and kind not in entry.model_files:
            _refuse(_OPTION[kind], entry, _FILE_NOUN[kind], _what_it_reads(entry),
                    [n for n, e in runtimes().items() if kind in e.model_files])
    for option, (fields, noun) in _RUNTIME_OPTION.items():
        if any(option in e.options for e in (entry, *readers)):
            continue
        given = [flag for field, flag in fields if _given(spec, field)]
        if option == "device_id" and tuple(device_ids) and not given:
            given = ["--device-id"]
        if given:
            _refuse(given[0], entry, noun, None, [n for n, e in runtimes().items() if option in e.options])


def _given(spec: "ModelSpec", field: str) -> bool:
    value = getattr(spec, field)
    return value != 0 if field == "device_id" else value is not None


def _what_it_reads(entry) -> str:
    files = [_OPTION[k] for k in ("weights", "onnx", "om") if k in entry.model_files]
    if not files:
        return "it reads no model file"
    if files == ["--weights"]:
        return "it builds the network from --weights, golden weights without it"
    return f"it reads {' or '.join(files)}"


def _refuse(option: str, entry, noun: str, why: Optional[str], takers: List[str]) -> None:
    """``why``: what the runtime reads instead; without it, what the runtime is."""
    fix = f"drop {option}" + (f" or use --backend {', '.join(takers)}" if takers else "")
    what = f"the {entry.name} backend does not read {noun} ({why})" if why else \
        f"the {entry.name} backend ({entry.description}) does not read {noun}"
    raise UnusedOptionError(option, what, fix)


def _check_options_and_runtime(spec: "ModelSpec", device_ids: Sequence[int] = (), readers: Sequence = ()) -> None:
    entry = spec.runtime
    # an option the runtime does not read is refused before its file is looked for: "not found" would
    # send the user hunting for a file the job never needed
    if spec.weights is not None and not entry.loads_weights:
        raise InputFileError(Path(spec.weights), f"--weights is not read by --backend {entry.name} (it loads no "
                                                 f"checkpoint), so these weights would be credited without being "
                                                 f"used: drop --weights")
    check_options_read(spec, device_ids, readers)  # before the next: with --backend torch, --onnx is the unread one
    if spec.weights is not None and (spec.onnx is not None or spec.om is not None):
        given = "--onnx" if spec.onnx is not None else "--om"
        raise InputFileError(Path(spec.weights), f"--weights is not used when {given} is given (the model file "
                                                 f"brings its own weights): drop --weights, or drop {given} to "
                                                 f"export these weights")
    check_model_file(spec.weights, _WHAT["weights"], CheckpointError)
    check_model_file(spec.onnx, _WHAT["onnx"])
    check_model_file(spec.om, _WHAT["om"])
    if spec.dump is not None and entry.read_dumps is None:
        takers = ", ".join(n for n, e in runtimes().items() if e.read_dumps is not None)
        raise InputFileError(Path(spec.dump), f"--dump is for --backend {takers} (a device that dumps every "
                                              f"layer), not --backend {entry.name}")
    if entry.preflight is not None:
        entry.preflight(spec)


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
