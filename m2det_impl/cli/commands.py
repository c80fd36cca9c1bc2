"""One function per ``m2det`` command: parse into library objects, make one library call, return its exit code.

The parsers live in :mod:`m2det_impl.cli.parser`; everything a command does
is a function of :mod:`m2det_impl.workflows` (or :mod:`m2det_impl.gating`)
that a Python user can call with the same arguments.
"""

from __future__ import annotations

from pathlib import Path

from m2det_impl.cli.common import config_from, dataset_from, echo, log, model_from
from m2det_impl.errors import UsageError
from m2det_impl.exit_codes import EXIT_OK

__all__ = ["COMMANDS"]


def cmd_run(args) -> int:
    from m2det_impl.workflows.run import run

    return run(dataset_from(args), config_from(args), model_from(args), args.out, batch_size=args.batch_size,
               shard=args.shard, fresh=args.fresh, skip_bad=args.skip_bad, loader_threads=args.loader_threads,
               host=args.host, report=not args.no_report, min_ap=args.min_ap, progress=not args.quiet, echo=echo, log=log)


def cmd_evaluate(args) -> int:
    from m2det_impl.network.config import get_config
    from m2det_impl.workflows.evaluate import evaluate_outputs

    return evaluate_outputs(args.outputs, args.annotations, get_config(args.size), args.results, args.summary,
                            image_info=args.image_info, skip_bad=args.skip_bad, min_ap=args.min_ap,
                            progress=not args.quiet, echo=echo, log=log)


def cmd_merge(args) -> int:
    from m2det_impl.workflows.evaluate import merge_shards

    return merge_shards(args.shards, args.results, args.summary, annotations=args.annotations, limit=args.limit,
                        partial=args.partial, min_ap=args.min_ap, echo=echo, log=log)


def cmd_export(args) -> int:
    from m2det_impl.workflows.files import export, export_int8

    cfg = config_from(args)
    if args.int8:
        if args.batch:
            raise UsageError("--int8 makes one dynamic-batch QDQ model for ONNX Runtime; atc does not take it "
                             "(Ascend quantizes with its own AMCT tool): drop --batch")
        export_int8(cfg, args.out_dir, weights=args.weights, calib=args.calib, calib_images=args.calib_images,
                    progress=not args.quiet, echo=echo, log=log)
    else:
        export(cfg, args.out_dir, weights=args.weights, batches=args.batch or (), opset=args.opset,
               soc_version=args.soc_version, echo=echo, log=log)
    return EXIT_OK


def cmd_preprocess(args) -> int:
    from m2det_impl.network.config import get_config
    from m2det_impl.workflows.files import preprocess

    return preprocess(dataset_from(args), get_config(args.size), args.output, info_name=args.info_name,
                      workers=args.workers, progress=not args.quiet, echo=echo)


def cmd_infer(args) -> int:
    from m2det_impl.workflows.files import infer

    infer(args.inputs, config_from(args), model_from(args), args.output, batch_size=args.batch_size,
          naming=args.naming, output_dirname=args.output_dirname, outfmt=args.outfmt, progress=not args.quiet,
          echo=echo, log=log)
    return EXIT_OK


def cmd_bench(args) -> int:
    from m2det_impl.workflows.bench import bench

    versus = model_from(args, backend=args.versus) if args.versus else None
    if versus is not None:
        versus = type(versus)(**{**versus.__dict__, "onnx": args.versus_onnx, "om": None})
    return bench(dataset_from(args), config_from(args), model_from(args), args.output, batch_sizes=args.batch_sizes,
                 warmup=args.warmup, repeats=args.repeats, host_images=args.host_images,
                 end_to_end=not args.no_end_to_end, loader_threads=args.loader_threads, host=args.host,
                 versus=versus, published=args.published, echo=echo, log=log)


def cmd_report(args) -> int:
    from m2det_impl.gating.report import write_conformance_report

    paths = write_conformance_report([Path(r) for r in args.runs], Path(args.output) if args.output else None,
                                     bench=Path(args.bench) if args.bench else None,
                                     compare=[Path(c) for c in args.compare or []])
    echo("report: " + ", ".join(str(p) for p in paths))
    return EXIT_OK


def cmd_compare(args) -> int:
    from m2det_impl.workflows.compare import compare_precision, compare_two_runs

    chosen = [name for name, on in (("runs", bool(args.runs)), ("--emulate", bool(args.emulate)),
                                    ("--int8", args.int8)) if on]
    if len(chosen) != 1:
        raise UsageError("give two saved runs or two m2det run folders (CANDIDATE REFERENCE), or --emulate fp16, "
                         "or --int8" + (f"; got {' and '.join(chosen)}" if chosen else ""))
    cfg = config_from(args)
    if args.runs:
        if len(args.runs) != 2:
            raise UsageError(f"compare takes two runs, CANDIDATE REFERENCE; got {len(args.runs)}")
        return compare_two_runs(args.runs[0], args.runs[1], cfg, out=args.out, pair=args.pair,
                                tolerances=args.tolerances, detections=not args.no_detections,
                                max_ap_drop=args.max_ap_drop, echo=echo, log=log)
    return compare_precision("fp16" if args.emulate else "int8", dataset_from(args), cfg,
                             model_from(args, backend="onnxruntime"), args.out or "m2det-compare",
                             int8_onnx=args.int8_onnx, precision_mode=args.precision_mode, keep_fp32=args.keep_fp32,
                             layers=not args.no_layers, first=args.first, max_ap_drop=args.max_ap_drop,
                             progress=not args.quiet, echo=echo, log=log)


def cmd_collect(args) -> int:
    from m2det_impl._io import atomic_write_json, ensure_output_file
    from m2det_impl.gating.collect import collect_results

    scored = []
    for item in args.ap or []:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise UsageError(f"--ap wants NAME=SUMMARY.json, got {item!r}")
        scored.append((name, path))
    out = ensure_output_file(args.out)
    data = collect_results(args.run or [], args.bench or [], args.saved_runs, args.annotations, scored=scored,
                           precision=args.precision, platform=args.platform, notes=args.note or [],
                           detections=not args.no_detections, golden_forward=args.golden_forward)
    path = atomic_write_json(out, data, indent=2)
    count = sum(len(v) for v in data["figures"].values())
    echo(f"{count} figures of platform {data['platform']} -> {path}")
    return EXIT_OK


def cmd_regress(args) -> int:
    from m2det_impl.gating.regress import run_regress

    return run_regress(args.baseline, args.current, args.out, allow_other_machine=args.allow_other_machine,
                       allow_other_workload=args.allow_other_workload, update=args.update, log=log)


COMMANDS = {
    "run": cmd_run, "evaluate": cmd_evaluate, "merge": cmd_merge, "export": cmd_export,
    "preprocess": cmd_preprocess, "infer": cmd_infer, "bench": cmd_bench, "report": cmd_report,
    "compare": cmd_compare, "collect": cmd_collect, "regress": cmd_regress,
}
