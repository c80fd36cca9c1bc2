"""From raw outputs to a score: a folder of ais_bench / benchmark output files -> COCO results -> AP.

The path the guide takes on a 310P (run the .om with ais_bench, then
post-process its output folder), as one library call, so that `m2det
evaluate` only parses and prints.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from m2det_impl._io import PathLike, atomic_write_json, ensure_output_file
from m2det_impl.errors import InputFileError, M2DetError
from m2det_impl.network.config import M2DetConfig
from m2det_impl.network.priors import make_priors

__all__ = ["OutputsEvaluation", "results_from_outputs", "score_results", "dataset_label", "listed_inputs", "name_some"]


@dataclass
class OutputsEvaluation:
    """COCO results of an output folder: the results, the images they cover
    (skipped ones included, so they count as misses), and what was skipped."""

    results: List[Dict[str, Any]]
    image_ids: List[int]
    skipped: Dict[str, str] = field(default_factory=dict)
    outputs_read: int = 0
    listed: int = 0  # inputs the info file or ais summary lists (0: no list found)
    listed_by: List[str] = field(default_factory=list)


def listed_inputs(outputs: PathLike, image_info: Optional[PathLike] = None) -> Tuple[Dict[str, str], List[str]]:
    """The inputs an output folder should hold outputs for: {stem: where it is listed}, and the
    files that list them: the info file (``image_info``) and the ais summary (``filesinfo``) of
    ais_bench / ``m2det infer`` beside the outputs (``<folder>_summary.json`` in ``outputs``, or
    beside it when ``outputs`` is the time-stamped sub-folder itself)."""
    from m2det_impl._io import read_json
    from m2det_impl.pipeline.ais_files import ais_stem
    from m2det_impl.pipeline.preprocess import read_info

    listed: Dict[str, str] = {}
    sources: List[str] = []
    if image_info:
        for stem in read_info(image_info):
            listed.setdefault(stem, str(image_info))
        sources.append(str(image_info))
    folder = Path(outputs)
    candidates = sorted(folder.glob("*_summary.json")) + [folder.parent / f"{folder.name}_summary.json"]
    for path in candidates:
        if not path.is_file():
            continue
        data = read_json(path, "ais summary")
        info = data.get("filesinfo") if isinstance(data, dict) else None
        if not isinstance(info, dict):
            raise InputFileError(path, "an ais summary without 'filesinfo' (per sample its 'infiles')")
        for sample in info.values():
            infiles = sample.get("infiles") if isinstance(sample, dict) else None
            if not isinstance(infiles, list) or not all(isinstance(f, str) for f in infiles):
                raise InputFileError(path, "'filesinfo' entries must hold 'infiles', a list of paths")
            for infile in infiles:
                listed.setdefault(ais_stem(infile), str(path))
        sources.append(str(path))
    return listed, sources


def name_some(stems: Sequence[str], first: int = 3) -> str:
    """``a, b, c (and 7 more)``: the first few of a list and how many there are in all."""
    stems = sorted(stems)
    more = f" (and {len(stems) - first} more)" if len(stems) > first else ""
    return ", ".join(stems[:first]) + more


def results_from_outputs(outputs: PathLike, annotations: PathLike, cfg: M2DetConfig, *,
                         image_info: Optional[PathLike] = None, skip_bad: bool = False,
                         progress: bool = True) -> OutputsEvaluation:
    """Decode every (scores, loc) pair of an output folder into COCO results.

    Original image sizes come from the annotations, overridden by the guide's
    jpg info file when given. A missing or truncated output fails naming the
    file, unless ``skip_bad`` records it and goes on.
    """
    from tqdm.auto import tqdm

    from m2det_impl.pipeline.ais_files import read_pair, scan_outputs
    from m2det_impl.pipeline.coco import category_ids, load_annotations, to_coco_results
    from m2det_impl.pipeline.dataset import annotation_images
    from m2det_impl.pipeline.postprocess import detect
    from m2det_impl.pipeline.preprocess import read_info

    annotations = Path(annotations)
    images = annotation_images(annotations)  # stem -> record (image id, width, height)
    categories = category_ids(load_annotations(annotations))
    sizes = {stem: (r.width, r.height) for stem, r in images.items()}
    if image_info:
        entries = read_info(image_info)
        if entries and all(e.path.lower().endswith(".bin") for e in entries.values()):
            raise InputFileError(image_info, "lists .bin inputs: it is the bin info file, whose sizes are the "
                                             "model's input, not the images' (boxes would be scaled wrongly); "
                                             "give the jpg info file (NAME_jpg.info)")
        sizes.update({stem: (e.width, e.height) for stem, e in entries.items()})
    pairs, problems = scan_outputs(outputs, cfg)
    skipped = {p.stem: p.message for p in problems}
    unknown = [p.stem for p in pairs if p.stem not in images]
    if unknown:
        raise M2DetError(f"{outputs}: {len(unknown)} output(s) for images not in {annotations}, e.g. {unknown[0]}")
    if problems and not skip_bad:
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        # with no output readable, skipping the bad ones would score nothing: no --skip-bad advice then
        raise M2DetError(problems[0].message + more + ("; use --skip-bad to record and go on" if pairs else ""))
    listed, listed_by = listed_inputs(outputs, image_info)
    found = {p.stem for p in pairs} | set(skipped)
    for stem in sorted(set(listed) - found):
        # an interrupted run or a deleted file: not scored, as a bad output with --skip-bad is
        skipped[stem] = f"{stem}: no output files (listed in {listed[stem]})"
    priors = make_priors(cfg)
    results: List[Dict[str, Any]] = []
    for pair in tqdm(pairs, unit="img", desc="m2det evaluate", disable=not progress):
        scores, loc = read_pair(pair, cfg)
        width, height = sizes[pair.stem]
        results.extend(to_coco_results(detect(scores, loc, priors, width, height, cfg), images[pair.stem].image_id,
                                       categories))
    image_ids = sorted({images[p.stem].image_id for p in pairs}
                       | {images[s].image_id for s in skipped if s in images})
    if not image_ids:
        raise M2DetError(f"{outputs}: no readable outputs")
    return OutputsEvaluation(results, image_ids, skipped, len(pairs), len(listed), listed_by)


def score_results(annotations: PathLike, results: Sequence[Mapping[str, Any]], image_ids: Sequence[int],
                  summary_path: PathLike, extra: Optional[Mapping[str, Any]] = None,
                  dataset_name: Optional[str] = None) -> Dict[str, Any]:
    """pycocotools' AP over ``image_ids``, written (atomically) to ``summary_path``.

    Returns the summary: ``ap``, the 12 stats with their names, the counts,
    ``dataset`` (what the AP was measured on), ``extra`` and the printed
    ``table``.
    """
    from m2det_impl.pipeline.coco import evaluate

    summary_path = ensure_output_file(summary_path)
    scored = evaluate(annotations, list(results), image_ids=image_ids)
    data: Dict[str, Any] = {
        "ap": scored.ap, "stats": list(scored.stats), "stat_names": list(scored.names),
        "num_images": scored.num_images, "num_detections": scored.num_detections,
        "dataset": dataset_name or dataset_label(annotations, len(image_ids)),
    }
    data.update(extra or {})
    data["table"] = scored.text
    atomic_write_json(summary_path, data, indent=2)
    return data


def dataset_label(annotations: PathLike, images: int) -> str:
    """How a report names the images an AP was measured on: the bundled
    synthetic set is never mistaken for COCO minival2014."""
    from m2det_impl.resources import MINI_COCO

    path = Path(annotations).resolve()
    if MINI_COCO.resolve() in path.parents:
        return f"bundled mini COCO ({images} synthetic images; not comparable with the published minival2014 AP)"
    return f"{path.name} ({images} images)"
