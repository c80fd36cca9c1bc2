"""``m2det drift``: a 310P dump against ONNX Runtime, layer by layer, bounded by the fp16 forecast.

One job, explicit parameters (the CLI only parses and prints): read the dump
folder, align it with the ONNX model (and the atc JSON's fusion map), run the
golden and the forecast on the same input, and write ``drift.json``,
``drift.md`` and ``drift.png``. The logic lives in :mod:`m2det_impl.precision.drift`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from m2det_impl._io import PathLike, atomic_write_bytes, atomic_write_json, atomic_write_text, output_folder
from m2det_impl.errors import InputFileError
from m2det_impl.exit_codes import EXIT_GATE_FAILED, EXIT_OK

__all__ = ["DriftOutcome", "drift"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DriftOutcome:
    """What ``m2det drift`` did: the report, where it went, and the exit code."""

    report: "object"  # precision.drift.DriftReport (kept loose: importing it pulls in onnx)
    json_path: Path
    markdown_path: Path
    png_path: Path
    exit_code: int


def _load_model(path: Path):
    import onnx

    if not path.is_file():
        raise InputFileError(path, "ONNX model not found")
    try:
        return onnx.load(str(path))
    except Exception as exc:  # noqa: BLE001 - onnx raises DecodeError, OSError, ValueError: all mean "not a model"
        raise InputFileError(path, f"not a readable ONNX model ({type(exc).__name__}: {exc})") from None


def drift(onnx_path: PathLike, input_bin: PathLike, dump: PathLike, output: PathLike, *,
          om_json: Optional[PathLike] = None, precision_mode: str = "force_fp16",
          bounds_file: Optional[PathLike] = None, threads: Optional[int] = None, reference=None) -> DriftOutcome:
    """Compare the dump under ``dump`` with ``onnx_path`` run on ``input_bin``; write the report under ``output``.

    ``reference`` (a :class:`m2det_impl.precision.drift.Reference` covering
    every aligned value) skips the golden and forecast runs, so several dumps
    of the same model and input cost one pair of forward passes.
    Exit code: 0 when every compared node is within its bound, 1 when one is
    not, or when nothing could be compared (a gate never passes unmeasured).
    """
    from m2det_impl.backends.registry import runtime_with_dumps
    from m2det_impl.precision.drift import (
        DriftBounds,
        DriftReport,
        align,
        drift_markdown,
        drift_png,
        measure_drift,
        model_input,
        read_input,
        reference_run,
    )

    start = time.perf_counter()
    with output_folder(output) as folder:  # an input refused at reading leaves no new empty folder
        bounds = DriftBounds.load(bounds_file) if bounds_file else DriftBounds.load()
        model_path = Path(onnx_path)
        model = _load_model(model_path)
        try:
            _, shape = model_input(model)
        except ValueError as exc:
            raise InputFileError(model_path, str(exc)) from None
        image = read_input(input_bin, shape)
        device = runtime_with_dumps()
        files, dumps = device.read_dumps(Path(dump))
        fusion = device.read_fusion_map(Path(om_json)) if om_json else None
        matches, unmatched = align(dumps, model, fusion)
        logger.debug("%d dump files, %d outputs aligned, %d not", len(files), len(matches), len(unmatched))
        for match in matches:  # a tensor that cannot be converted is refused before the forward passes
            match.dump.check()
        if matches:
            if reference is None:
                reference = reference_run(model, image, [m.tensor for m in matches], precision_mode, threads=threads)
            del model
            report = measure_drift(matches, reference, unmatched, bounds)
        else:
            report = DriftReport([], list(unmatched), bounds, precision_mode)
        report.sources = {"onnx": str(model_path), "input": str(input_bin), "dump": str(dump),
                          "om_json": None if om_json is None else str(om_json), "dump_files": len(files)}
        report.seconds = time.perf_counter() - start
        json_path = atomic_write_json(folder / "drift.json", report.as_dict(), indent=1)
        png_path = atomic_write_bytes(folder / "drift.png", drift_png(report))
        md_path = atomic_write_text(folder / "drift.md", drift_markdown(report, png_path.name))
        return DriftOutcome(report, json_path, md_path, png_path, EXIT_OK if report.passed else EXIT_GATE_FAILED)


