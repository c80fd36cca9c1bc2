"""``m2det evaluate`` and ``m2det merge``: score what was run elsewhere (an output folder, shard files)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from m2det_impl._io import PathLike, atomic_write_json, is_int, output_files, read_json_object
from m2det_impl.errors import InputFileError, UsageError
from m2det_impl.exit_codes import EXIT_GATE_FAILED, EXIT_OK
from m2det_impl.gating.gates import min_ap_gate
from m2det_impl.logs import RESULT, get_logger
from m2det_impl.network.config import M2DetConfig

__all__ = ["evaluate_outputs", "merge_shards", "announce_and_gate"]

logger = get_logger(__name__)



def announce(summary: dict, path: PathLike) -> None:
    """Print a scored summary: the table, then the AP with the dataset it was measured on."""
    logger.log(RESULT, summary["table"].rstrip("\n"))
    logger.log(RESULT, f"AP@[.50:.95] = {summary['ap']:.4f} on {summary['dataset']} -> {path}")


def announce_and_gate(summary: dict, path: PathLike, min_ap: Optional[float]) -> int:
    """:func:`announce`, then apply ``--min-ap``; returns the exit code."""
    announce(summary, path)
    return _min_ap(summary, min_ap)


def _min_ap(summary: dict, min_ap: Optional[float]) -> int:
    verdict = min_ap_gate(summary["ap"], min_ap)
    if verdict.message:
        logger.log(RESULT if verdict.passed else logging.ERROR, verdict.message)
    return verdict.code


def evaluate_outputs(outputs: PathLike, annotations: PathLike, cfg: M2DetConfig, results: PathLike,
                     summary: PathLike, *, image_info: Optional[PathLike] = None, skip_bad: bool = False,
                     min_ap: Optional[float] = None, allow_partial: bool = False, progress: bool = True) -> int:
    """ais_bench / benchmark output files -> COCO results JSON -> AP; returns the exit code.

    Images the info file or the ais summary beside the outputs list but that have no outputs, and
    (with ``skip_bad``) images whose outputs are unreadable, are not scored: named, counted as
    misses, recorded in the summary's ``skipped``. ``min_ap`` fails over such a partial folder
    (exit 1, naming them), and over a folder that nothing lists the inputs of (its completeness
    cannot be known), unless ``allow_partial``, which the summary records."""
    from m2det_impl.pipeline.evaluate import name_some, results_from_outputs, score_results

    with output_files(results, summary) as (results, summary):  # before any work; gone again if reading fails
        scored = results_from_outputs(outputs, annotations, cfg, image_info=image_info, skip_bad=skip_bad,
                                      progress=progress)
    for stem, reason in scored.skipped.items():
        logger.info(f"not scored {stem}: {reason}")
    results_path = atomic_write_json(results, scored.results)
    logger.log(RESULT, f"{scored.outputs_read} images, {len(scored.results)} detections -> {results_path}")
    data = score_results(annotations, scored.results, scored.image_ids, summary,
                         extra={"skipped": scored.skipped, "not_scored": len(scored.skipped),
                                "listed": scored.listed, "listed_by": scored.listed_by,
                                "allow_partial": allow_partial, "outputs": str(outputs),
                                **_record_of_outputs(scored.listed_by)})
    announce(data, summary)
    # a folder that may be partial fails the gate before its AP is held to --min-ap: one verdict, never
    # "gate passed" on stdout and "GATE FAILED" on stderr
    if min_ap is not None and not scored.listed_by and not allow_partial:
        logger.error(f"GATE FAILED: nothing lists the inputs of {outputs} (no --image-info, no ais summary "
                     f"beside it), so whether every image has outputs cannot be checked; pass --image-info "
                     f"NAME_jpg.info, or --allow-partial to gate the {scored.outputs_read} image(s) present")
        return EXIT_GATE_FAILED
    if scored.skipped:
        message = (f"{len(scored.skipped)} image(s) not scored (no or unreadable outputs): "
                   f"{name_some(list(scored.skipped))}")
        if min_ap is not None and not allow_partial:
            logger.error(f"GATE FAILED: {message}; the AP of a partial output folder is not gated (pass "
                         f"--allow-partial to gate it anyway, counting them as misses)")
            return EXIT_GATE_FAILED
        logger.warning(f"WARNING: {message}; they count as misses")
    return _min_ap(data, min_ap)


def merge_shards(shards: Sequence[PathLike], results: PathLike, summary: PathLike, *,
                 annotations: Optional[PathLike] = None, limit: Optional[int] = None, partial: bool = False,
                 min_ap: Optional[float] = None) -> int:
    """Combine the shard files of ``m2det run --shard I/N`` (files or folders holding them), check that
    every image is covered once, and score them; returns the exit code."""
    from m2det_impl.pipeline.dataset import annotation_images
    from m2det_impl.pipeline.evaluate import score_results
    from m2det_impl.pipeline.shards import merge_shard_files

    if annotations is None and limit:  # the first N annotated images: without annotations it would be ignored
        raise UsageError(f"--limit {limit} selects the first {limit} annotated images: give --annotations "
                         "(bundled for the mini COCO set), or drop --limit")
    if annotations is None and min_ap is not None:
        verdict = min_ap_gate(None, min_ap, "no AP can be measured without --annotations")
        logger.info(verdict.message)
        return verdict.code
    with output_files(results, summary) as (results, summary):  # before any work; gone again if reading fails
        files: List[Path] = []
        for given in shards:
            path = Path(given)
            files.extend(sorted(path.glob("results.shard-*-of-*.json")) if path.is_dir() else [path])
        expected = None
        if annotations is not None and not partial:
            expected = [r.image_id for r in annotation_images(annotations).values()]
            if limit:
                expected = sorted(expected)[:limit]
        merged, image_ids, skipped = merge_shard_files(files, expected)
        beyond = sorted(set(image_ids) - set(expected)) if expected is not None else []
        if beyond:  # scoring them would measure another selection than the one asked for
            raise UsageError(f"the shards hold {len(beyond)} image(s) outside the {len(expected)} this merge "
                             f"expects (e.g. image id {beyond[0]}): give the --limit the shards were run with"
                             + (f" (not {limit})" if limit else ""))
    results_path = atomic_write_json(results, merged)
    logger.log(RESULT, f"merged {len(files)} shards: {len(image_ids)} images, {len(merged)} detections -> {results_path}")
    if annotations is None:
        logger.log(RESULT, "not scored: give --annotations for an AP")
        return EXIT_OK
    data = score_results(annotations, merged, image_ids, summary,
                         extra={"shards": [str(f) for f in files], "skipped": skipped, **_shards_record(files)})
    return announce_and_gate(data, summary, min_ap)


UNKNOWN_WEIGHTS = {"kind": "unknown", "why": "scored from output files; nothing beside them records the model "
                                             "that wrote them (m2det infer keeps it in <folder>_m2det.json)"}


def _record_of_outputs(listed_by: Sequence[str]) -> Dict[str, object]:
    """What produced an output folder's numbers, as a run's summary records it: the weights record, and
    the model's identity and batch, that ``m2det infer`` keeps beside its ais summary
    (``<folder>_m2det.json``), so that ``report`` and ``collect`` name the backend and batch of an
    evaluated folder (the re-trial saw ``?``). Another tool's outputs say nothing of their model."""
    for source in listed_by:
        if source.endswith("_summary.json"):
            try:
                notes = read_json_object(source[: -len("_summary.json")] + "_m2det.json", "infer notes")
            except InputFileError:
                continue
            record = notes.get("weights")
            if isinstance(record, dict) and record.get("kind"):
                fields = _weights_fields(record)
                if isinstance(notes.get("identity"), dict):
                    fields["identity"] = notes["identity"]
                if is_int(notes.get("batch_size")):
                    fields["batch_size"] = notes["batch_size"]
                return fields
    return _weights_fields(dict(UNKNOWN_WEIGHTS))


def _weights_fields(record: Dict[str, object]) -> Dict[str, object]:
    """A summary's ``weights`` record and its ``golden_weights`` verdict, as a run's summary has them."""
    from m2det_impl.backends.spec import golden_record

    return {"weights": record, "golden_weights": golden_record(record)}


def _shards_record(files: Sequence[Path]) -> Dict[str, object]:
    """What the merged shards say produced them (one run's settings: the merge checked they agree):
    identity, batch and weights, as one run's summary records them."""
    first = read_json_object(files[0], "shard results file")
    record = first.get("weights") if isinstance(first.get("weights"), dict) else dict(UNKNOWN_WEIGHTS)
    fields: Dict[str, object] = {"identity": first.get("identity"), **_weights_fields(record)}
    if "batch_size" in first:
        fields["batch_size"] = first["batch_size"]
    return fields
