"""``m2det bench``: its options, and the one library call it makes."""

from __future__ import annotations

import argparse

from m2det_impl.backends.registry import runtime_names
from m2det_impl.cli.common import (
    add_dataset_options,
    add_host_option,
    add_model_options,
    config_from,
    dataset_from,
    device_ids_from,
    int_list,
    model_from,
    positive_int,
    refuse_unused_options,
)
from m2det_impl.published import DEFAULT_PUBLISHED, published_names

HELP = ("throughput per batch size: pure inference as ais_bench counts it (1000 * batch / mean execute ms), "
        "end to end, and the host side")


def configure(p: argparse.ArgumentParser) -> None:
    """The options of ``m2det bench``."""
    add_dataset_options(p)
    add_model_options(p, batch=False)
    p.add_argument("--batch-sizes", type=int_list, default=None,
                   help="batch sizes to measure, comma separated (default: the model's own batch for a static-batch "
                        ".om, else 1; a dynamic-batch .om runs each, if it was built for it)")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls before measuring, per batch size (default 1)")
    p.add_argument("--repeats", type=positive_int, default=3, help="timed repeats; the median is reported (default 3)")
    p.add_argument("--host-images", type=positive_int, default=200, help="images for the host-side figure")
    p.add_argument("--no-end-to-end", action="store_true", help="pure inference only")
    p.add_argument("--loader-threads", type=positive_int, default=2, help="image decoding threads (default 2)")
    add_host_option(p)
    p.add_argument("--output", default="m2det-bench", help="folder for bench.json and bench.md")
    p.add_argument("--versus", choices=runtime_names(),
                   help="also measure this backend's pure inference side by side (repeats alternating) and print "
                        "the speed ratio, e.g. --versus onnxruntime-int8")
    p.add_argument("--versus-onnx", metavar="PATH", help="ONNX model for --versus (default: cached, as --onnx)")
    p.add_argument("--published", choices=published_names(), default=DEFAULT_PUBLISHED,
                   help=f"published throughput table shown beside the figures and recorded in bench.json "
                        f"(default {DEFAULT_PUBLISHED}, the guide's)")


#: Options only another mode reads (refuse_unused_options): (dest, option, unused here, why, what to do).
UNUSED_OPTIONS = (
    ("versus_onnx", "--versus-onnx", lambda a: not a.versus, "it is the model of the backend --versus measures "
     "beside, and no --versus is given", "add --versus BACKEND, or drop --versus-onnx (--onnx is the model "
     "measured)"),
)


def run(args) -> int:
    from m2det_impl.workflows.bench import bench

    refuse_unused_options(args, UNUSED_OPTIONS)

    versus = model_from(args, backend=args.versus) if args.versus else None
    if versus is not None:
        keeps_weights = versus.runtime.loads_weights and not args.versus_onnx
        versus = type(versus)(**{**versus.__dict__, "onnx": args.versus_onnx, "om": None,
                                 "weights": versus.weights if keeps_weights else None})
    return bench(dataset_from(args), config_from(args), model_from(args), args.output, batch_sizes=args.batch_sizes,
                 warmup=args.warmup, repeats=args.repeats, host_images=args.host_images,
                 end_to_end=not args.no_end_to_end, loader_threads=args.loader_threads, host=args.host,
                 versus=versus, published=args.published, device_ids=device_ids_from(args))
