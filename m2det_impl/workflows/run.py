"""``m2det run``: images -> backend -> detections -> COCO results, AP and a report, resumable and shardable."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import List, Optional, Sequence

from m2det_impl._io import PathLike, atomic_write_json, ensure_output_folder, output_folder
from m2det_impl.backends.spec import ModelSpec
from m2det_impl.errors import UsageError
from m2det_impl.exit_codes import EXIT_OK
from m2det_impl.gating.gates import min_ap_gate
from m2det_impl.logs import RESULT, get_logger
from m2det_impl.network.config import M2DetConfig
from m2det_impl.pipeline.dataset import Dataset
from m2det_impl.workflows.evaluate import announce_and_gate

__all__ = ["run", "category_ids_for"]

logger = get_logger(__name__)



def category_ids_for(annotations: Optional[PathLike], cfg: M2DetConfig) -> List[int]:
    """The COCO category ids in class order: the annotation file's, else 1..80."""
    if annotations is None:
        return list(range(1, cfg.num_classes))
    from m2det_impl.pipeline.coco import category_ids, load_annotations

    return category_ids(load_annotations(annotations))


def _merge_hint_options(annotations, dataset) -> str:
    """The options that make the printed merge command score: the annotations (``bundled`` for the
    bundled set's) and the --limit the shards ran with."""
    if annotations is None:
        return ""
    from m2det_impl.pipeline.dataset import annotation_images
    from m2det_impl.resources import BUNDLED, MINI_COCO_ANNOTATIONS

    bundled = Path(annotations).resolve() == MINI_COCO_ANNOTATIONS.resolve()
    text = f" --annotations {BUNDLED if bundled else annotations}"
    ran = len(dataset.records)  # --limit N runs the first N images by id, as merge --limit N expects
    return text + (f" --limit {ran}" if ran < len(annotation_images(annotations)) else "")


def _earlier_speed(path, identity) -> Optional[dict]:
    """The speed an earlier run of the same identity recorded in ``path`` (its summary.json), if any."""
    import json

    from m2det_impl._io import is_number, read_json_object, to_jsonable
    from m2det_impl.errors import InputFileError

    if not path.is_file():
        return None
    try:
        summary = read_json_object(path, "run summary")
    except InputFileError:
        return None
    speed = summary.get("images_per_second")
    same_run = summary.get("identity") == json.loads(json.dumps(identity, default=to_jsonable))  # as written
    if not same_run or not is_number(speed) or speed <= 0:
        return None
    earlier = {"images_per_second": float(speed),
               "images_per_second_from": _earlier_source(summary.get("images_per_second_from"))}
    inference = summary.get("inference_images_per_second")
    if is_number(inference) and inference > 0:
        earlier["inference_images_per_second"] = float(inference)  # the pair stays together
    return earlier


def _earlier_source(recorded: object) -> str:
    if isinstance(recorded, str) and recorded.startswith("an earlier run"):
        return recorded
    return "an earlier run of this folder (the one that inferred the images)"


def _speed(outcome, earlier: Optional[dict]) -> dict:
    """summary.json's speed: measured now when images were inferred now; when every image was
    resumed, the figure of the run that inferred them (and says so), else none (never 0.0)."""
    if outcome.processed_now:
        return {"images_per_second": outcome.images_per_second, "images_per_second_from": "this run",
                "inference_images_per_second": _inference_rate(outcome)}
    if earlier is not None:
        logger.info(f"every image was resumed: the speed recorded is {earlier['images_per_second']:.2f} images/s, "
                    f"measured by {earlier['images_per_second_from']}")
        return earlier
    return {"images_per_second": None, "images_per_second_from": "not measured: every image was resumed"}


def _inference_rate(outcome) -> float:
    """Images per second of the backend's calls alone (no decoding, no post-processing): the figure printed
    beside the end-to-end one, and recorded with it."""
    return outcome.processed_now / max(outcome.infer_seconds, 1e-9)


def run(dataset: Dataset, cfg: M2DetConfig, model: ModelSpec, out: PathLike, *, batch_size: Optional[int] = None,
        shard: Optional[str] = None, fresh: bool = False, skip_bad: bool = False, loader_threads: int = 2,
        host: str = "auto", report: bool = True, min_ap: Optional[float] = None, progress: bool = True,
        device_ids: Optional[Sequence[int]] = None) -> int:
    """Run ``model`` over ``dataset`` into the folder ``out``; returns the exit code.

    Writes ``results.json`` (or a shard file), and with annotations
    ``summary.json`` and the report. Every finished image is journaled, so the
    same call after a kill resumes. ``min_ap`` gates AP@[.50:.95]; it fails,
    before any work, when the images have no annotations to score them.

    ``batch_size``: images per call; default the model's own batch (a
    static-batch ``.om``), else 1. ``device_ids`` with several ids runs one
    worker process per device, device k on shard k/N of the images (the same
    shards ``--shard`` makes, each journaled and resumable), then merges the
    shards and scores them as one run: the same results and AP as on one device.
    """
    from m2det_impl.pipeline.shards import parse_shard, select_shard

    records, annotations = dataset.records, dataset.annotations
    if annotations is None and min_ap is not None:
        verdict = min_ap_gate(None, min_ap, "no AP can be measured: these images have no annotations "
                                            "(give --annotations or --coco-root)")
        logger.info(verdict.message)
        return verdict.code
    from m2det_impl.workflows.devices import check_device_ids

    devices = check_device_ids(device_ids if device_ids else [model.device_id], len(records), "images")
    if len(devices) > 1 and shard:
        raise UsageError(f"--shard {shard} with {len(devices)} devices: several devices shard the images "
                         "themselves; give one or the other")
    model.preflight(cfg, device_ids or ())
    if batch_size is not None:
        model = replace(model, batch_size=batch_size)
    if len(devices) > 1:
        return _run_on_devices(dataset, cfg, model, out, devices, batch_size=batch_size, fresh=fresh,
                               skip_bad=skip_bad, loader_threads=loader_threads, host=host, report=report,
                               min_ap=min_ap)
    model = replace(model, device_id=devices[0])
    parsed = parse_shard(shard) if shard else None
    if parsed:
        records = select_shard(records, *parsed)
    with output_folder(out) as out:  # a new folder the failing run left empty goes again
        try:
            return _run_in(out, dataset, records, annotations, cfg, model, parsed, shard, batch_size=batch_size,
                           fresh=fresh, skip_bad=skip_bad, loader_threads=loader_threads, host=host, report=report,
                           min_ap=min_ap, progress=progress)
        except Exception:
            _discard_unused_journals(out)
            raise


def _discard_unused_journals(out: Path) -> None:
    """After a failure: header-only journals (no image finished) go, so that :func:`output_folder` can
    take away the folder too when this run created it and nothing else is left in it."""
    for journal in out.glob(".partial.*.jsonl"):
        try:
            with open(journal, "rb") as handle:
                lines = sum(1 for line in handle if line.strip())
            if lines <= 1:
                journal.unlink()
        except OSError:
            pass


def _run_in(out, dataset, records, annotations, cfg, model, parsed, shard, *, batch_size, fresh, skip_bad,
            loader_threads, host, report, min_ap, progress) -> int:
    from m2det_impl.pipeline.evaluate import score_results
    from m2det_impl.pipeline.journal import PartialStore
    from m2det_impl.pipeline.shards import shard_results_name, write_shard_file
    from m2det_impl.pipeline.stream import run_pipeline

    category_ids = category_ids_for(annotations, cfg)
    identity = model.identity(cfg)
    earlier = _earlier_speed(out / "summary.json", identity)  # before this run rewrites the summary
    tag = f"shard-{parsed[0]}-of-{parsed[1]}" if parsed else "full"
    # the batch too: the summary records one batch and one speed, so a resume at another batch is refused
    journaled = {**identity, "batch_size": replace(model, batch_size=batch_size).batch_asked()}
    store = PartialStore(out / f".partial.{tag}.jsonl", journaled, fresh=fresh, lock=True)
    try:
        wanted = {r.image_id for r in records}
        finished = store.finished()
        already = len(finished & wanted)
        if already:
            logger.info(f"resuming: {already} of {len(records)} images already done in {store.path}")
        outside = len(finished - wanted)
        if outside:
            logger.info(f"note: {outside} image(s) journaled in {store.path} are outside this run's selection: kept there, "
                "left out of results.json")
        backend = model.create(cfg)
        batch_size = backend.static_batch or batch_size or 1
        try:
            outcome = run_pipeline(records, backend, cfg, category_ids, batch_size=batch_size, store=store,
                                   skip_bad=skip_bad, loader_threads=loader_threads, progress=progress,
                                   host=host)
        finally:
            backend.close()
    finally:
        store.close()
    for image_id, reason in outcome.skipped.items():
        logger.info(f"skipped image {image_id}: {reason}")
    if parsed:
        path = write_shard_file(out / shard_results_name(*parsed), parsed[0], parsed[1], outcome, identity,
                                {"batch_size": batch_size, "weights": model.weights_record()})
        logger.log(RESULT, f"shard {parsed[0]}/{parsed[1]}: {len(outcome.image_ids)} images, {len(outcome.results)} detections "
             f"-> {path}\nmerge and score all shards with: m2det merge {out}/results.shard-*-of-{parsed[1]}.json"
             + _merge_hint_options(annotations, dataset))
        return EXIT_OK
    results_path = atomic_write_json(out / "results.json", outcome.results)
    done = len(outcome.image_ids) - len(outcome.skipped)  # a skipped image is not done: it scores as a miss
    skipped = f", {len(outcome.skipped)} skipped" if outcome.skipped else ""
    logger.log(RESULT, f"{done} images ({outcome.resumed} resumed){skipped}, {len(outcome.results)} detections -> {results_path}")
    if outcome.processed_now:
        logger.log(RESULT, f"throughput this run: {outcome.images_per_second:.2f} images/s end to end "
             f"(inference alone {_inference_rate(outcome):.2f} images/s)")
    if annotations is None:
        logger.log(RESULT, "not scored: these images have no annotations (give --annotations or --coco-root for an AP)")
        return EXIT_OK
    weights = model.weights_record()
    summary = score_results(annotations, outcome.results, outcome.image_ids, out / "summary.json",
                            extra={"identity": identity, "batch_size": batch_size, "skipped": outcome.skipped,
                                   "golden_weights": model.golden_numbers(weights), "weights": weights,
                                   **_speed(outcome, earlier)})
    if report:
        from m2det_impl.gating.report import write_run_report

        paths = write_run_report(out, summary, cfg, records, outcome.results, annotations)
        logger.log(RESULT, "report: " + ", ".join(str(p) for p in paths))
    code = announce_and_gate(summary, out / "summary.json", min_ap)
    if model.golden:
        logger.info("NOTE: golden (untrained) weights: the AP above measures the pipeline, not the model; "
            "pass --weights m2det512_vgg.pth for the real figure")
    return code


def _run_task(ready, **kwargs) -> dict:
    """One device's shard of :func:`run` (a device worker's task); the shard file it wrote."""
    from m2det_impl.pipeline.shards import parse_shard, shard_results_name

    ready()  # an accuracy run: no timed start to align
    code = run(**kwargs)
    index, count = parse_shard(kwargs["shard"])
    return {"device": kwargs["model"].device_id, "code": code,
            "shard_file": str(Path(kwargs["out"]) / shard_results_name(index, count))}


def _run_on_devices(dataset: Dataset, cfg: M2DetConfig, model: ModelSpec, out: PathLike, devices: Sequence[int], *,
                    batch_size: Optional[int], fresh: bool, skip_bad: bool, loader_threads: int, host: str,
                    report: bool, min_ap: Optional[float]) -> int:
    from m2det_impl.pipeline.evaluate import score_results
    from m2det_impl.pipeline.shards import merge_shard_files
    from m2det_impl.workflows.devices import DeviceTask, run_on_devices

    out = ensure_output_folder(out)
    count = len(devices)
    done = run_on_devices([DeviceTask(device, "m2det_impl.workflows.run:_run_task", dict(
        dataset=dataset, cfg=cfg, model=replace(model, device_id=device), out=str(out), batch_size=batch_size,
        shard=f"{k}/{count}", fresh=fresh, skip_bad=skip_bad, loader_threads=loader_threads, host=host,
        report=False, min_ap=None, progress=False)) for k, device in enumerate(devices)])
    merged, image_ids, skipped = merge_shard_files([d["shard_file"] for d in done],
                                                   [r.image_id for r in dataset.records])
    results_path = atomic_write_json(out / "results.json", merged)
    logger.log(RESULT, f"{len(image_ids)} images on devices {', '.join(map(str, devices))} (device k ran shard "
                       f"k/{count}), {len(merged)} detections -> {results_path}")
    if dataset.annotations is None:
        logger.log(RESULT, "not scored: these images have no annotations (give --annotations or --coco-root for an AP)")
        return EXIT_OK
    identity = model.identity(cfg)
    weights = model.weights_record()
    summary = score_results(dataset.annotations, merged, image_ids, out / "summary.json",
                            extra={"identity": identity, "batch_size": batch_size, "skipped": skipped,
                                   "golden_weights": model.golden_numbers(weights), "weights": weights,
                                   "devices": list(devices),
                                   "shards": [d["shard_file"] for d in done]})
    if report:
        from m2det_impl.gating.report import write_run_report

        paths = write_run_report(out, summary, cfg, dataset.records, merged, dataset.annotations)
        logger.log(RESULT, "report: " + ", ".join(str(p) for p in paths))
    return announce_and_gate(summary, out / "summary.json", min_ap)
