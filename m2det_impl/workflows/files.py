"""The guide's file-based flow: ``m2det export``, ``m2det preprocess`` and ``m2det infer``.

Checkpoint -> ONNX (+ the atc commands), images -> ``.bin`` inputs and info
files, and a backend over ``.bin`` inputs writing the output layout ais_bench
writes, so the guide's own post-processing runs on it unchanged.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from m2det_impl._io import PathLike, atomic_link_or_copy, ensure_output_folder, output_folder
from m2det_impl.backends.registry import runtimes
from m2det_impl.backends.spec import ModelSpec, warn_golden
from m2det_impl.errors import CheckpointError, InputFileError, UnusedOptionError, UsageError
from m2det_impl.exit_codes import EXIT_OK
from m2det_impl.logs import RESULT, get_logger
from m2det_impl.network.config import M2DetConfig
from m2det_impl.pipeline.dataset import Dataset

__all__ = ["export", "export_int8", "preprocess", "infer", "IMAGE_SUFFIXES"]

logger = get_logger(__name__)

IMAGE_SUFFIXES = ("jpg", "jpeg", "JPG", "JPEG", "png")


def export(cfg: M2DetConfig, out_dir: PathLike, *, weights: Optional[PathLike] = None,
           batches: Sequence[int] = (), opset: int = 11, soc_version: str = "Ascend310P3",
           dynamic_batches: Sequence[int] = ()) -> Dict[Optional[int], Path]:
    """ONNX files (one dynamic-batch file, or one per static batch for atc) and
    what each runtime's build step needs beside them (``atc_build.sh`` and the
    atc census, from the Ascend entry); returns batch -> file. ``dynamic_batches``
    (with no ``batches``): the dynamic-batch file, and in ``atc_build.sh`` the
    command that builds one dynamic-batch ``.om`` for those batches.

    Each file comes through the one model cache (:func:`m2det_impl.backends.cache.cached_export`):
    an export made before for the same config, weights, batch, opset, library
    versions and exporter source is copied, not redone, and a new one is kept
    for the next run."""
    from m2det_impl.backends.cache import cached_export
    from m2det_impl.backends.preflight import check_model_file
    from m2det_impl.network.export import check_opset
    from m2det_impl.network.model import load_model

    check_opset(opset)
    check_model_file(weights, "checkpoint file", CheckpointError)
    if dynamic_batches and batches:
        raise UsageError("--dynamic-batch-sizes builds one dynamic-batch .om from the dynamic export; --batch "
                         "makes static exports: give one or the other")
    with output_folder(out_dir) as made:  # a checkpoint refused at reading leaves no new empty folder
        out_dir = made.resolve()
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
            linked = atomic_link_or_copy(record.path, path)
            files[batch] = path
            kind = "dynamic batch" if batch is None else f"static batch {batch}"
            how = "from the export cache" if record.reused else "exported"
            share = "a hard link to the cached file: one copy on disk" if linked else "a copy of the cached file"
            logger.log(RESULT, f"{path}: {kind}, {path.stat().st_size / 1e6:.1f} MB ({how}, {share}; the export "
                               f"took {record.seconds:.1f} s)")
    for entry in runtimes().values():  # each runtime's build step beside the ONNX files (atc's census and script)
        if entry.after_export is not None:
            for line in entry.after_export(files, out_dir, soc_version=soc_version, size=cfg.size,
                                           dynamic_batches=tuple(dynamic_batches)):
                logger.log(RESULT, line)
    return files


def export_int8(cfg: M2DetConfig, out_dir: PathLike, *, weights: Optional[PathLike] = None,
                calib: Optional[PathLike] = None, calib_images: int = 16, progress: bool = False) -> Path:
    """``m2det export --int8``: the int8 variant's model file (the registry's int8 runtime makes it), with its
    description beside it."""
    from m2det_impl.backends.preflight import check_model_file
    from m2det_impl.backends.registry import runtime_for_precision

    check_model_file(weights, "checkpoint file", CheckpointError)
    variant = runtime_for_precision("int8")
    ModelSpec(backend=variant.name, weights=weights, calib=calib, calib_images=calib_images).preflight(cfg)
    with output_folder(out_dir) as folder:
        if weights is None:
            warn_golden()
        path, lines = variant.export_model(cfg, folder.resolve(), weights=weights, calib=calib,
                                           calib_images=calib_images, progress=progress)
    for line in lines:
        logger.log(RESULT, line)
    return path


def preprocess(dataset: Dataset, cfg: M2DetConfig, output: PathLike, *, info_name: str = "m2det",
               workers: int = 2, progress: bool = True, skip_bad: bool = False) -> int:
    """Images -> ``<stem>.bin`` (float32, [1, 3, S, S]) and the guide's ``NAME_bin.info`` / ``NAME_jpg.info``.

    An unreadable image stops the job and removes the ``.bin`` files this call wrote, so a folder never
    holds inputs without their info files; with ``skip_bad`` it is named, left out of both info files,
    and the job goes on."""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm.auto import tqdm

    from m2det_impl.pipeline.preprocess import InfoEntry, jpg_info_entries, load_and_preprocess, write_bin, write_info

    with output_folder(output) as out:  # one unreadable image: no .bin left, nor a new empty folder
        records = dataset.records

        written: List[Path] = []

        def work(record):
            try:
                tensor, size = load_and_preprocess(record.path, cfg)
            except InputFileError as exc:
                if not skip_bad:
                    raise
                return record, None, str(exc)
            path = write_bin(out / f"{record.stem}.bin", tensor[None])
            written.append(path)
            return record, (path, size), None

        try:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                outcomes = list(tqdm(pool.map(work, records), total=len(records), unit="img", desc="m2det preprocess",
                                     disable=not progress))
        except BaseException:
            for path in written:  # no .bin without its info files
                path.unlink(missing_ok=True)
            raise
        done = [(record, result) for record, result, _ in outcomes if result is not None]
        for record, _, reason in outcomes:
            if reason is not None:
                logger.warning(f"skipped {record.path}: {reason}")
        bin_entries = [InfoEntry(i, str(path), cfg.size, cfg.size) for i, (_, (path, _)) in enumerate(done)]
        write_info(out / f"{info_name}_bin.info", bin_entries)
        write_info(out / f"{info_name}_jpg.info", jpg_info_entries([r.path for r, _ in done], [s for _, (_, s) in done]))
        skipped = len(outcomes) - len(done)
        logger.log(RESULT, f"{len(done)} .bin files" + (f" ({skipped} unreadable image(s) skipped)" if skipped else "")
                   + f" and {info_name}_bin.info, {info_name}_jpg.info -> {out}")
    return EXIT_OK


@dataclass(frozen=True)
class InferResult:
    """Where ``infer`` wrote: the outputs folder and, for the ais layout, its summary file (several devices:
    the folder holding the ``device{N}`` folders, and the file with the total throughput)."""

    folder: Path
    summary: Optional[Path]
    count: int
    throughput: Optional[float] = None


def _input_files(inputs: Path) -> List[Path]:
    """ais_bench's inputs of a folder (``.bin``/``.npy``, natural order), else its images."""
    from m2det_impl.pipeline.ais_files import INPUT_SUFFIXES, natural_sorted
    from m2det_impl.pipeline.preprocess import list_images

    files = natural_sorted(p for p in inputs.iterdir() if p.suffix in INPUT_SUFFIXES and p.is_file())
    return files or natural_sorted(list_images(inputs, IMAGE_SUFFIXES))


def _check_npy_inputs(files: Sequence[Path], cfg: M2DetConfig) -> None:
    """Every ``.npy`` input holds one preprocessed image, float32 ``[1, 3, S, S]`` or ``[3, S, S]`` (its
    header only): ais_bench feeds an ``.npy``'s bytes uncast, so another type or size cannot be the model's."""
    import numpy as np

    for path in files:
        if path.suffix.lower() != ".npy":
            continue
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:  # EOFError: an empty file
            raise InputFileError(path, f"cannot read input .npy file ({getattr(exc, 'strerror', None) or exc})") \
                from None
        if array.dtype != np.float32 or tuple(array.shape) not in ((1, 3, cfg.size, cfg.size), (3, cfg.size, cfg.size)):
            raise InputFileError(path, f"input .npy holds {array.dtype} {list(array.shape)}, expected float32 "
                                       f"[1, 3, {cfg.size}, {cfg.size}] (one preprocessed image)")


def _read_input(path: Path, cfg: M2DetConfig):
    import numpy as np

    from m2det_impl.pipeline.preprocess import load_and_preprocess, read_bin

    suffix = path.suffix.lower()
    if suffix == ".bin":
        return read_bin(path, cfg)
    if suffix == ".npy":
        return np.load(path, allow_pickle=False).reshape(1, 3, cfg.size, cfg.size)
    return load_and_preprocess(path, cfg)[0][None]


def readable_images(files: Sequence[Path], skip_bad: bool, *, can_skip: bool = True) -> List[Path]:
    """The inputs, each image decoded once first: an unreadable image stops the job before anything is
    written (or a model is built), or (``skip_bad``) is named and left out. ``can_skip``: the command
    has ``--skip-bad`` to suggest."""
    from m2det_impl.pipeline.preprocess import load_image

    kept = []
    for path in files:
        if path.suffix.lower() not in (".bin", ".npy"):
            try:
                load_image(path)
            except InputFileError as exc:
                if not skip_bad:
                    hint = " (use --skip-bad to leave unreadable images out and go on)" if can_skip else ""
                    raise InputFileError(path, _reason(exc) + hint) from None
                logger.warning(f"skipped {path}: {_reason(exc)}")
                continue
        kept.append(path)
    return kept


def _reason(exc: InputFileError) -> str:
    """An input error's problem, without the file name (the caller names the file)."""
    return exc.problem


def _check_writable(folder: Path) -> None:
    """The folder can be written (or made), without making it: a bad input found later leaves nothing."""
    from m2det_impl.errors import OutputFileError

    probe = folder
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise OutputFileError(folder, f"output folder cannot be written ({probe} is not a writable folder)")


def not_resumed(naming: str, device_ids: Sequence[int], dump: bool) -> Optional[str]:
    """Why an ``infer`` job with these options does not resume after an interruption (the one line the
    command prints when it is interrupted, and logs when an unfinished folder is left alone); None when it
    resumes."""
    if naming != "ais":
        return "--naming benchmark writes flat files and no summary to resume from: a re-run writes every input again"
    if len(tuple(device_ids)) > 1:
        return "several devices (--device-id) do not resume: a re-run starts a new folder"
    if dump:
        return "a --dump job is not resumed (its dump holds every execute of one whole run): a re-run starts over"
    return None


def infer(inputs: PathLike, cfg: M2DetConfig, model: ModelSpec, output: PathLike, *,
          batch_size: Optional[int] = None, naming: str = "ais", output_dirname: Optional[str] = None,
          outfmt: str = "BIN", progress: bool = True, device_ids: Optional[Sequence[int]] = None,
          skip_bad: bool = False, fresh: bool = False) -> InferResult:
    """Run ``model`` over a folder of ``.bin``/``.npy`` inputs (or images) and write the
    outputs as the Ascend tools do: ``naming="ais"`` writes ais_bench's layout
    (a time-stamped sub-folder, or ``output_dirname``, with ``<stem>_0`` scores
    and ``<stem>_1`` loc, and ``<sub-folder>_summary.json`` beside it);
    ``naming="benchmark"`` writes the older tool's flat ``_1``/``_2`` files.

    Inputs are taken in ais_bench's natural order. The batch is the model's own
    when it has one (a static-batch ``.om``), else ``batch_size`` (a
    dynamic-batch ``.om`` checks it against the batches it was built with),
    else 1; the summary's throughput divides by the batch each execute ran,
    over the timed executes only (the backend's warm-up is in no list).

    ``device_ids`` with several ids runs one worker process per device, the
    inputs divided evenly in order, as ais_bench's ``--device 0,1``:
    ``<output>/<name>/device{N}/`` and ``device{N}_summary.json`` per device,
    and ``<output>/<name>/throughput.json`` with the sum of the devices'
    throughputs. Every check on the inputs, the options and the model runs
    before anything is written: ``.bin`` sizes, and each image input decoded
    once (an unreadable one stops the job with nothing written; with
    ``skip_bad`` it is named and left out).

    An interrupted job resumes (ais layout, one device, no dump: :func:`not_resumed`): the same call
    continues in the newest unfinished folder of the same job (or the ``output_dirname`` folder),
    skipping the inputs whose outputs are there, and its summary lists every input once; its timing
    figures are this call's executes only (``resumed_from`` in ``<name>_m2det.json`` counts the rest).
    ``fresh`` starts a new folder instead (:mod:`m2det_impl.pipeline.ais_resume`)."""
    from m2det_impl.backends.preflight import check_bin_inputs
    from m2det_impl.pipeline.ais_files import check_output_dirname
    from m2det_impl.workflows.devices import check_device_ids

    if naming == "benchmark":  # the older tool's layout has no sub-folder and one format: options of ais's refused
        if outfmt != "BIN":
            raise UnusedOptionError("--outfmt", f"--naming benchmark writes the older tool's flat .bin files, "
                                                f"never {outfmt}", "drop --outfmt, or use --naming ais")
        if output_dirname is not None:
            raise UnusedOptionError("--output-dirname", "--naming benchmark writes its flat files straight into "
                                                        "--output, with no sub-folder to name",
                                    "drop --output-dirname, or use --naming ais")
    inputs = Path(inputs)
    if not inputs.exists():
        raise InputFileError(inputs, "input folder not found")
    if not inputs.is_dir():
        raise InputFileError(inputs, "not a folder (give the folder of .bin or .npy inputs, or images)")
    if naming not in ("ais", "benchmark"):
        raise UsageError(f"naming must be ais or benchmark, got {naming!r}")
    check_output_dirname(output_dirname)
    files = _input_files(inputs)
    if not files:
        raise InputFileError(inputs, "no .bin inputs or images in this folder (nor .npy inputs)")
    devices = check_device_ids(device_ids if device_ids else [model.device_id], len(files))
    if len(devices) > 1 and naming != "ais":
        raise UsageError("several devices write ais_bench's per-device layout: use --naming ais")
    model.preflight(cfg, device_ids or ())
    check_bin_inputs([f for f in files if f.suffix.lower() == ".bin"], cfg)
    _check_npy_inputs(files, cfg)
    files = readable_images(files, skip_bad)
    if not files:
        raise InputFileError(inputs, "no readable input left (every image was unreadable)")
    out = Path(output)
    _check_writable(out)
    if batch_size is not None:
        model = replace(model, batch_size=batch_size)
    refused = not_resumed(naming, devices, model.dump is not None)
    if refused is not None and naming == "ais":
        from m2det_impl.pipeline.ais_resume import unfinished_folders

        pending = unfinished_folders(out)
        if pending and output_dirname is None:
            logger.warning(f"not resuming {pending[0]} (unfinished: no summary): {refused}")
    if len(devices) == 1:
        done = _infer_files([str(f) for f in files], cfg, replace(model, device_id=devices[0]), str(out),
                            batch_size=batch_size, naming=naming, output_dirname=output_dirname, outfmt=outfmt,
                            progress=progress, resume=refused is None, fresh=fresh)
        summary = Path(done["summary"]) if done["summary"] else None
        return InferResult(Path(done["folder"]), summary, len(files), done["throughput"])
    return _infer_on_devices(files, cfg, model, out, devices, batch_size=batch_size, output_dirname=output_dirname,
                             outfmt=outfmt)


def _infer_on_devices(files: Sequence[Path], cfg: M2DetConfig, model: ModelSpec, out: Path, devices: Sequence[int],
                      *, batch_size: Optional[int], output_dirname: Optional[str], outfmt: str) -> InferResult:
    import time

    from m2det_impl._io import atomic_write_json
    from m2det_impl.workflows.devices import DeviceTask, run_on_devices, split_evenly

    name = output_dirname or time.strftime("%Y_%m_%d-%H_%M_%S")
    root = out / name
    shares = split_evenly([str(f) for f in files], len(devices))
    tasks = [DeviceTask(device, "m2det_impl.workflows.files:_infer_task",
                        dict(files=share, cfg=cfg, model=replace(model, device_id=device), output=str(root),
                             batch_size=batch_size, naming="ais", output_dirname=f"device{device}", outfmt=outfmt,
                             progress=False))
             for device, share in zip(devices, shares)]
    results = run_on_devices(tasks)
    total = sum(float(r["throughput"]) for r in results if r["throughput"] is not None)
    path = atomic_write_json(root / "throughput.json", {
        "throughput": total,
        "how": "sum of the devices' throughputs (ais_bench's 'summary throughput'), each 1000 * batch / mean "
               "execute ms of that device's timed executes; the devices ran at once (after a common start)",
        "devices": [{k: r[k] for k in ("device", "throughput", "count", "batch", "summary", "folder", "start", "end")}
                    for r in results],
    }, indent=4)
    for r in results:
        logger.log(RESULT, f"device {r['device']}: {r['count']} inputs -> {r['folder']}, throughput "
                           f"{r['throughput']:.3f} img/s; summary {r['summary']}")
    logger.log(RESULT, f"{len(files)} inputs on {len(devices)} devices: total throughput {total:.3f} img/s -> {path}")
    return InferResult(root, path, len(files), total)


def _infer_task(ready, **kwargs) -> Dict[str, object]:
    """One device's share of :func:`infer` (a device worker's task)."""
    return _infer_files(ready=ready, **kwargs)


def _infer_files(files: Sequence[str], cfg: M2DetConfig, model: ModelSpec, output: str, *,
                 batch_size: Optional[int], naming: str, output_dirname: Optional[str], outfmt: str,
                 progress: bool, ready=None, resume: bool = False, fresh: bool = False) -> Dict[str, object]:
    """Open the backend, warm it up on the first batch, (``ready()``: wait for the other devices), then
    run every input and write the outputs; what came out, as a small dict. ``resume`` (ais layout): continue
    the unfinished folder of the same job, if any, running only the inputs it does not hold yet."""
    import numpy as np

    from m2det_impl.pipeline.ais_resume import FolderPlan

    paths = [Path(f) for f in files]
    plan: Optional[FolderPlan] = None
    if resume:
        from m2det_impl.pipeline.ais_resume import job_record, plan_folder

        job = job_record(model.identity(cfg), model.weights_record(), cfg, paths, batch_size=model.batch_asked(),
                         outfmt=outfmt)
        plan = plan_folder(output, job, paths, cfg, output_dirname=output_dirname, fresh=fresh)
    try:
        if plan is not None and plan.note:  # another job's folder left alone is worth a warning; a named one redone is not
            logger.log(logging.INFO if plan.start_over else logging.WARNING, plan.note)
        if plan is not None and plan.resumed:
            logger.info(f"resuming {plan.folder}: {len(plan.done)} of {len(paths)} inputs already done")
        todo = [p for p in paths if plan is None or str(p) not in plan.done]
        if not todo:  # every output was written before the interruption: only the summary is left to write
            return _finish_resumed(paths, plan, cfg, model, outfmt)
        backend = model.create(cfg)  # a batch the model cannot run fails here, before anything is written
        try:
            batch = backend.static_batch or batch_size or 1
            chunks = [todo[i: i + batch] for i in range(0, len(todo), batch)]
            first = np.concatenate([_read_input(f, cfg) for f in chunks[0]])
            backend.warm_up(first, max_batch=batch)
            if ready is not None:
                ready()
            out = ensure_output_folder(output)
            name = output_dirname
            if plan is not None:
                from m2det_impl.pipeline.ais_resume import claim_folder

                name = claim_folder(plan, batch).name
            elif naming == "ais" and name is None:  # never a finished folder of the same second
                from m2det_impl.pipeline.ais_resume import new_stamped_folder

                name = new_stamped_folder(out).name
            writer = _writer(out, name, outfmt, backend.flat_scores) if naming == "ais" else None
            done = _run_chunks(backend, chunks, first, batch, cfg, writer, out, naming, progress)
            times, clock = list(backend.execute_times_ms), backend.execute_clock
            h2d, d2h, warmup = list(backend.h2d_times_ms), list(backend.d2h_times_ms), backend.warmup_executes
        finally:
            backend.close()
        done.update(device=model.device_id, count=len(paths), batch=batch)
        if writer is None:
            index = 1 if naming == "benchmark" else 0
            logger.log(RESULT, f"{len(paths)} inputs -> {out} (<stem>_{index}.bin scores, <stem>_{index + 1}.bin loc)")
            return done
        for path in paths:
            if plan is not None and str(path) in plan.done:
                writer.adopt(path)
        resumed = len(paths) - len(todo)
        summary = writer.finish(batch_size=batch, execute_times_ms=times, clock=clock, h2d_ms=h2d, d2h_ms=d2h,
                                warmup_executes=warmup, order=paths,
                                extra={"backend": model.backend, "weights": model.weights_record(),
                                       "identity": model.identity(cfg), "device": model.device_id,
                                       "inputs": len(paths), **_resume_notes(resumed, len(todo))})
        if plan is not None:
            from m2det_impl.pipeline.ais_resume import finish_folder

            finish_folder(plan)
    finally:
        if plan is not None:
            plan.release()
    throughput = json.loads(summary.read_text())["throughput"]
    done.update(folder=str(writer.folder), summary=str(summary), throughput=throughput)
    over = f" (the {len(todo)} this run inferred; {resumed} were done before)" if resumed else ""
    logger.log(RESULT, f"{len(paths)} inputs -> {writer.folder} (<stem>_0 scores, <stem>_1 loc, {outfmt}); "
                       f"batch {batch}, throughput {_rate(throughput)} over {len(times)} timed executes{over} "
                       f"({warmup} warm-up execute(s) untimed); summary {summary}")
    return done


def _writer(out: Path, name: Optional[str], outfmt: str, flat_scores: bool):
    from m2det_impl.pipeline.ais_files import AisOutputWriter

    return AisOutputWriter(out, output_dirname=name, outfmt=outfmt, flat_scores=flat_scores)


def _run_chunks(backend, chunks, first, batch: int, cfg: M2DetConfig, writer, out: Path, naming: str,
                progress: bool) -> Dict[str, object]:
    """Infer each chunk (the first already read, for the warm-up) and write its outputs, one input at a time
    (each file atomically: an interruption leaves whole outputs and at most a temporary file)."""
    import time

    import numpy as np
    from tqdm.auto import tqdm

    from m2det_impl.pipeline.ais_files import write_outputs

    index = 1 if naming == "benchmark" else 0
    start = time.time()
    for k, chunk in enumerate(tqdm(chunks, unit="batch", desc="m2det infer", disable=not progress)):
        images = first if k == 0 else np.concatenate([_read_input(f, cfg) for f in chunk])
        scores, loc = backend.infer(images, max_batch=batch)
        for i, f in enumerate(chunk):
            if writer is not None:
                writer.add(f, scores[i], loc[i])
            else:
                write_outputs(out, f.stem, scores[i], loc[i], first_index=index)
    return {"start": start, "end": time.time(), "folder": str(out), "summary": None, "throughput": None}


def _resume_notes(resumed: int, inferred: int) -> Dict[str, object]:
    """What ``<name>_m2det.json`` says of a resumed job: how many inputs an earlier, interrupted run wrote, and
    that the timing figures of the summary are this run's executes alone (never theirs, never zeros)."""
    if not resumed:
        return {}
    return {"resumed_from": resumed, "inferred": inferred,
            "timing": f"the summary's execute times and throughput cover the {inferred} input(s) this run inferred; "
                      f"the {resumed} written before the interruption were timed by a run that wrote no summary"
                      + ("" if inferred else ": nothing was timed, so the throughput is null")}


def _rate(throughput: Optional[float]) -> str:
    return "not measured" if throughput is None else f"{throughput:.3f} img/s"


def _finish_resumed(paths: Sequence[Path], plan, cfg: M2DetConfig, model: ModelSpec, outfmt: str) -> Dict[str, object]:
    """A resumed job with nothing left to infer: the summary alone, no model loaded, no execute timed."""
    import time

    from m2det_impl.pipeline.ais_resume import claim_folder, finish_folder

    batch = plan.run_batch or model.batch_size or 1
    folder = claim_folder(plan, plan.run_batch)
    writer = _writer(folder.parent, folder.name, outfmt, False)
    for path in paths:
        writer.adopt(path)
    summary = writer.finish(batch_size=batch, execute_times_ms=[], order=paths,
                            extra={"backend": model.backend, "weights": model.weights_record(),
                                   "identity": model.identity(cfg), "device": model.device_id, "inputs": len(paths),
                                   **_resume_notes(len(paths), 0)})
    finish_folder(plan)
    now = time.time()
    logger.log(RESULT, f"{len(paths)} inputs -> {folder}: every output was written before the interruption; "
                       f"summary {summary} (throughput not measured: nothing was left to infer)")
    return {"device": model.device_id, "count": len(paths), "batch": batch, "start": now, "end": now,
            "folder": str(folder), "summary": str(summary), "throughput": None}
