"""``m2det compare``: two saved runs or run folders, or a precision variant (fp16 forecast, int8) against float32."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Optional, Sequence

from m2det_impl._io import PathLike, atomic_write_text, ensure_output_folder, output_folder
from m2det_impl.backends.registry import runtime_for_precision
from m2det_impl.backends.spec import ModelSpec
from m2det_impl.errors import InputFileError, UsageError
from m2det_impl.exit_codes import EXIT_GATE_FAILED, EXIT_OK
from m2det_impl.gating.gates import max_ap_drop_gate
from m2det_impl.logs import RESULT, get_logger
from m2det_impl.network.config import M2DetConfig
from m2det_impl.pipeline.dataset import Dataset
from m2det_impl.workflows.run import category_ids_for

__all__ = ["compare_two_runs", "compare_precision"]

logger = get_logger(__name__)



def _ap_change(data: dict) -> Optional[float]:
    ap = data.get("ap") or (data.get("comparison") or {}).get("ap")
    return None if not ap else ap["change"]


def _gate(data: dict, max_ap_drop: Optional[float]) -> int:
    verdict = max_ap_drop_gate(_ap_change(data), max_ap_drop)
    if verdict.message:
        logger.log(RESULT if verdict.passed else logging.ERROR, verdict.message)
    return verdict.code


def compare_two_runs(candidate: PathLike, reference: PathLike, cfg: M2DetConfig, *, out: Optional[PathLike] = None,
                     pair: Optional[str] = None, tolerances: Optional[PathLike] = None, detections: bool = True,
                     max_ap_drop: Optional[float] = None) -> int:
    """Two saved runs (.npz, held to the tolerance file) or two run folders
    (detections and AP, never speed: two runs made apart are not a paired
    measurement); returns the exit code."""
    a, b = Path(candidate), Path(reference)
    for given in (a, b):
        if given.suffix.lower() == ".json" and given.is_file():  # numpy's advice to unpickle helps no one here
            raise InputFileError(given, "compare takes two run folders (or two saved runs, .npz), not a run's "
                                        f"JSON file: give its folder, {given.parent}")
    if a.is_dir() or b.is_dir():
        from m2det_impl.evaluation.variants import compare_result_folders, comparison_markdown, write_comparison

        data = compare_result_folders(a, b).as_dict()  # reading the folders is cheap: a bad one leaves no output folder
        logger.log(RESULT, comparison_markdown(data).rstrip("\n"))
        if out:
            write_comparison(ensure_output_folder(out), data)
        return _gate(data, max_ap_drop)
    from m2det_impl.evaluation.tolerances import DEFAULT_TOLERANCES_FILE, Tolerances, compare_saved, load_run

    if max_ap_drop is not None:
        verdict = max_ap_drop_gate(None, max_ap_drop, "saved runs hold raw outputs, not an AP: compare two run "
                                                      "folders for --max-ap-drop")
        logger.info(verdict.message)
        return verdict.code
    report = compare_saved(load_run(a), load_run(b), pair, Tolerances.load(tolerances or DEFAULT_TOLERANCES_FILE),
                           detections, cfg, verbose=lambda line: logger.log(RESULT, line))
    logger.log(RESULT, report.message())
    return EXIT_OK if report.ok else EXIT_GATE_FAILED


def compare_precision(kind: str, dataset: Dataset, cfg: M2DetConfig, model: ModelSpec, out: PathLike, *,
                      int8_onnx: Optional[PathLike] = None, precision_mode: str = "force_fp16",
                      keep_fp32: Optional[Sequence[str]] = None, layers: bool = True, first: int = 5,
                      max_ap_drop: Optional[float] = None, progress: bool = True) -> int:
    """``kind="fp16"``: forecast the .om's fp16 drift on the CPU; ``kind="int8"``:
    the int8 model against float32 ONNX Runtime. Writes compare.json/.md (and
    keep_dtype.cfg when layers cross Ascend's thresholds); returns the exit code."""
    from m2det_impl.evaluation.variants import section_markdown, write_comparison
    from m2det_impl.precision.forecast import keep_dtype_lines

    if kind not in ("fp16", "int8"):
        raise UsageError(f"unknown precision variant {kind!r}: fp16 or int8")
    if max_ap_drop is not None and dataset.annotations is None:
        verdict = max_ap_drop_gate(None, max_ap_drop)
        logger.info(verdict.message)
        return verdict.code
    # int8: the calibration options are the variant's (its quantization), not the float32 reference's
    (replace(model, calib=None, calib_images=None) if kind == "int8" else model).preflight(cfg)
    if kind == "fp16" and model.onnx is not None:
        from m2det_impl.backends.preflight import check_onnx_model
        from m2det_impl.network.export import OUTPUT_NAMES

        check_onnx_model(model.onnx, cfg, batch_one="the fp16 forecast runs", outputs=OUTPUT_NAMES)
    from m2det_impl.workflows.files import readable_images

    readable_images([r.path for r in dataset.records], skip_bad=False, can_skip=False)  # before any model is built
    with output_folder(out) as folder:  # a model or image refused on loading leaves no new empty folder
        categories = category_ids_for(dataset.annotations, cfg) if dataset.annotations else None
        if kind == "fp16":
            data = _forecast_fp16(dataset, cfg, model, categories, precision_mode, keep_fp32, layers, first, progress)
        else:
            data = _variant_against_reference(kind, dataset, cfg, model, categories, int8_onnx, progress)
        write_comparison(folder, data)
        over = data.get("first_over_threshold") or []
        if over:
            cfg_path = atomic_write_text(folder / "keep_dtype.cfg", keep_dtype_lines(d["name"] for d in over))
            logger.info(f"{cfg_path}: the first layers over the thresholds; build with atc --keep_dtype={cfg_path} to keep "
                "them in float32, or forecast that first with --keep-fp32 NAME")
    logger.log(RESULT, section_markdown(data).rstrip("\n"))
    return _gate(data, max_ap_drop)


def _forecast_fp16(dataset, cfg, model, categories, precision_mode, keep_fp32, layers, first, progress) -> dict:
    from m2det_impl.backends.cache import cached_onnx
    from m2det_impl.errors import M2DetError
    from m2det_impl.evaluation.variants import VariantAccumulator
    from m2det_impl.pipeline.stream import iter_preprocessed
    from m2det_impl.precision.forecast import forecast_fp16_stream

    onnx = Path(model.onnx) if model.onnx else cached_onnx(cfg, model.weights)
    acc = VariantAccumulator("fp16 forecast", "float32", cfg, categories)

    def items():
        for record, tensor, size, err in iter_preprocessed(dataset.records, cfg):
            if err is not None:
                raise M2DetError(err)
            yield record.image_id, tensor, size

    forecast = forecast_fp16_stream(onnx, items(), cfg, precision_mode, keep_fp32, layers, on_image=acc.add,
                                    keep_outputs=False, threads=model.threads, progress=progress,
                                    total=len(dataset.records))
    data = forecast.as_dict(first=first)
    data["comparison"] = acc.finish(dataset.annotations).as_dict()
    data["model"] = str(onnx)
    return data


def _variant_against_reference(precision, dataset, cfg, model, categories, variant_onnx, progress) -> dict:
    """A precision variant's runtime (the registry's, e.g. int8) against the float32 runtime it names as its reference."""
    from m2det_impl.evaluation.variants import compare_backends

    variant = runtime_for_precision(precision)
    reference_spec = replace(model, backend=variant.reference)
    candidate_spec = replace(model, backend=variant.name, onnx=variant_onnx)
    reference = reference_spec.create(cfg)  # says so when the weights are golden
    try:
        candidate = variant.build(candidate_spec, cfg)
    except BaseException:
        reference.close()
        raise
    try:
        result = compare_backends(dataset.records, cfg, candidate, reference, dataset.annotations, categories,
                                  progress=progress, names=(precision, "float32"))
    finally:
        candidate.close()
        reference.close()
    data = result.as_dict()
    data["kind"] = precision
    described = variant.describe_model(candidate.source) if variant.describe_model else {}
    data[f"{precision}_model"] = {"path": candidate.source, **described}
    data["float32_model"] = reference.source
    return data
