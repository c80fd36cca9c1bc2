"""The ``m2det`` command: the guide's workflow (export, preprocess, infer,
evaluate) in one tool, plus the streaming ``run``, ``merge``, ``bench`` and
``report``.

Argument parsing and printing only: each subcommand is a thin call into the
modules, so everything here is also a Python API. Exit codes: 0 success,
1 a gate failed (``--min-ap``), 2 bad input or usage (one line on stderr, no
traceback), 130 interrupted.
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
    g.add_argument("--size", type=int, default=512, help="input size preset: 320, 512, 704, 800 (default 512)")
    g.add_argument("--weights", help="trained checkpoint (m2det512_vgg.pth); default: golden weights, AP meaningless")
    if backends:
        g.add_argument("--backend", choices=("onnxruntime", "torch", "om"), default="onnxruntime")
        g.add_argument("--onnx", help="ONNX model to run (default: a cached export of --weights)")
        g.add_argument("--om", help=".om model for --backend om")
        g.add_argument("--device-id", type=int, default=0, help="NPU device id (default 0)")
        g.add_argument("--threads", type=int, help="intra-op threads for onnxruntime/torch")
        g.add_argument("--batch-size", type=_positive_int, default=1)


def _config(args):
    from .config import get_config

    return get_config(args.size)


def _backend(args, cfg):
    from .artifacts import make_backend

    if args.weights is None and args.backend != "om" and not args.onnx:
        _log(GOLDEN_WARNING)
    return make_backend(args.backend, cfg, weights=args.weights, onnx_path=args.onnx, om_path=args.om,
                        device_id=args.device_id, threads=args.threads, log=_log)


def _identity(args, cfg) -> dict:
    from .artifacts import weights_tag

    model = args.om or args.onnx
    return {
        "size": cfg.size,
        "backend": args.backend,
        "model": str(Path(model).resolve()) if model else None,
        "weights": weights_tag(args.weights),
        "test": {k: v for k, v in vars(cfg.test).items()},
    }


# -------------------------------------------------------------- subcommands
def cmd_run(args) -> int:
    from .dataset import parse_shard, select_shard
    from .io_utils import atomic_write_json
    from .pipeline import PartialStore, run_pipeline, shard_results_name, write_shard_file

    cfg = _config(args)
    records, annotations = _resolve_dataset(args)
    shard = parse_shard(args.shard) if args.shard else None
    if shard:
        records = select_shard(records, *shard)
    out = Path(args.out)
    _check_writable(out)
    category_ids = _category_ids(annotations) if annotations else list(range(1, cfg.num_classes))
    identity = _identity(args, cfg)
    tag = f"shard-{shard[0]}-of-{shard[1]}" if shard else "full"
    store = PartialStore(out / f".partial.{tag}.jsonl", identity, fresh=args.fresh)
    if store.done or store.skipped:
        _log(f"resuming: {len(store.finished())} of {len(records)} images already done in {store.path}")
    backend = _backend(args, cfg)
    try:
        outcome = run_pipeline(records, backend, cfg, category_ids, batch_size=args.batch_size, store=store,
                               skip_bad=args.skip_bad, loader_threads=args.loader_threads,
                               progress=not args.quiet)
    finally:
        backend.close()
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
        raise M2DetError(f"{folder}: output folder is not writable ({exc.strerror or exc})") from None


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
    if args.weights is None:
        _log(GOLDEN_WARNING)
    model = load_model(cfg, args.weights)
    out_dir = Path(args.out_dir)
    _check_writable(out_dir)
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
    return run_bench(args, cfg, backend_factory=lambda: _backend(args, cfg), log=_log)


def cmd_report(args) -> int:
    from .report import write_conformance_report

    paths = write_conformance_report([Path(r) for r in args.runs], Path(args.output) if args.output else None,
                                     bench=Path(args.bench) if args.bench else None)
    print("report: " + ", ".join(str(p) for p in paths))
    return EXIT_OK


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

    p = add("report", cmd_report, "conformance report of a run folder, side by side with the guide's figures")
    p.add_argument("runs", nargs="+", help="folders written by m2det run (one per backend/batch size)")
    p.add_argument("--bench", help="bench.json from m2det bench")
    p.add_argument("--output", help="folder for the report (default: the run folder)")
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
    except (M2DetError, ValueError, FileNotFoundError) as exc:
        if os.environ.get("M2DET_DEBUG"):
            raise
        _log(f"m2det {args.command}: error: {exc}")
        return EXIT_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
