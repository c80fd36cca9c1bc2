"""The guide's file-based flow: ``m2det export``, ``m2det preprocess`` and ``m2det infer``.

Checkpoint -> ONNX (+ the atc commands), images -> ``.bin`` inputs and info
files, and a backend over ``.bin`` inputs writing the output layout ais_bench
writes, so the guide's own post-processing runs on it unchanged.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Sequence

from m2det_impl._io import PathLike, atomic_write_json, ensure_output_folder
from m2det_impl.errors import InputFileError, UsageError
from m2det_impl.exit_codes import EXIT_OK
from m2det_impl.network.config import M2DetConfig
from m2det_impl.pipeline.dataset import Dataset
from m2det_impl.workflows import Echo
from m2det_impl.workflows.models import GOLDEN_WARNING, ModelSpec

__all__ = ["export", "export_int8", "preprocess", "infer", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = ("jpg", "jpeg", "JPG", "JPEG", "png")


def export(cfg: M2DetConfig, out_dir: PathLike, *, weights: Optional[PathLike] = None,
           batches: Sequence[int] = (), opset: int = 11, soc_version: str = "Ascend310P3",
           echo: Echo = print, log: Echo = print) -> Dict[Optional[int], Path]:
    """ONNX files (one dynamic-batch file, or one per static batch for atc) and
    ``atc_build.sh`` with absolute paths; returns batch -> file.

    Each file comes through the one model cache (:func:`m2det_impl.backends.cache.cached_export`):
    an export made before for the same config, weights, batch, opset, library
    versions and exporter source is copied, not redone, and a new one is kept
    for the next run."""
    from m2det_impl.backends.cache import cached_export
    from m2det_impl.backends.preflight import check_model_inputs
    from m2det_impl.network.export import atc_census, write_atc_script
    from m2det_impl.network.model import load_model

    check_model_inputs(None, weights=weights)
    out_dir = ensure_output_folder(out_dir).resolve()
    if weights is None:
        log(GOLDEN_WARNING)
    loaded: list = []

    def model():  # loaded once, and only if some batch is not cached yet
        if not loaded:
            loaded.append(load_model(cfg, weights))
        return loaded[0]

    files: Dict[Optional[int], Path] = {}
    for batch in list(batches) or [None]:
        path = out_dir / (f"m2det{cfg.size}" + ("" if batch is None else f"_bs{batch}") + ".onnx")
        record = cached_export(cfg, weights, batch, opset, model_factory=model, log=log)
        tmp = path.with_name(f".{path.name}.tmp")
        shutil.copyfile(record.path, tmp)
        tmp.replace(path)
        files[batch] = path
        kind = "dynamic batch" if batch is None else f"static batch {batch}"
        how = "from the export cache" if record.reused else "exported"
        echo(f"{path}: {kind}, {path.stat().st_size / 1e6:.1f} MB ({how}; the export took {record.seconds:.1f} s)")
        echo(atc_census(path).summary())
    static = {b: p for b, p in files.items() if b is not None}
    if static:
        script = write_atc_script(out_dir / "atc_build.sh", static, sorted(static), soc_version, cfg.size)
        echo(f"atc commands -> {script}:")
        echo(script.read_text().rstrip("\n"))
    else:
        echo("dynamic-batch export (for ONNX Runtime); atc needs static exports: pass --batch B (repeatable)")
    return files


def export_int8(cfg: M2DetConfig, out_dir: PathLike, *, weights: Optional[PathLike] = None,
                calib: Optional[PathLike] = None, calib_images: int = 16, progress: bool = True,
                echo: Echo = print, log: Echo = print) -> Path:
    """``m2det export --int8``: the static int8 (QDQ) model for ONNX Runtime, with its description beside it."""
    from m2det_impl.backends.preflight import check_model_inputs
    from m2det_impl.precision.int8 import cached_int8, describe_int8

    check_model_inputs(None, weights=weights)
    out_dir = ensure_output_folder(out_dir).resolve()
    if weights is None:
        log(GOLDEN_WARNING)
    record = cached_int8(cfg, weights, calib, calib_images, progress=progress, log=log)
    path = out_dir / f"m2det{cfg.size}_int8.onnx"
    tmp = path.with_name(f".{path.name}.tmp")
    shutil.copyfile(record.path, tmp)
    tmp.replace(path)
    info = describe_int8(path)
    atomic_write_json(path.with_suffix(".json"), {**info, "calibration_files": list(record.calibration),
                                                  "quantize_seconds": record.seconds, "fp32_source": str(record.source),
                                                  "weights": None if weights is None else str(weights)}, indent=1)
    echo(f"{path}: int8 QDQ (opset {info['opset']}, {info['per_channel_weights']} per-channel weight tensors, "
         f"{info['quantize_linear']} QuantizeLinear; kept float: {info['float_ops'] or 'none'}), "
         f"{info['bytes'] / 1e6:.1f} MB; quantized in {record.seconds:.1f} s" + (" (cached)" if record.reused else ""))
    echo(f"calibrated on {len(record.calibration)} images: " + ", ".join(Path(f).name for f in record.calibration))
    echo(f"run it: m2det run --onnx {path}   (or --backend onnxruntime-int8); "
         f"against float32: m2det compare --int8 --int8-onnx {path}")
    return path


def preprocess(dataset: Dataset, cfg: M2DetConfig, output: PathLike, *, info_name: str = "m2det",
               workers: int = 2, progress: bool = True, echo: Echo = print) -> int:
    """Images -> ``<stem>.bin`` (float32, [1, 3, S, S]) and the guide's ``NAME_bin.info`` / ``NAME_jpg.info``."""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm.auto import tqdm

    from m2det_impl.pipeline.preprocess import InfoEntry, jpg_info_entries, load_and_preprocess, write_bin, write_info

    out = ensure_output_folder(output)
    records = dataset.records

    def work(record):
        tensor, size = load_and_preprocess(record.path, cfg)
        return write_bin(out / f"{record.stem}.bin", tensor[None]), size

    with ThreadPoolExecutor(max_workers=workers) as pool:
        done = list(tqdm(pool.map(work, records), total=len(records), unit="img", desc="m2det preprocess",
                         disable=not progress))
    bin_entries = [InfoEntry(i, str(path), cfg.size, cfg.size) for i, (path, _) in enumerate(done)]
    write_info(out / f"{info_name}_bin.info", bin_entries)
    write_info(out / f"{info_name}_jpg.info", jpg_info_entries([r.path for r in records], [s for _, s in done]))
    echo(f"{len(done)} .bin files and {info_name}_bin.info, {info_name}_jpg.info -> {out}")
    return EXIT_OK


@dataclass(frozen=True)
class InferResult:
    """Where ``infer`` wrote: the outputs folder and, for the ais layout, its summary file."""

    folder: Path
    summary: Optional[Path]
    count: int


def infer(inputs: PathLike, cfg: M2DetConfig, model: ModelSpec, output: PathLike, *, batch_size: int = 1,
          naming: str = "ais", output_dirname: Optional[str] = None, outfmt: str = "BIN", progress: bool = True,
          echo: Echo = print, log: Echo = print) -> InferResult:
    """Run ``model`` over a folder of ``.bin`` inputs (or images) and write the
    outputs as the Ascend tools do: ``naming="ais"`` writes ais_bench's layout
    (a time-stamped sub-folder, or ``output_dirname``, with ``<stem>_0`` scores
    and ``<stem>_1`` loc, and ``<sub-folder>_summary.json`` beside it);
    ``naming="benchmark"`` writes the older tool's flat ``_1``/``_2`` files."""
    import numpy as np
    from tqdm.auto import tqdm

    from m2det_impl.backends.preflight import check_bin_inputs
    from m2det_impl.pipeline.ais_files import AisOutputWriter, write_outputs
    from m2det_impl.pipeline.preprocess import list_images, load_and_preprocess, read_bin

    inputs = Path(inputs)
    if not inputs.exists():
        raise InputFileError(inputs, "input folder not found")
    if not inputs.is_dir():
        raise InputFileError(inputs, "not a folder (give the folder of .bin inputs or images)")
    files = sorted(inputs.glob("*.bin")) or list_images(inputs, IMAGE_SUFFIXES)
    if not files:
        raise InputFileError(inputs, "no .bin inputs or images in this folder")
    if naming not in ("ais", "benchmark"):
        raise UsageError(f"naming must be ais or benchmark, got {naming!r}")
    model.preflight()
    check_bin_inputs([f for f in files if f.suffix == ".bin"], cfg)
    out = ensure_output_folder(output)
    writer = AisOutputWriter(out, output_dirname=output_dirname, outfmt=outfmt) if naming == "ais" else None
    first = 1 if naming == "benchmark" else 0
    backend = model.create(cfg, log=log)
    try:
        for start in tqdm(range(0, len(files), batch_size), unit="batch", desc="m2det infer", disable=not progress):
            chunk = files[start: start + batch_size]
            batch = np.concatenate([
                read_bin(f, cfg) if f.suffix == ".bin" else load_and_preprocess(f, cfg)[0][None] for f in chunk
            ])
            scores, loc = backend.infer(batch)
            for i, f in enumerate(chunk):
                if writer is not None:
                    writer.add(f, scores[i], loc[i])
                else:
                    write_outputs(out, f.stem, scores[i], loc[i], first_index=first)
        times, clock = list(backend.execute_times_ms), backend.execute_clock
    finally:
        backend.close()
    if writer is not None:
        summary = writer.finish(batch_size=batch_size, execute_times_ms=times, clock=clock)
        echo(f"{len(files)} inputs -> {writer.folder} (<stem>_0 scores, <stem>_1 loc, {outfmt}); summary {summary}")
        return InferResult(writer.folder, summary, len(files))
    echo(f"{len(files)} inputs -> {out} (<stem>_{first}.bin scores, <stem>_{first + 1}.bin loc)")
    return InferResult(out, None, len(files))
