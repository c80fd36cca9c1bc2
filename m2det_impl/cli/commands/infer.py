"""``m2det infer``: its options, and the one library call it makes."""

from __future__ import annotations

import argparse
from typing import Optional

from m2det_impl.cli.common import add_model_options, config_from, device_ids_from, model_from
from m2det_impl.exit_codes import EXIT_OK
from m2det_impl.pipeline.ais_files import OUTPUT_FORMATS

#: An interrupted job resumes in its unfinished folder (one device, ais layout, no --dump: see
#: :func:`resume_refused`); the interruption message says so.
RESUMES = True

HELP = "run a backend over .bin files or images, writing outputs as ais_bench lays them out"


def resume_refused(args) -> Optional[str]:
    """Why this invocation would not resume after an interruption (several devices, --dump, --naming
    benchmark), for the interruption message; None when it resumes."""
    from m2det_impl.workflows.files import not_resumed

    return not_resumed(args.naming, device_ids_from(args), args.dump)


def configure(p: argparse.ArgumentParser) -> None:
    """The options of ``m2det infer``."""
    add_model_options(p)
    p.add_argument("--inputs", required=True, help="folder of .bin or .npy inputs (or images), taken in ais_bench's "
                                                   "natural order")
    p.add_argument("--output", required=True, help="folder for <stem>_0.bin (scores) and <stem>_1.bin (loc); an "
                                                   "interrupted job run again resumes in its unfinished sub-folder "
                                                   "(one device, no --dump)")
    p.add_argument("--fresh", action="store_true",
                   help="start a new sub-folder (or, with --output-dirname, write the named one from the start) "
                        "instead of resuming an unfinished one of the same job")
    p.add_argument("--naming", choices=("ais", "benchmark"), default="ais",
                   help="ais: ais_bench's layout (time-stamped sub-folder, <stem>_0/_1, <name>_summary.json beside "
                        "it); benchmark: flat _1/_2 .bin files (the older tool)")
    p.add_argument("--output-dirname", help="ais layout: sub-folder name instead of the time stamp (ais_bench's "
                                            "--output_dirname; relative to --output)")
    p.add_argument("--skip-bad", action="store_true",
                   help="image inputs: leave an unreadable image out (named on stderr, absent from the summary's "
                        "filesinfo) and go on; without it, every image is decoded once before anything is written, "
                        "and one unreadable image stops the job with nothing written")
    p.add_argument("--dump", action="store_true",
                   help="dump every layer as ais_bench --dump does: <output>/acl.json, the dump under <output>/dump, "
                        "no warm-up; one device; read it with m2det drift (docs/drift.md)")
    p.add_argument("--outfmt", choices=OUTPUT_FORMATS, default="BIN", help="ais layout: BIN, NPY or TXT "
                                                                            "(ais_bench's --outfmt; default BIN)")


def run(args) -> int:
    from m2det_impl.errors import UsageError
    from m2det_impl.workflows.files import infer

    if args.dump and len(device_ids_from(args)) > 1:
        raise UsageError("--dump takes one device: a dump is one inference of one model (give one --device-id)")
    infer(args.inputs, config_from(args), model_from(args), args.output, batch_size=args.batch_size,
          naming=args.naming, output_dirname=args.output_dirname, outfmt=args.outfmt, progress=not args.quiet,
          device_ids=device_ids_from(args), skip_bad=args.skip_bad, fresh=args.fresh)
    return EXIT_OK
