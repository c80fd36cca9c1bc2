"""``m2det bench``: throughput per batch size, pure inference and end to end, paired, plus the host side."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from m2det_impl._io import PathLike, atomic_write_json, atomic_write_text, output_folder
from m2det_impl.backends.spec import ModelSpec
from m2det_impl.errors import UsageError
from m2det_impl.exit_codes import EXIT_OK
from m2det_impl.gating.bench import (
    measure_end_to_end,
    measure_host,
    measure_inference,
    measure_side_by_side,
    published_record,
    reference_postprocess_cases,
)
from m2det_impl.gating.bench_report import bench_markdown, machine_info
from m2det_impl.logs import RESULT, get_logger
from m2det_impl.network.config import M2DetConfig
from m2det_impl.pipeline.dataset import Dataset
from m2det_impl.published import DEFAULT_PUBLISHED
from m2det_impl.workflows.run import category_ids_for

__all__ = ["bench"]

logger = get_logger(__name__)



def _bench_sizes(backend, batch_sizes: Optional[Sequence[int]]) -> List[int]:
    """The batch sizes to measure: those asked for, else the model's own (a static-batch ``.om``), else 1.
    A static-batch model runs its own batch only: another would be a figure divided by a batch it never
    executed, so it is refused."""
    own = backend.static_batch if not getattr(backend, "dynamic_batch", False) else None
    sizes = list(batch_sizes) if batch_sizes else [backend.static_batch or 1]
    wrong = [b for b in sizes if own is not None and b != own]
    if wrong:
        raise UsageError(f"{backend.source or backend.name}: a static batch-{own} model runs batch {own} only, not "
                         f"{', '.join(map(str, wrong))}: leave --batch-sizes out (the model's batch is measured)")
    return sizes


def _use_batch(backend, batch: int) -> None:
    """A dynamic-batch model switches to ``batch`` (checked against the batches it was built with)."""
    if getattr(backend, "dynamic_batch", False):
        backend.use_batch(batch)


def bench(dataset: Dataset, cfg: M2DetConfig, model: ModelSpec, output: PathLike, *,
          batch_sizes: Optional[Sequence[int]] = None, warmup: int = 1, repeats: int = 3, host_images: int = 200,
          end_to_end: bool = True, loader_threads: int = 2, host: str = "auto", versus: Optional[ModelSpec] = None,
          published: str = DEFAULT_PUBLISHED, device_ids: Optional[Sequence[int]] = None) -> int:
    """``m2det bench``: measure, write bench.json and bench.md, print the table.

    ``published`` names the published table (``m2det_impl.published.published_names()``)
    the figures are shown beside; its name, source and figures are recorded in bench.json.

    With ``versus`` a second backend's pure inference is measured side by side
    with the first (alternating repeats) and the speed ratio reported. The
    output folder is checked before anything is measured.

    ``batch_sizes`` defaults to the model's own batch (a static-batch ``.om``),
    else 1. ``device_ids`` with several ids measures pure inference on every
    device at once, one worker process each (as ais_bench's ``--device``),
    and reports each device's figure and their sum; end to end and the host
    side are single-device measurements and are left out then."""
    from m2det_impl.pipeline.preprocess import load_and_preprocess
    from m2det_impl.workflows.devices import check_device_ids

    table = published_record(published)  # an unknown name fails before any work
    devices = check_device_ids(device_ids if device_ids else [model.device_id])
    if len(devices) > 1 and versus is not None:
        raise UsageError("--versus measures one device: give one --device-id with it")
    from m2det_impl.backends.preflight import check_models

    check_models([model] if versus is None else [model, versus], cfg, device_ids or ())
    if batch_sizes and model.batch_size is None:
        model = replace(model, batch_size=batch_sizes[0])  # the batch a dynamic-batch .om opens at
    with output_folder(output) as out:  # a model or image refused at loading leaves no new empty folder
        records = dataset.records
        if len(devices) > 1:
            return _bench_on_devices(records, cfg, model, out, devices, batch_sizes, warmup, repeats, table)
        category_ids = category_ids_for(dataset.annotations, cfg)
        backend = model.create(cfg)
        other = None
        try:
            batch_sizes = _bench_sizes(backend, batch_sizes)
            tensors = [load_and_preprocess(r.path, cfg)[0] for r in records[: max(batch_sizes)]]
            other = versus.create(cfg) if versus is not None else None
            data: Dict[str, object] = {"backend": getattr(backend, "name", model.backend), "size": cfg.size,
                                       "machine": machine_info(), "warmup": warmup, "repeats": repeats,
                                       "published": table, "weights": model.weights_record(),
                                       "inference": [], "end_to_end": []}
            for b in batch_sizes:
                _use_batch(backend, b)
                if other is None:
                    logger.info(f"pure inference, batch {b} ...")
                    data["inference"].append(measure_inference(backend, tensors, b, warmup, repeats))
                else:
                    names = (data["backend"], getattr(other, "name", "versus"))
                    if names[0] == names[1]:  # told apart by their model files (or roles)
                        names = tuple(f"{n} ({Path(src).name if src else role})" for n, src, role in
                                      zip(names, (backend.source, other.source), ("model", "versus")))
                        if names[0] == names[1]:
                            names = (names[0], names[1][:-1] + ", versus)")
                    logger.info(f"pure inference, batch {b}: {names[0]} and {names[1]} side by side ...")
                    rows = measure_side_by_side(dict(zip(names, (backend, other))), tensors, b, warmup,
                                                repeats)
                    data["inference"].append(rows[names[0]])
                    side = data.setdefault("versus", {"backend": names[1], "model": getattr(other, "source", None),
                                                      "weights": versus.weights_record(),
                                                      "inference": [], "speed_ratio": {}})
                    side["inference"].append(rows[names[1]])
                    side["speed_ratio"][str(b)] = rows[names[0]]["median_s_per_batch"] / rows[names[1]]["median_s_per_batch"]
                    logger.info(f"batch {b}: {names[1]} {rows[names[1]]['wall_clock_images_per_second']:.3f} img/s, {names[0]} "
                        f"{rows[names[0]]['wall_clock_images_per_second']:.3f} img/s (wall clock): "
                        f"speed ratio {side['speed_ratio'][str(b)]:.2f}x")
            if end_to_end:
                for b in batch_sizes:
                    _use_batch(backend, b)
                    logger.info(f"end to end over {len(records)} images, batch {b}, paired with pure inference ...")
                    data["end_to_end"].append(measure_end_to_end(backend, records, cfg, category_ids, b,
                                                                 repeats=repeats, loader_threads=loader_threads,
                                                                 host=host))
                    e = data["end_to_end"][-1]
                    logger.info(f"batch {b}: end to end {e['images_per_second']:.3f} img/s (host work in {e['host']}), "
                                f"paired pure inference {e['pure_images_per_second']:.3f} img/s (wall clock, same "
                                f"images): {e['ratio']:.1%}")
            if model.weights is None and cfg.size == 512:
                # Without a known trained checkpoint the backend may hold golden
                # (random) weights, which put ~47,000 scores above 0.1 in every
                # image, 10-100x a trained model; the reference's own
                # post-processing cases are shaped like a trained M2Det512's.
                host_outputs = reference_postprocess_cases()
                source = "the reference's post-processing cases (shaped like a trained M2Det512's outputs)"
            else:
                host_outputs = [tuple(a[0] for a in backend.infer(t[None])) for t in tensors[:4]]
                source = "this backend's outputs"
            logger.info(f"host side over {host_images} images, post-processing {source} ...")
            data["host"] = measure_host(records[: min(len(records), 8)], cfg, host_outputs, category_ids,
                                        images=host_images)
            data["host"]["outputs"] = source
        finally:
            backend.close()
            if other is not None:
                other.close()
        atomic_write_json(out / "bench.json", data, indent=2)
        text = bench_markdown(data)
        atomic_write_text(out / "bench.md", text)
        logger.log(RESULT, text)
        logger.log(RESULT, f"-> {out / 'bench.json'}, {out / 'bench.md'}")
        return EXIT_OK


def _bench_task(ready, *, records, cfg: M2DetConfig, model: ModelSpec, batch_sizes, warmup: int,
                repeats: int) -> Dict[str, object]:
    """One device's pure inference at every batch size (a device worker's task): warmed up, then ``ready()``."""
    import numpy as np

    from m2det_impl.pipeline.preprocess import load_and_preprocess

    backend = model.create(cfg)
    try:
        sizes = _bench_sizes(backend, batch_sizes)
        tensors = [load_and_preprocess(r.path, cfg)[0] for r in records[: max(sizes)]]
        _use_batch(backend, sizes[0])
        backend.warm_up(np.stack([tensors[i % len(tensors)] for i in range(sizes[0])]))
        ready()
        rows = []
        for b in sizes:
            _use_batch(backend, b)
            rows.append(measure_inference(backend, tensors, b, warmup, repeats))
        return {"device": model.device_id, "backend": getattr(backend, "name", model.backend), "inference": rows}
    finally:
        backend.close()


def _bench_on_devices(records, cfg: M2DetConfig, model: ModelSpec, out, devices: Sequence[int],
                      batch_sizes: Optional[Sequence[int]], warmup: int, repeats: int, table) -> int:
    from m2det_impl.workflows.devices import DeviceTask, run_on_devices

    results = run_on_devices([DeviceTask(d, "m2det_impl.workflows.bench:_bench_task", dict(
        records=list(records), cfg=cfg, model=replace(model, device_id=d), batch_sizes=batch_sizes, warmup=warmup,
        repeats=repeats)) for d in devices])
    rows = []
    for per_batch in zip(*(r["inference"] for r in results)):
        rates = [row["images_per_second"] for row in per_batch]
        walls = [row["wall_clock_images_per_second"] for row in per_batch]
        rows.append({**per_batch[0],
                     "images_per_second": None if any(r is None for r in rates) else sum(rates),
                     "wall_clock_images_per_second": sum(walls),
                     "how": "sum over the devices of each device's figure (ais_bench's 'summary throughput')",
                     "devices": {str(r["device"]): row for r, row in zip(results, per_batch)}})
    data: Dict[str, object] = {"backend": results[0]["backend"], "size": cfg.size, "machine": machine_info(),
                               "warmup": warmup, "repeats": repeats, "published": table,
                               "devices": list(devices), "inference": rows, "end_to_end": []}
    atomic_write_json(out / "bench.json", data, indent=2)
    text = bench_markdown(data) + (f"\n\nPure inference on devices {', '.join(map(str, devices))} at once, one "
                                   "worker process each: each row is the sum of the devices' figures (per device in "
                                   "bench.json); end to end and the host side are measured on one device only.\n")
    atomic_write_text(out / "bench.md", text)
    logger.log(RESULT, text)
    logger.log(RESULT, f"-> {out / 'bench.json'}, {out / 'bench.md'}")
    return EXIT_OK
