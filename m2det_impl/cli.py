"""The ``m2det`` command: the guide's workflow (export, preprocess, infer,
evaluate) in one tool, plus the streaming ``run``, ``merge``, ``bench`` and
``report``.

Argument parsing and printing only: each subcommand is a thin call into the
modules, so everything here is also a Python API. Exit codes: 0 success,
1 a gate failed (``--min-ap``), 2 bad input or usage (one line on stderr, no
traceback), 3 an unexpected internal error (one line too), 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import List, Optional, Sequence

from . import __version__
from .errors import M2DetError

EXIT_OK, EXIT_GATE, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 130
EXIT_INTERNAL = 3  # an unexpected exception: still one line, never a traceback (M2DET_DEBUG=1 shows it)
# atc --precision_mode values the fp16 forecast emulates (m2det_impl.precision.PRECISION_MODES; kept here so
# that building the parser does not import onnx)
PRECISION_MODE_CHOICES = ("force_fp16", "allow_mix_precision", "must_keep_origin_dtype")
GOLDEN_WARNING = (
    "WARNING: no --weights given: using the deterministic GOLDEN weights (random, salt 0).\n"
    "WARNING: the pipeline is real, the AP is MEANINGLESS. Pass --weights m2det512_vgg.pth for a real score."
)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _int_list(text: str) -> List[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


# ------------------------------------------------------------ data options
def _add_dataset_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("dataset (default: the bundled mini COCO set in fixtures/mini_coco)")
    g.add_argument("--coco-root", help="folder with annotations/instances_minival2014.json and val2014/")
    g.add_argument("--annotations", help="COCO annotation file (overrides --coco-root's)")
    g.add_argument("--images", help="image folder (overrides --coco-root's val2014/)")
    g.add_argument("--limit", type=_positive_int, help="only the first N images (by id)")


def _resolve_dataset(args):
    """-> (records, annotation file or None)."""
    from .dataset import coco_records, default_dataset_paths, folder_records

    annotations = Path(args.annotations) if args.annotations else None
    images = Path(args.images) if args.images else None
    if annotations is None or images is None:
        default_ann, default_images = (None, None)
        if args.coco_root or annotations is None and images is None:
            default_ann, default_images = default_dataset_paths(args.coco_root)
        annotations = annotations or default_ann
        images = images or default_images
    records = coco_records(annotations, images) if annotations else folder_records(images)
    if args.limit:
        records = records[: args.limit]
    return records, annotations


def _add_model_options(p: argparse.ArgumentParser, backends=True) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--size", type=int, help="input size preset: 320, 512, 704, 800 (default 512, or --config's)")
    g.add_argument("--config", help="the original repository's config file (configs/m2det512_vgg.py); read as "
                                    "literals only, never run")
    g.add_argument("--weights", help="trained checkpoint (m2det512_vgg.pth); default: golden weights, AP meaningless")
    if backends:
        g.add_argument("--backend", choices=("onnxruntime", "onnxruntime-int8", "torch", "om"), default="onnxruntime",
                       help="onnxruntime-int8: the static int8 (QDQ) model, quantized once and cached (--calib)")
        g.add_argument("--onnx", help="ONNX model to run (default: a cached export of --weights)")
        _add_calibration_options(g)
        g.add_argument("--om", help=".om model for --backend om")
        g.add_argument("--device-id", type=int, default=0, help="NPU device id (default 0)")
        g.add_argument("--threads", type=int, help="intra-op threads for onnxruntime/torch")
        g.add_argument("--batch-size", type=_positive_int, default=1)


def _add_calibration_options(g) -> None:
    from .quantize import DEFAULT_CALIBRATION_IMAGES

    g.add_argument("--calib", metavar="DIR", help="int8 calibration images: a folder of images or a COCO root "
                                                  "(val2014/ images outside minival when there are enough); "
                                                  "default: the bundled mini COCO set")
    g.add_argument("--calib-images", type=_positive_int, default=DEFAULT_CALIBRATION_IMAGES,
                   help=f"how many calibration images, spread evenly over the folder (default "
                        f"{DEFAULT_CALIBRATION_IMAGES})")


def _config(args):
    from .config import get_config

    if getattr(args, "config", None):
        from .config_file import load_config_file

        read = load_config_file(args.config)
        if args.size is not None and args.size != read.config.size:
            raise M2DetError(f"--size {args.size} contradicts {args.config} (model.input_size {read.config.size})")
        for line in read.differences:
            _log(f"config {args.config}: {line}")
        return read.config
    return get_config(512 if getattr(args, "size", None) is None else args.size)


def _preflight(args) -> None:
    """Fail in the first second on what would otherwise fail after hours."""
    from .preflight import check_model_inputs

    check_model_inputs(getattr(args, "backend", None), weights=args.weights, onnx=getattr(args, "onnx", None),
                       om=getattr(args, "om", None))


def _backend(args, cfg):
    from .artifacts import make_backend

    if args.weights is None and args.backend != "om" and not args.onnx:
        _log(GOLDEN_WARNING)
    return make_backend(args.backend, cfg, weights=args.weights, onnx_path=args.onnx, om_path=args.om,
                        device_id=args.device_id, threads=args.threads, log=_log,
                        calib=getattr(args, "calib", None), calib_images=getattr(args, "calib_images", None))


def _identity(args, cfg) -> dict:
    from .artifacts import weights_tag

    model = args.om or args.onnx
    return {
        "size": cfg.size,
        "backend": args.backend,
        "model": str(Path(model).resolve()) if model else None,
        "weights": weights_tag(args.weights),
        "test": {k: v for k, v in vars(cfg.test).items()},
        **({"config": _config_differences(cfg)} if getattr(args, "config", None) else {}),
        **({"calibration": {"dir": str(Path(args.calib).resolve()) if args.calib else "bundled mini COCO",
                            "images": args.calib_images}}
           if args.backend == "onnxruntime-int8" and not args.onnx else {}),
    }


def _config_differences(cfg) -> List[str]:
    from .config_file import _differences

    return _differences(cfg)


# -------------------------------------------------------------- subcommands
def cmd_run(args) -> int:
    from .dataset import parse_shard, select_shard
    from .io_utils import atomic_write_json
    from .pipeline import PartialStore, run_pipeline, shard_results_name, write_shard_file

    cfg = _config(args)
    _preflight(args)
    records, annotations = _resolve_dataset(args)
    shard = parse_shard(args.shard) if args.shard else None
    if shard:
        records = select_shard(records, *shard)
    out = Path(args.out)
    _check_writable(out)
    category_ids = _category_ids(annotations) if annotations else list(range(1, cfg.num_classes))
    identity = _identity(args, cfg)
    tag = f"shard-{shard[0]}-of-{shard[1]}" if shard else "full"
    store = PartialStore(out / f".partial.{tag}.jsonl", identity, fresh=args.fresh, lock=True)
    try:
        if store.done or store.skipped:
            _log(f"resuming: {len(store.finished())} of {len(records)} images already done in {store.path}")
        backend = _backend(args, cfg)
        try:
            outcome = run_pipeline(records, backend, cfg, category_ids, batch_size=args.batch_size, store=store,
                                   skip_bad=args.skip_bad, loader_threads=args.loader_threads,
                                   progress=not args.quiet)
        finally:
            backend.close()
    finally:
        store.close()
    for image_id, reason in outcome.skipped.items():
        _log(f"skipped image {image_id}: {reason}")
    if shard:
        path = write_shard_file(out / shard_results_name(*shard), shard[0], shard[1], outcome, identity)
        print(f"shard {shard[0]}/{shard[1]}: {len(outcome.image_ids)} images, {len(outcome.results)} detections "
              f"-> {path}\nmerge all shards with: m2det merge {out}/results.shard-*-of-{shard[1]}.json")
        return EXIT_OK
    results_path = atomic_write_json(out / "results.json", outcome.results)
    print(f"{len(outcome.image_ids)} images ({outcome.resumed} resumed), {len(outcome.results)} detections "
          f"-> {results_path}")
    if outcome.processed_now:
        print(f"throughput this run: {outcome.images_per_second:.2f} images/s end to end "
              f"(inference alone {outcome.processed_now / max(outcome.infer_seconds, 1e-9):.2f} images/s)")
    if annotations is None:
        return EXIT_OK
    summary = _evaluate_and_write(annotations, outcome.results, outcome.image_ids, out / "summary.json",
                                  extra={"identity": identity, "batch_size": args.batch_size, "skipped": outcome.skipped,
                                         "golden_weights": args.weights is None,
                                         "images_per_second": outcome.images_per_second})
    if not args.no_report:
        from .report import write_run_report

        paths = write_run_report(out, summary, cfg, records, outcome.results, annotations)
        print("report: " + ", ".join(str(p) for p in paths))
    return _gate(summary, args.min_ap)


def _check_writable(folder: Path) -> None:
    """Fail before hours of work, not after."""
    import tempfile

    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as exc:
        from .errors import OutputFileError

        raise OutputFileError(folder, f"output folder is not writable ({exc.strerror or exc})", exc.errno) from None


def _category_ids(annotations) -> List[int]:
    from .coco import category_ids, load_annotations

    return category_ids(load_annotations(annotations))


def _evaluate_and_write(annotations, results, image_ids, summary_path: Path, extra: dict) -> dict:
    from .coco import evaluate
    from .io_utils import atomic_write_json

    summary = evaluate(annotations, results, image_ids=image_ids)
    data = {"ap": summary.ap, "stats": list(summary.stats), "stat_names": list(summary.names),
            "num_images": summary.num_images, "num_detections": summary.num_detections}
    data.update(extra)
    data["table"] = summary.text
    summary_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(summary_path, data, indent=2)
    print(summary.text, end="")
    print(f"AP@[.50:.95] = {summary.ap:.4f} over {len(image_ids)} images -> {summary_path}")
    return data


def _gate(summary: dict, min_ap: Optional[float]) -> int:
    if min_ap is None:
        return EXIT_OK
    if summary["ap"] >= min_ap:
        print(f"gate passed: AP {summary['ap']:.4f} >= {min_ap}")
        return EXIT_OK
    print(f"gate FAILED: AP {summary['ap']:.4f} < {min_ap}", file=sys.stderr)
    return EXIT_GATE


def cmd_evaluate(args) -> int:
    from tqdm.auto import tqdm

    from .coco import to_coco_results
    from .dataset import annotation_images
    from .io_utils import atomic_write_json
    from .outputs import read_pair, scan_outputs
    from .postprocess import detect
    from .preprocess import read_info
    from .priors import make_priors

    cfg = _config(args)
    annotations = Path(args.annotations)
    images = annotation_images(annotations)  # stem -> record (image id, width, height)
    category_ids = _category_ids(annotations)
    sizes = {stem: (r.width, r.height) for stem, r in images.items()}
    if args.image_info:
        sizes.update({stem: (e.width, e.height) for stem, e in read_info(args.image_info).items()})
    pairs, problems = scan_outputs(args.outputs, cfg)
    skipped = {p.stem: p.message for p in problems}
    unknown = [p.stem for p in pairs if p.stem not in images]
    if unknown:
        raise M2DetError(f"{args.outputs}: {len(unknown)} output(s) for images not in {annotations}, "
                         f"e.g. {unknown[0]}")
    if problems and not args.skip_bad:
        raise M2DetError(problems[0].message + (f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else "")
                         + "; use --skip-bad to record and go on")
    priors = make_priors(cfg)
    results = []
    for pair in tqdm(pairs, unit="img", desc="m2det evaluate", disable=args.quiet):
        image_id = images[pair.stem].image_id
        scores, loc = read_pair(pair, cfg)
        width, height = sizes[pair.stem]
        results.extend(to_coco_results(detect(scores, loc, priors, width, height, cfg), image_id, category_ids))
    image_ids = sorted({images[p.stem].image_id for p in pairs} | {images[s].image_id for s in skipped if s in images})
    if not image_ids:
        raise M2DetError(f"{args.outputs}: no readable outputs")
    results_path = atomic_write_json(args.results, results)
    print(f"{len(pairs)} images, {len(results)} detections -> {results_path}")
    summary = _evaluate_and_write(annotations, results, image_ids, Path(args.summary),
                                  extra={"skipped": skipped, "outputs": str(args.outputs)})
    return _gate(summary, args.min_ap)


def cmd_merge(args) -> int:
    from .dataset import annotation_images
    from .io_utils import atomic_write_json
    from .pipeline import merge_shard_files

    files: List[Path] = []
    for given in args.shards:
        path = Path(given)
        files.extend(sorted(path.glob("results.shard-*-of-*.json")) if path.is_dir() else [path])
    annotations = Path(args.annotations) if args.annotations else None
    expected = None
    if annotations is not None and not args.partial:
        expected = [r.image_id for r in annotation_images(annotations).values()]
        if args.limit:
            expected = sorted(expected)[: args.limit]
    results, image_ids, skipped = merge_shard_files(files, expected)
    results_path = atomic_write_json(args.results, results)
    print(f"merged {len(files)} shards: {len(image_ids)} images, {len(results)} detections -> {results_path}")
    if annotations is None:
        return EXIT_OK
    summary = _evaluate_and_write(annotations, results, image_ids, Path(args.summary),
                                  extra={"shards": [str(f) for f in files], "skipped": skipped})
    return _gate(summary, args.min_ap)


def cmd_export(args) -> int:
    import time

    from .artifacts import load_model
    from .export import atc_census, export_onnx, write_atc_script

    cfg = _config(args)
    _preflight(args)
    out_dir = Path(args.out_dir)
    _check_writable(out_dir)
    if args.weights is None:
        _log(GOLDEN_WARNING)
    if args.int8:
        return _export_int8(args, cfg, out_dir)
    model = load_model(cfg, args.weights)
    files = {}
    for batch in args.batch or [None]:
        path = out_dir / (f"m2det{cfg.size}" + ("" if batch is None else f"_bs{batch}") + ".onnx")
        start = time.perf_counter()
        files[batch] = export_onnx(model, path, cfg, batch=batch, opset=args.opset)
        kind = "dynamic batch" if batch is None else f"static batch {batch}"
        print(f"{path}: {kind}, {path.stat().st_size / 1e6:.1f} MB in {time.perf_counter() - start:.1f} s")
        print(atc_census(path).summary())
    static = {b: p for b, p in files.items() if b is not None}
    if static:
        script = write_atc_script(out_dir / "atc_build.sh", static, sorted(static), args.soc_version, cfg.size)
        print(f"atc commands -> {script}:")
        print(script.read_text(), end="")
    else:
        print("dynamic-batch export (for ONNX Runtime); atc needs static exports: pass --batch B (repeatable)")
    return EXIT_OK


def _export_int8(args, cfg, out_dir: Path) -> int:
    """``m2det export --int8``: the static int8 (QDQ) model for ONNX Runtime."""
    import shutil

    from .io_utils import atomic_write_json
    from .quantize import cached_int8, describe_int8

    if args.batch:
        raise M2DetError("--int8 makes one dynamic-batch QDQ model for ONNX Runtime; atc does not take it "
                         "(Ascend quantizes with its own AMCT tool): drop --batch")
    record = cached_int8(cfg, args.weights, args.calib, args.calib_images, progress=not args.quiet, log=_log)
    path = out_dir / f"m2det{cfg.size}_int8.onnx"
    tmp = path.with_name(f".{path.name}.tmp")
    shutil.copyfile(record.path, tmp)
    tmp.replace(path)
    info = describe_int8(path)
    atomic_write_json(path.with_suffix(".json"), {**info, "calibration_files": list(record.calibration),
                                                  "quantize_seconds": record.seconds, "fp32_source": str(record.source),
                                                  "weights": args.weights}, indent=1)
    print(f"{path}: int8 QDQ (opset {info['opset']}, {info['per_channel_weights']} per-channel weight tensors, "
          f"{info['quantize_linear']} QuantizeLinear; kept float: {info['float_ops'] or 'none'}), "
          f"{info['bytes'] / 1e6:.1f} MB; quantized in {record.seconds:.1f} s"
          + (" (cached)" if record.reused else ""))
    print(f"calibrated on {len(record.calibration)} images: " + ", ".join(Path(f).name for f in record.calibration))
    print(f"run it: m2det run --onnx {path}   (or --backend onnxruntime-int8); "
          f"against float32: m2det compare --int8 --int8-onnx {path}")
    return EXIT_OK


def cmd_preprocess(args) -> int:
    from concurrent.futures import ThreadPoolExecutor

    from tqdm.auto import tqdm

    from .preprocess import InfoEntry, jpg_info_entries, load_and_preprocess, write_bin, write_info

    cfg = _config(args)
    records, _ = _resolve_dataset(args)
    out = Path(args.output)
    _check_writable(out)

    def work(record):
        tensor, size = load_and_preprocess(record.path, cfg)
        return write_bin(out / f"{record.stem}.bin", tensor[None]), size

    with ThreadPoolExecutor(max_workers=args.workers) as pool:
        done = list(tqdm(pool.map(work, records), total=len(records), unit="img", desc="m2det preprocess",
                         disable=args.quiet))
    name = args.info_name
    bin_entries = [InfoEntry(i, str(path), cfg.size, cfg.size) for i, (path, _) in enumerate(done)]
    write_info(out / f"{name}_bin.info", bin_entries)
    write_info(out / f"{name}_jpg.info", jpg_info_entries([r.path for r in records], [s for _, s in done]))
    print(f"{len(done)} .bin files and {name}_bin.info, {name}_jpg.info -> {out}")
    return EXIT_OK


def cmd_infer(args) -> int:
    import numpy as np
    from tqdm.auto import tqdm

    from .outputs import write_outputs
    from .preprocess import list_images, load_and_preprocess, read_bin

    cfg = _config(args)
    inputs = Path(args.inputs)
    files = sorted(inputs.glob("*.bin")) if inputs.is_dir() else []
    if not files and inputs.is_dir():
        files = list_images(inputs, ("jpg", "jpeg", "JPG", "JPEG", "png"))
    if not files:
        raise M2DetError(f"{inputs}: no .bin inputs or images here")
    from .preflight import check_bin_inputs

    _preflight(args)
    check_bin_inputs(files, cfg)
    out = Path(args.output)
    _check_writable(out)
    first = 1 if args.naming == "benchmark" else 0
    backend = _backend(args, cfg)
    try:
        for start in tqdm(range(0, len(files), args.batch_size), unit="batch", desc="m2det infer", disable=args.quiet):
            chunk = files[start: start + args.batch_size]
            batch = np.concatenate([
                read_bin(f, cfg) if f.suffix == ".bin" else load_and_preprocess(f, cfg)[0][None] for f in chunk
            ])
            scores, loc = backend.infer(batch)
            for i, f in enumerate(chunk):
                write_outputs(out, f.stem, scores[i], loc[i], first_index=first)
    finally:
        backend.close()
    print(f"{len(files)} inputs -> {out} (<stem>_{first}.bin scores, <stem>_{first + 1}.bin loc)")
    return EXIT_OK


def cmd_bench(args) -> int:
    from .bench import run_bench

    cfg = _config(args)
    _preflight(args)
    versus = None
    if args.versus:
        from .artifacts import make_backend

        def versus():
            return make_backend(args.versus, cfg, weights=args.weights, onnx_path=args.versus_onnx,
                                threads=args.threads, log=_log, calib=args.calib, calib_images=args.calib_images)

    return run_bench(args, cfg, backend_factory=lambda: _backend(args, cfg), log=_log, versus_factory=versus)


def cmd_report(args) -> int:
    from .report import write_conformance_report

    paths = write_conformance_report([Path(r) for r in args.runs], Path(args.output) if args.output else None,
                                     bench=Path(args.bench) if args.bench else None,
                                     compare=[Path(c) for c in args.compare or []])
    print("report: " + ", ".join(str(p) for p in paths))
    return EXIT_OK


def cmd_collect(args) -> int:
    from .collect import collect_results
    from .io_utils import atomic_write_json

    scored = []
    for item in args.ap or []:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--ap wants NAME=SUMMARY.json, got {item!r}")
        scored.append((name, path))
    data = collect_results(args.run or [], args.bench or [], args.saved_runs, args.annotations, scored=scored,
                           precision=args.precision, platform=args.platform, notes=args.note or [],
                           detections=not args.no_detections)
    path = atomic_write_json(args.out, data, indent=2)
    count = sum(len(v) for v in data["figures"].values())
    print(f"{count} figures of platform {data['platform']} -> {path}")
    return EXIT_OK


def cmd_regress(args) -> int:
    from .regress import run_regress

    return run_regress(args.baseline, args.current, args.out, allow_other_machine=args.allow_other_machine,
                       allow_other_workload=args.allow_other_workload, update=args.update, log=_log)


def cmd_compare(args) -> int:
    """Two saved runs or run folders, or a precision variant against float32."""
    chosen = [name for name, on in (("runs", bool(args.runs)), ("--emulate", bool(args.emulate)),
                                    ("--int8", args.int8)) if on]
    if len(chosen) != 1:
        raise M2DetError("give two saved runs or two m2det run folders (CANDIDATE REFERENCE), or --emulate fp16, "
                         "or --int8" + (f"; got {' and '.join(chosen)}" if chosen else ""))
    cfg = _config(args)
    if args.runs:
        return _compare_runs(args, cfg)
    from .precision import keep_dtype_lines
    from .variants import section_markdown, write_comparison

    _preflight(args)
    records, annotations = _resolve_dataset(args)
    out = Path(args.out or "m2det-compare")
    _check_writable(out)
    if args.weights is None and not args.onnx:
        _log(GOLDEN_WARNING)
    category_ids = _category_ids(annotations) if annotations else None
    data = (_compare_fp16(args, cfg, records, annotations, category_ids) if args.emulate
            else _compare_int8(args, cfg, records, annotations, category_ids))
    write_comparison(out, data, log=_log)
    first = data.get("first_over_threshold") or []
    if first:
        from .io_utils import atomic_write_text

        cfg_path = atomic_write_text(out / "keep_dtype.cfg", keep_dtype_lines(d["name"] for d in first))
        _log(f"{cfg_path}: the first layers over the thresholds; build with atc --keep_dtype={cfg_path} to keep "
             "them in float32, or forecast that first with --keep-fp32 NAME")
    print(section_markdown(data), end="")
    return _ap_drop_gate(data, args.max_ap_drop)


def _ap_drop_gate(data: dict, max_drop: Optional[float]) -> int:
    ap = data.get("ap") or (data.get("comparison") or {}).get("ap")
    if max_drop is None:
        return EXIT_OK
    if not ap:
        raise M2DetError("--max-ap-drop needs an annotated dataset (the AP of both runs)")
    drop = -ap["change"]
    if drop <= max_drop:
        print(f"gate passed: AP drop {drop * 100:.2f} points <= {max_drop * 100:.2f}")
        return EXIT_OK
    print(f"gate FAILED: AP drop {drop * 100:.2f} points > {max_drop * 100:.2f}", file=sys.stderr)
    return EXIT_GATE


def _compare_runs(args, cfg) -> int:
    """``m2det compare A B``: saved runs (.npz, under the tolerance file) or run folders."""
    if len(args.runs) != 2:
        raise M2DetError(f"compare takes two runs, CANDIDATE REFERENCE; got {len(args.runs)}")
    a, b = (Path(r) for r in args.runs)
    if a.is_dir() or b.is_dir():
        from .variants import compare_result_folders, comparison_markdown, write_comparison

        data = compare_result_folders(a, b).as_dict()
        print(comparison_markdown(data), end="")
        if args.out:
            write_comparison(Path(args.out), data, log=_log)
        return _ap_drop_gate(data, args.max_ap_drop)
    from .compare import DEFAULT_TOLERANCES_FILE, Tolerances, compare_saved, load_run

    report = compare_saved(load_run(a), load_run(b), args.pair, Tolerances.load(args.tolerances or DEFAULT_TOLERANCES_FILE),
                           not args.no_detections, cfg, verbose=print)
    print(report.message())
    return EXIT_OK if report.ok else EXIT_GATE


def _compare_fp16(args, cfg, records, annotations, category_ids) -> dict:
    from .artifacts import cached_onnx
    from .pipeline import iter_preprocessed
    from .precision import forecast_fp16_stream
    from .variants import VariantAccumulator

    model = Path(args.onnx) if args.onnx else cached_onnx(cfg, args.weights, log=_log)
    acc = VariantAccumulator("fp16 forecast", "float32", cfg, category_ids)

    def items():
        for record, tensor, size, err in iter_preprocessed(records, cfg):
            if err is not None:
                raise M2DetError(err)
            yield record.image_id, tensor, size

    forecast = forecast_fp16_stream(model, items(), cfg, args.precision_mode, args.keep_fp32, not args.no_layers,
                                    on_image=acc.add, keep_outputs=False, threads=args.threads,
                                    progress=not args.quiet, log=_log, total=len(records))
    data = forecast.as_dict(first=args.first)
    data["comparison"] = acc.finish(annotations).as_dict()
    data["model"] = str(model)
    return data


def _compare_int8(args, cfg, records, annotations, category_ids) -> dict:
    from .artifacts import make_backend
    from .quantize import describe_int8
    from .variants import compare_backends

    reference = make_backend("onnxruntime", cfg, weights=args.weights, onnx_path=args.onnx, threads=args.threads,
                             log=_log)
    candidate = make_backend("onnxruntime-int8", cfg, weights=args.weights, onnx_path=args.int8_onnx,
                             threads=args.threads, log=_log, calib=args.calib, calib_images=args.calib_images)
    try:
        result = compare_backends(records, cfg, candidate, reference, annotations, category_ids,
                                  progress=not args.quiet, names=("int8", "float32"))
    finally:
        candidate.close()
        reference.close()
    data = result.as_dict()
    data["kind"] = "int8"
    data["int8_model"] = {"path": candidate.source, **describe_int8(candidate.source)}
    data["float32_model"] = reference.source
    return data


# ------------------------------------------------------------------ parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="m2det", description="M2Det (VGG16, COCO) inference pipeline and conformance tool.")
    parser.add_argument("--version", action="version", version=f"m2det-conformance {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add(name: str, func, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--quiet", action="store_true", help="no progress bars")
        p.set_defaults(func=func)
        return p

    p = add("run", cmd_run, "the whole pipeline in memory: images -> detections -> results JSON, AP and a report")
    _add_dataset_options(p)
    _add_model_options(p)
    p.add_argument("--out", default="m2det-run", help="output folder (default ./m2det-run)")
    p.add_argument("--shard", help="I/N: process every N-th image from I; combine with m2det merge")
    p.add_argument("--fresh", action="store_true", help="ignore partial results from an interrupted run")
    p.add_argument("--skip-bad", action="store_true", help="record unreadable images and go on")
    p.add_argument("--loader-threads", type=_positive_int, default=2, help="image decoding threads (default 2)")
    p.add_argument("--no-report", action="store_true", help="skip the markdown/JSON/PNG report")
    p.add_argument("--min-ap", type=float, help="exit 1 when AP@[.50:.95] is below this")

    p = add("evaluate", cmd_evaluate, "ais_infer/benchmark output files -> COCO results JSON -> AP")
    p.add_argument("--outputs", required=True, help="folder of <stem>_0.bin/<stem>_1.bin (or _1/_2) files")
    p.add_argument("--annotations", required=True, help="COCO annotation file (instances_minival2014.json)")
    p.add_argument("--image-info", help="the guide's jpg info file, for original image sizes")
    p.add_argument("--results", required=True, help="COCO results JSON to write")
    p.add_argument("--summary", required=True, help="summary JSON to write (ap and the 12 COCOeval stats)")
    p.add_argument("--skip-bad", action="store_true", help="record missing/truncated outputs and go on")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--min-ap", type=float, help="exit 1 when AP@[.50:.95] is below this")

    p = add("merge", cmd_merge, "combine the results of m2det run --shard I/N and score them")
    p.add_argument("shards", nargs="+", help="shard result files, or folders holding them")
    p.add_argument("--annotations", help="COCO annotation file; checks every image is covered and scores")
    p.add_argument("--limit", type=_positive_int, help="the shards ran with --limit N")
    p.add_argument("--partial", action="store_true", help="allow images no shard covered")
    p.add_argument("--results", default="results.json")
    p.add_argument("--summary", default="summary.json")
    p.add_argument("--min-ap", type=float)

    p = add("export", cmd_export, "checkpoint -> ONNX (opset 11) plus the atc commands to build .om files")
    _add_model_options(p, backends=False)
    p.add_argument("--batch", type=_positive_int, action="append",
                   help="static batch size, repeatable (one file each, for atc); omit for one dynamic-batch file")
    p.add_argument("--out-dir", default=".", help="folder for m2det512[_bsB].onnx and atc_build.sh (default .)")
    p.add_argument("--opset", type=int, default=11)
    p.add_argument("--soc-version", default="Ascend310P3")
    g = p.add_argument_group("int8 (ONNX Runtime on the CPU)")
    g.add_argument("--int8", action="store_true", help="write m2det512_int8.onnx instead: static QDQ int8, "
                                                        "per-channel weights, opset 13, calibrated on --calib")
    _add_calibration_options(g)

    p = add("preprocess", cmd_preprocess, "images -> .bin inputs and the guide's bin/jpg info files")
    _add_dataset_options(p)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--output", required=True, help="folder for the .bin files and info files")
    p.add_argument("--info-name", default="m2det", help="info files are NAME_bin.info and NAME_jpg.info")
    p.add_argument("--workers", type=_positive_int, default=2)

    p = add("infer", cmd_infer, "run a backend over .bin files or images, writing ais_infer-style outputs")
    _add_model_options(p)
    p.add_argument("--inputs", required=True, help="folder of .bin inputs (or images)")
    p.add_argument("--output", required=True, help="folder for <stem>_0.bin (scores) and <stem>_1.bin (loc)")
    p.add_argument("--naming", choices=("ais", "benchmark"), default="ais",
                   help="ais: _0/_1 (ais_infer); benchmark: _1/_2 (the older tool)")

    p = add("bench", cmd_bench, "throughput per batch size: pure inference and end to end, with medians")
    _add_dataset_options(p)
    _add_model_options(p)
    p.add_argument("--batch-sizes", type=_int_list, default=[1], help="comma separated (default 1)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=_positive_int, default=3)
    p.add_argument("--host-images", type=_positive_int, default=200, help="images for the host-side figure")
    p.add_argument("--no-end-to-end", action="store_true")
    p.add_argument("--loader-threads", type=_positive_int, default=2, help="image decoding threads (default 2)")
    p.add_argument("--output", default="m2det-bench", help="folder for bench.json and bench.md")
    p.add_argument("--versus", choices=("onnxruntime", "onnxruntime-int8", "torch"),
                   help="also measure this backend's pure inference side by side (repeats alternating) and print "
                        "the speed ratio, e.g. --versus onnxruntime-int8")
    p.add_argument("--versus-onnx", metavar="PATH", help="ONNX model for --versus (default: cached, as --onnx)")

    p = add("report", cmd_report, "conformance report of a run folder, side by side with the guide's figures")
    p.add_argument("runs", nargs="+", help="folders written by m2det run (one per backend/batch size)")
    p.add_argument("--bench", help="bench.json from m2det bench")
    p.add_argument("--compare", action="append", metavar="JSON",
                   help="compare.json from m2det compare (--emulate fp16, --int8), repeatable: precision variants")
    p.add_argument("--output", help="folder for the report (default: the run folder)")

    p = add("compare", cmd_compare, "compare two runs, or forecast a precision variant against float32: "
                                     "--emulate fp16 (the 310P's drift, per output and per layer) or --int8")
    p.add_argument("runs", nargs="*", metavar="RUN", help="CANDIDATE REFERENCE: two saved runs (.npz from "
                   "--save-outputs, held to fixtures/tolerances.json) or two m2det run folders (detections, AP)")
    p.add_argument("--emulate", choices=("fp16",), help="forecast the .om's fp16 drift with an fp16-emulating "
                                                        "ONNX model on the CPU")
    p.add_argument("--precision-mode", choices=PRECISION_MODE_CHOICES, default="force_fp16",
                   help="atc --precision_mode to emulate (default force_fp16, atc's default)")
    p.add_argument("--keep-fp32", action="append", metavar="NAME",
                   help="op type (Softmax) or node name kept in float32, repeatable: atc's --keep_dtype for "
                        "force_fp16, the block list for allow_mix_precision (default there: Softmax, "
                        "BatchNormalization)")
    p.add_argument("--no-layers", action="store_true", help="outputs and detections only (no per-layer drift; "
                                                            "faster, less memory)")
    p.add_argument("--first", type=_positive_int, default=5, help="list this many first layers over the thresholds")
    p.add_argument("--int8", action="store_true", help="the int8 (QDQ) model against float32 ONNX Runtime: "
                                                       "drift, detection agreement, AP change, speed")
    p.add_argument("--int8-onnx", metavar="PATH", help="int8 model to compare (default: the cached quantization "
                                                       "of --weights on --calib)")
    _add_dataset_options(p)
    _add_model_options(p, backends=False)
    g = p.add_argument_group("models compared")
    g.add_argument("--onnx", help="float32 ONNX model (default: a cached export of --weights)")
    g.add_argument("--threads", type=int, help="intra-op threads for onnxruntime")
    _add_calibration_options(g)
    g = p.add_argument_group("saved runs")
    g.add_argument("--pair", help="tolerance key, default '<candidate backend>/<reference backend>'")
    g.add_argument("--tolerances", help="tolerance file (default fixtures/tolerances.json)")
    g.add_argument("--no-detections", action="store_true", help="raw outputs only")
    p.add_argument("--out", help="folder for compare.json, compare.md and keep_dtype.cfg (default ./m2det-compare; "
                                 "for two run folders: only when given)")
    p.add_argument("--max-ap-drop", type=float, metavar="X", help="exit 1 when the candidate's AP@[.50:.95] is "
                                                                  "more than X below the reference's (0.01 = 1 point)")

    p = add("collect", cmd_collect, "gather run summaries, bench.json and saved runs into the results file "
                                    "m2det regress reads")
    p.add_argument("--run", action="append", help="folder written by m2det run (its summary.json); repeatable")
    p.add_argument("--ap", action="append", metavar="NAME=SUMMARY",
                   help="figure ap/NAME from an m2det evaluate summary on the same images; repeatable")
    p.add_argument("--bench", action="append", help="bench.json written by m2det bench; repeatable")
    p.add_argument("--saved-runs", help="folder of runs saved by pytest --save-outputs (tolerance statistics)")
    p.add_argument("--annotations", help="the runs' COCO annotation file (identifies the dataset)")
    p.add_argument("--precision", help="fp32, fp16, int8 (default: fp16 for om runs, else fp32)")
    p.add_argument("--platform", help="platform name (default: from this machine, e.g. cpu-x86_64-2core)")
    p.add_argument("--note", action="append", help="a line to carry into the regression report; repeatable")
    p.add_argument("--no-detections", action="store_true", help="raw-output statistics only")
    p.add_argument("--out", default="results.json", help="results file to write (default results.json)")

    p = add("regress", cmd_regress, "compare current results with a baseline under the baseline's one-sided rules; "
                                    "exit 1 on a regression, 3 when machine or workload differ (not gated)")
    p.add_argument("--baseline", required=True, help="fixtures/baselines/<platform>.json")
    p.add_argument("--current", required=True, help="results file written by m2det collect")
    p.add_argument("--out", help="folder for regress.json and regress.md (default: the current file's folder)")
    p.add_argument("--allow-other-machine", action="store_true",
                   help="gate even though the baseline was measured on another machine (still warns)")
    p.add_argument("--allow-other-workload", action="store_true",
                   help="gate even though size, weights, images or precision differ (still warns)")
    p.add_argument("--update", action="store_true",
                   help="deliberately rewrite the baseline from the current results (atomic; creates it if absent)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        # `m2det` alone: the main job on the embedded default.
        args = parser.parse_args(["run", *(argv or [])])
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        _log("m2det: interrupted; partial results are kept, run the same command again to resume")
        return EXIT_INTERRUPTED
    except (M2DetError, ValueError, OSError) as exc:
        if os.environ.get("M2DET_DEBUG"):
            raise
        _log(f"m2det {args.command}: error: {_one_line(exc)}")
        return EXIT_ERROR
    except Exception as exc:  # noqa: BLE001 - the safety net: a traceback helps no user of a release gate
        if os.environ.get("M2DET_DEBUG"):
            raise
        _log(f"m2det {args.command}: internal error: {type(exc).__name__}: {_one_line(exc)} "
             "(unexpected; rerun with M2DET_DEBUG=1 for the traceback)")
        return EXIT_INTERNAL


def _one_line(exc: BaseException) -> str:
    """The message of an error on one line; a bare OSError (a full disk, say)
    gets its file and reason rather than ``[Errno 28] ...``."""
    if isinstance(exc, OSError) and not isinstance(exc, M2DetError) and exc.strerror:
        where = f"{exc.filename}: " if exc.filename else ""
        text = f"{where}{exc.strerror}"
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
