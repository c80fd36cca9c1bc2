"""``m2det bench``: throughput per batch size, pure inference and end to end, paired, plus the host side."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Sequence

from m2det_impl._io import PathLike, atomic_write_json, atomic_write_text, ensure_output_folder
from m2det_impl.backends.spec import ModelSpec
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



def bench(dataset: Dataset, cfg: M2DetConfig, model: ModelSpec, output: PathLike, *,
          batch_sizes: Sequence[int] = (1,), warmup: int = 1, repeats: int = 3, host_images: int = 200,
          end_to_end: bool = True, loader_threads: int = 2, host: str = "auto", versus: Optional[ModelSpec] = None,
          published: str = DEFAULT_PUBLISHED) -> int:
    """``m2det bench``: measure, write bench.json and bench.md, print the table.

    ``published`` names the published table (``m2det_impl.published.published_names()``)
    the figures are shown beside; its name, source and figures are recorded in bench.json.

    With ``versus`` a second backend's pure inference is measured side by side
    with the first (alternating repeats) and the speed ratio reported. The
    output folder is checked before anything is measured."""
    from m2det_impl.pipeline.preprocess import load_and_preprocess

    table = published_record(published)  # an unknown name fails before any work
    model.preflight(cfg)
    if versus is not None:
        versus.preflight(cfg)
    out = ensure_output_folder(output)
    records = dataset.records
    category_ids = category_ids_for(dataset.annotations, cfg)
    tensors = [load_and_preprocess(r.path, cfg)[0] for r in records[: max(batch_sizes)]]
    backend = model.create(cfg)
    other = None
    try:
        other = versus.create(cfg) if versus is not None else None
        data: Dict[str, object] = {"backend": getattr(backend, "name", model.backend), "size": cfg.size,
                                   "machine": machine_info(), "warmup": warmup, "repeats": repeats,
                                   "published": table, "weights": model.weights_record(),
                                   "inference": [], "end_to_end": []}
        for b in batch_sizes:
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
