"""What every ``m2det`` command shares: the dataset and model options, turned into library objects."""

from __future__ import annotations

import argparse
from typing import List, Tuple

from m2det_impl.backends.registry import DEFAULT_RUNTIME, runtime_names, runtimes

__all__ = ["echo", "add_output_option", "positive_int", "int_list", "add_dataset_options", "dataset_from", "add_model_options",
           "add_calibration_options", "add_host_option", "model_from", "config_from", "DEFAULT_CALIBRATION_IMAGES",
           "device_list", "device_ids_from", "refuse_unused_options"]

DEFAULT_CALIBRATION_IMAGES = 16  # precision.int8.DEFAULT_CALIBRATION_IMAGES (a test holds the two equal)


def echo(message: str) -> None:
    """A line of results on stdout, from the command itself (the library's lines come through logging)."""
    print(message, flush=True)


def add_output_option(p, help_text: str, default=None, required: bool = False, old_names=()) -> None:
    """``--output``, the one spelling of "where this command writes", and the spellings
    older scripts used (``old_names``, e.g. ``--out``) as hidden aliases of it."""
    p.add_argument("--output", default=default, required=required, help=help_text)
    for name in old_names:
        p.add_argument(name, dest="output", default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def add_host_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", choices=("auto", "threads", "processes"), default="auto",
                   help="where decoding and post-processing run: threads, or worker processes (needed when the "
                        "runtime keeps the GIL, as aclruntime does); auto: processes for such runtimes on "
                        "longer runs (default auto)")


def device_list(text: str) -> Tuple[int, ...]:
    """``0`` or ``0,1,2,3``: device ids (checked for negatives and repeats by the job that uses them)."""
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a device id or comma-separated ids (0,1,2,3), got {text!r}") \
            from None
    return values


def int_list(text: str) -> List[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def add_dataset_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("dataset (default: the bundled mini COCO set, 24 synthetic images)")
    g.add_argument("--coco-root", help="folder with annotations/instances_minival2014.json and val2014/")
    g.add_argument("--annotations", help="COCO annotation file; replaces --coco-root's (needs --images or "
                                         "--coco-root for the images it annotates)")
    g.add_argument("--images", help="image folder; replaces --coco-root's val2014/ (alone: run unscored)")
    g.add_argument("--limit", type=positive_int, help="only the first N images (by id)")


def dataset_from(args):
    from m2det_impl.pipeline.dataset import resolve_dataset

    return resolve_dataset(args.coco_root, args.annotations, args.images, args.limit)


def add_model_options(p: argparse.ArgumentParser, backends: bool = True, batch: bool = True) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--size", type=int, help="input size preset: 320, 512, 704, 800 (default 512, or --config's)")
    g.add_argument("--config", help="the original repository's config file (configs/m2det512_vgg.py); read as "
                                    "literals only, never run")
    g.add_argument("--weights", help="trained checkpoint (m2det512_vgg.pth); default: golden weights, AP meaningless")
    if backends:
        g.add_argument("--backend", choices=runtime_names(), default=DEFAULT_RUNTIME,
                       help=f"runtime (default {DEFAULT_RUNTIME}): " + "; ".join(
                           f"{name}: {entry.description}" for name, entry in runtimes().items()))
        g.add_argument("--onnx", help="ONNX model to run (default: a cached export of --weights)")
        add_calibration_options(g)
        g.add_argument("--om", help=".om model, for --backend " + ", ".join(
            name for name, entry in runtimes().items() if "om" in entry.model_files))
        g.add_argument("--device-id", "--device", dest="device_id", type=device_list, default=None,
                       help="NPU or GPU device id (default 0); several, comma-separated (0,1,2,3), run one worker "
                            "process per device on its share of the images, as ais_bench's --device")
        g.add_argument("--threads", type=int, help="intra-op threads for onnxruntime/torch (default: $M2DET_THREADS, else all cores)")
        g.add_argument("--sim-ms-per-image", type=non_negative_float, default=None,
                       help="--backend simulated-npu: simulated device time per image, the GIL held (default 15: "
                            "a 310P3 at about 66 img/s)")
        if batch:
            g.add_argument("--batch-size", type=positive_int, default=None,
                           help="images per inference call (default: the model's own batch for a static-batch "
                                ".om, else 1); a dynamic-batch .om runs this batch, one it was built with")


def add_calibration_options(g) -> None:
    g.add_argument("--calib", metavar="DIR", help="int8 calibration images: a folder of images or a COCO root "
                                                  "(val2014/ images outside minival when there are enough); "
                                                  "default: the bundled mini COCO set")
    g.add_argument("--calib-images", type=positive_int, default=None,
                   help=f"how many calibration images, spread evenly over the folder (default "
                        f"{DEFAULT_CALIBRATION_IMAGES})")


def model_from(args, backend: str = ""):
    from m2det_impl.backends.spec import ModelSpec

    devices = device_ids_from(args)
    return ModelSpec(backend=backend or getattr(args, "backend", DEFAULT_RUNTIME), weights=args.weights,
                     onnx=getattr(args, "onnx", None), om=getattr(args, "om", None),
                     device_id=devices[0] if devices else 0, batch_size=getattr(args, "batch_size", None),
                     threads=getattr(args, "threads", None),
                     calib=getattr(args, "calib", None), calib_images=getattr(args, "calib_images", None),
                     sim_ms_per_image=getattr(args, "sim_ms_per_image", None),
                     dump=args.output if getattr(args, "dump", False) else None)


def device_ids_from(args) -> Tuple[int, ...]:
    """The ``--device-id`` list (one id unless several were given; none when it was not given: the job's
    device is then the model's, 0)."""
    ids = getattr(args, "device_id", None)
    if ids is None:
        return ()
    return tuple(ids) if isinstance(ids, (tuple, list)) else (int(ids),)


def refuse_unused_options(args, rules) -> None:
    """A command's options that only its other modes read (``compare --precision-mode`` without
    ``--emulate fp16``, say), refused before any work in one line: ``rules`` is ``(dest, option,
    unused(args), why, fix)`` each, an option given (not ``None``/``False``/empty) while ``unused(args)``
    is true the :class:`~m2det_impl.errors.UnusedOptionError`. The runtime's own options are the library's
    rule (:func:`m2det_impl.backends.preflight.check_options_read`)."""
    from m2det_impl.errors import UnusedOptionError

    for dest, option, unused, why, fix in rules:
        if getattr(args, dest, None) not in (None, False, [], ()) and unused(args):
            raise UnusedOptionError(option, why, fix)


def config_from(args):
    from m2det_impl.network.config_file import resolve_config

    return resolve_config(getattr(args, "size", None), getattr(args, "config", None))
