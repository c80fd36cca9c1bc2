"""The guide's file-based flow: ``m2det export``, ``m2det preprocess`` and ``m2det infer``.

Checkpoint -> ONNX (+ the atc commands), images -> ``.bin`` inputs and info
files, and a backend over ``.bin`` inputs writing the output layout ais_bench
writes, so the guide's own post-processing runs on it unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Sequence

from m2det_impl._io import PathLike, atomic_copy, ensure_output_folder
from m2det_impl.backends.registry import runtimes
from m2det_impl.backends.spec import ModelSpec, warn_golden
from m2det_impl.errors import CheckpointError, InputFileError, UsageError
from m2det_impl.exit_codes import EXIT_OK
from m2det_impl.logs import RESULT, get_logger
from m2det_impl.network.config import M2DetConfig
from m2det_impl.pipeline.dataset import Dataset

__all__ = ["export", "export_int8", "preprocess", "infer", "IMAGE_SUFFIXES"]

logger = get_logger(__name__)

IMAGE_SUFFIXES = ("jpg", "jpeg", "JPG", "JPEG", "png")


def export(cfg: M2DetConfig, out_dir: PathLike, *, weights: Optional[PathLike] = None,
           batches: Sequence[int] = (), opset: int = 11, soc_version: str = "Ascend310P3") -> Dict[Optional[int], Path]:
    """ONNX files (one dynamic-batch file, or one per static batch for atc) and
    what each runtime's build step needs beside them (``atc_build.sh`` and the
    atc census, from the Ascend entry); returns batch -> file.

    Each file comes through the one model cache (:func:`m2det_impl.backends.cache.cached_export`):
    an export made before for the same config, weights, batch, opset, library
    versions and exporter source is copied, not redone, and a new one is kept
    for the next run."""
    from m2det_impl.backends.cache import cached_export
    from m2det_impl.backends.preflight import check_model_file
    from m2det_impl.network.model import load_model

    check_model_file(weights, "checkpoint file", CheckpointError)
    out_dir = ensure_output_folder(out_dir).resolve()
    if weights is None:
        warn_golden()
    loaded: list = []

    def model():  # loaded once, and only if some batch is not cached yet
        if not loaded:
            loaded.append(load_model(cfg, weights))
        return loaded[0]

    files: Dict[Optional[int], Path] = {}
    for batch in list(batches) or [None]:
        path = out_dir / (f"m2det{cfg.size}" + ("" if batch is None else f"_bs{batch}") + ".onnx")
        record = cached_export(cfg, weights, batch, opset, model_factory=model)
        atomic_copy(record.path, path)
        files[batch] = path
        kind = "dynamic batch" if batch is None else f"static batch {batch}"
        how = "from the export cache" if record.reused else "exported"
        logger.log(RESULT, f"{path}: {kind}, {path.stat().st_size / 1e6:.1f} MB ({how}; the export took "
                           f"{record.seconds:.1f} s)")
    for entry in runtimes().values():  # each runtime's build step beside the ONNX files (atc's census and script)
        if entry.after_export is not None:
            for line in entry.after_export(files, out_dir, soc_version=soc_version, size=cfg.size):
                logger.log(RESULT, line)
    return files


def export_int8(cfg: M2DetConfig, out_dir: PathLike, *, weights: Optional[PathLike] = None,
                calib: Optional[PathLike] = None, calib_images: int = 16, progress: bool = False) -> Path:
    """``m2det export --int8``: the int8 variant's model file (the registry's int8 runtime makes it), with its
    description beside it."""
    from m2det_impl.backends.preflight import check_model_file
    from m2det_impl.backends.registry import runtime_for_precision

    check_model_file(weights, "checkpoint file", CheckpointError)
    out_dir = ensure_output_folder(out_dir).resolve()
    if weights is None:
        warn_golden()
    variant = runtime_for_precision("int8")
    path, lines = variant.export_model(cfg, out_dir, weights=weights, calib=calib, calib_images=calib_images,
                                       progress=progress)
    for line in lines:
        logger.log(RESULT, line)
    return path


def preprocess(dataset: Dataset, cfg: M2DetConfig, output: PathLike, *, info_name: str = "m2det",
               workers: int = 2, progress: bool = True) -> int:
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
    logger.log(RESULT, f"{len(done)} .bin files and {info_name}_bin.info, {info_name}_jpg.info -> {out}")
    return EXIT_OK


@dataclass(frozen=True)
class InferResult:
    """Where ``infer`` wrote: the outputs folder and, for the ais layout, its summary file."""

    folder: Path
    summary: Optional[Path]
    count: int


def infer(inputs: PathLike, cfg: M2DetConfig, model: ModelSpec, output: PathLike, *, batch_size: int = 1,
          naming: str = "ais", output_dirname: Optional[str] = None, outfmt: str = "BIN", progress: bool = True) -> InferResult:
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
    backend = model.create(cfg)
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
        logger.log(RESULT, f"{len(files)} inputs -> {writer.folder} (<stem>_0 scores, <stem>_1 loc, {outfmt}); summary {summary}")
        return InferResult(writer.folder, summary, len(files))
    logger.log(RESULT, f"{len(files)} inputs -> {out} (<stem>_{first}.bin scores, <stem>_{first + 1}.bin loc)")
    return InferResult(out, None, len(files))
