#!/usr/bin/env python3
"""The nightly job: cpu suite, benchmarks and regression gate in one command.

    python scripts/nightly.py [--out m2det-nightly] [--images 8] [-- extra pytest args]

(``tox -e nightly`` runs it.) Steps, each printed with its command and kept
in ``OUT/logs/``:

1. the cpu suite (``pytest -m cpu``), saving the golden-image runs of every
   backend it computes (``--save-outputs OUT/saved-runs``) so the tolerance
   statistics come from the suite's own forward passes;
2. ``m2det run`` per backend and batch size (``--runs``) on the first
   ``--images`` images: AP per backend and batch size; and ``m2det evaluate``
   of a *perfect* network's raw outputs for the same images (the ground truth
   encoded against the priors, ``tests/support.py``): the AP of decoding,
   soft-NMS, COCO conversion and scoring, meaningful without trained weights;
3. ``m2det bench``: pure-inference and end-to-end images/s per batch size and
   the host-side images/s, with the machine information;
4. ``m2det collect`` -> ``OUT/results.json``;
5. ``m2det regress`` against ``m2det_impl/data/baselines/<platform>.json``
   -> the table on stdout, ``OUT/regress.json``, ``OUT/regress.md``;
6. ``m2det report`` -> ``OUT/report/``.

On the CPU the image count is reduced (default 8 of the 24 bundled mini-COCO
images; about 3 s per image per run on 2 cores) and the output says so. The
full workload is ``--coco-root DIR --weights m2det512_vgg.pth --images 5000``.
Every step runs even when an earlier one failed, so the report is always
written. Exit status (m2det_impl/exit_codes.py; :func:`overall_status`): 3 a
step could not run, else 1 a test failed or a figure regressed, else 4 not
gated (no baseline for this platform, or the baseline's machine or workload
differs), else 0.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from m2det_impl.exit_codes import EXIT_GATE_FAILED, EXIT_INTERNAL, EXIT_NOT_GATED, EXIT_OK  # noqa: E402
from m2det_impl.gating.machine import current_platform, machine_identity  # noqa: E402
from m2det_impl.resources import BASELINES_DIR, MINI_COCO  # noqa: E402

MARKER = ".m2det-nightly"  # only a folder carrying it is ever wiped
BUNDLED_IMAGES = 24


def parse_runs(text: str) -> List[tuple]:
    runs = []
    for item in text.split(","):
        backend, _, batch = item.strip().partition(":")
        if not backend or not batch.isdigit() or int(batch) < 1:
            raise argparse.ArgumentTypeError(f"--runs wants backend:batch[,backend:batch...], got {item!r}")
        runs.append((backend, int(batch)))
    return runs


def prepare(out: Path) -> None:
    """Start from an empty OUT, refusing to wipe a folder this script did not create."""
    if out.exists():
        if not (out / MARKER).is_file() and any(out.iterdir()):
            raise SystemExit(f"nightly: {out} exists and was not written by this script ({MARKER} missing): "
                             "choose another --out or remove it")
        shutil.rmtree(out)
    (out / "logs").mkdir(parents=True)
    (out / MARKER).write_text("written by scripts/nightly.py; wiped at the start of each nightly\n")


class Steps:
    """Runs commands, tees their output to OUT/logs/<name>.log, records outcomes."""

    def __init__(self, out: Path):
        self.out = out
        self.outcomes: Dict[str, int] = {}
        self.seconds: Dict[str, float] = {}

    def run(self, name: str, argv: Sequence[str], env: Optional[dict] = None) -> int:
        print(f"\n=== nightly step {name}: {shlex.join(str(a) for a in argv)}", flush=True)
        start = time.perf_counter()
        with open(self.out / "logs" / f"{name}.log", "w", encoding="utf-8") as log:
            proc = subprocess.Popen([str(a) for a in argv], cwd=REPO, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True, env=env, bufsize=1)
            assert proc.stdout is not None
            for line in proc.stdout:
                sys.stdout.write(line)
                log.write(line)
            code = proc.wait()
        self.outcomes[name] = code
        self.seconds[name] = time.perf_counter() - start
        print(f"=== nightly step {name}: exit {code} after {self.seconds[name]:.0f} s", flush=True)
        return code

    def call(self, name: str, fn) -> int:
        """An in-process step: exit 0, or 2 with the error printed."""
        print(f"\n=== nightly step {name}", flush=True)
        start = time.perf_counter()
        try:
            fn()
            code = 0
        except Exception as exc:  # noqa: BLE001 - a broken step is reported, the others still run
            print(f"nightly step {name} failed: {type(exc).__name__}: {exc}", flush=True)
            code = 2
        self.outcomes[name] = code
        self.seconds[name] = time.perf_counter() - start
        print(f"=== nightly step {name}: exit {code} after {self.seconds[name]:.0f} s", flush=True)
        return code


def write_perfect_outputs(annotations: Path, images: int, folder: Path) -> None:
    """Raw outputs a perfect network would give for the first ``images`` images
    (by id, as ``m2det run --limit``), in the ais_infer layout."""
    sys.path.insert(0, str(REPO / "tests"))
    from support import perfect_outputs

    from m2det_impl.network.config import get_config
    from m2det_impl.pipeline.ais_files import write_outputs

    outputs = perfect_outputs(annotations, get_config(512))
    chosen = sorted(outputs.items(), key=lambda item: item[1][2]["id"])[:images]
    for stem, (scores, loc, _) in chosen:
        write_outputs(folder, stem, scores, loc[None], first_index=0)
    print(f"{len(chosen)} images' perfect outputs -> {folder}")


def codes_ok(steps: Steps, name: str) -> bool:
    return steps.outcomes.get(name) == 0


def overall_status(codes: Dict[str, int], no_baseline: bool = False) -> Tuple[int, List[str]]:
    """The nightly's exit status from its steps' exit codes -> (status, broken steps).

    A step that could not run (any code but 0 from a step other than the suite
    and regress, a crashed regress, a suite that did not finish) is broken:
    EXIT_INTERNAL. Else a failed test or a regressed figure: EXIT_GATE_FAILED.
    Else nothing judged (regress said not gated, or there is no baseline):
    EXIT_NOT_GATED. Else EXIT_OK.
    """
    regress_code = codes.get("regress")
    # regress: 0 ok, 1 regressed, 4 not gated; anything else (3: a crash) is broken, never "not gated"
    broken = [n for n, c in codes.items() if c != EXIT_OK and n not in ("suite", "regress")] \
        or (["regress"] if regress_code not in (None, EXIT_OK, EXIT_GATE_FAILED, EXIT_NOT_GATED) else []) \
        or (["suite"] if codes.get("suite", 0) not in (0, 1) else [])
    if broken:
        return EXIT_INTERNAL, broken
    if codes.get("suite", 0) == 1 or regress_code == EXIT_GATE_FAILED:
        return EXIT_GATE_FAILED, []
    if regress_code == EXIT_NOT_GATED or no_baseline:
        return EXIT_NOT_GATED, []
    return EXIT_OK, []


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="m2det-nightly", help="output folder (wiped first; default m2det-nightly)")
    parser.add_argument("--images", type=int, default=8,
                        help=f"images per run and bench (default 8 of the {BUNDLED_IMAGES} bundled ones)")
    parser.add_argument("--runs", type=parse_runs, default=parse_runs("onnxruntime:1,onnxruntime:2,torch:1"),
                        help="backend:batch pairs for m2det run (default onnxruntime:1,onnxruntime:2,torch:1)")
    parser.add_argument("--bench-backend", default="onnxruntime")
    parser.add_argument("--bench-batch-sizes", default="1,2")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per batch size (m2det bench)")
    parser.add_argument("--host-images", type=int, default=48, help="images for the host-side figure")
    parser.add_argument("--coco-root", help="COCO minival2014 root (default: the bundled mini-COCO set)")
    parser.add_argument("--weights", help="trained checkpoint (default: golden weights; AP is then a fingerprint)")
    parser.add_argument("--baseline", default=os.environ.get("M2DET_BASELINE") or None,
                        help="baseline file (env M2DET_BASELINE; default m2det_impl/data/baselines/<platform>.json)")
    parser.add_argument("--allow-other-machine", action="store_true", help="passed to m2det regress")
    parser.add_argument("--allow-other-workload", action="store_true", help="passed to m2det regress")
    parser.add_argument("--workers", default=os.environ.get("PYTEST_XDIST_WORKERS", "2"), help="pytest -n")
    parser.add_argument("--skip-suite", action="store_true", help="benchmarks and regression only")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = parser.parse_args(argv)

    out = Path(args.out).resolve()
    prepare(out)
    platform = current_platform()
    baseline = Path(args.baseline) if args.baseline else BASELINES_DIR / f"{platform}.json"
    data = ["--coco-root", args.coco_root] if args.coco_root else []
    weights = ["--weights", args.weights] if args.weights else []
    if args.coco_root:
        from m2det_impl.pipeline.dataset import default_dataset_paths

        annotations = default_dataset_paths(args.coco_root)[0]
        scope = f"{args.images} images of {args.coco_root}"
    else:
        annotations = MINI_COCO / "annotations" / "instances_minival2014.json"
        scope = (f"REDUCED image count on the CPU: {args.images} of the {BUNDLED_IMAGES} bundled mini-COCO images "
                 "(the full workload is 5000 minival2014 images: --coco-root DIR --weights m2det512_vgg.pth "
                 "--images 5000)")
    weights_note = ("trained weights " + args.weights if args.weights else
                    "golden (random) weights: the backends' AP is meaningless; ap perfect-outputs is the AP of "
                    "decoding, soft-NMS and scoring on the ground truth")
    notes = [f"nightly on {platform}: {scope}", weights_note]
    print("=" * 100)
    for note in notes:
        print(f"NIGHTLY: {note}")
    print(f"NIGHTLY: machine {machine_identity()}")
    print(f"NIGHTLY: baseline {baseline}; output {out}")
    print("=" * 100, flush=True)

    steps = Steps(out)
    py = sys.executable
    m2det = [py, "-m", "m2det_impl.cli"]
    if not args.skip_suite:
        steps.run("suite", [py, "-m", "pytest", "-m", "cpu", "-n", args.workers, "-p", "no:cacheprovider",
                            "--save-outputs", out / "saved-runs", "--junitxml", out / "junit.xml",
                            *weights, *args.pytest_args])
    run_dirs = []
    for backend, batch in args.runs:
        folder = out / "runs" / f"{backend}-bs{batch}"
        if steps.run(f"run-{backend}-bs{batch}", [*m2det, "run", "--backend", backend, "--batch-size", batch,
                                                  "--limit", args.images, "--output", folder, "--no-report", "--quiet",
                                                  *data, *weights]) == 0:
            run_dirs.append(folder)
    perfect = out / "perfect-outputs"
    if steps.call("perfect-outputs", lambda: write_perfect_outputs(annotations, args.images, perfect / "raw")) == 0:
        steps.run("evaluate-perfect-outputs", [*m2det, "evaluate", "--outputs", perfect / "raw", "--annotations",
                                               annotations, "--results", perfect / "results.json",
                                               "--summary", perfect / "summary.json", "--quiet"])
        shutil.rmtree(perfect / "raw", ignore_errors=True)  # 10 MB per image; the summary is what counts
    bench_dir = out / "bench"
    bench_ok = steps.run("bench", [*m2det, "bench", "--backend", args.bench_backend, "--batch-sizes",
                                   args.bench_batch_sizes, "--repeats", args.repeats, "--limit", args.images,
                                   "--host-images", args.host_images, "--output", bench_dir, "--quiet",
                                   *data, *weights]) == 0
    collect = [*m2det, "collect", "--annotations", annotations, "--output", out / "results.json"]
    for folder in run_dirs:
        collect += ["--run", folder]
    if codes_ok(steps, "evaluate-perfect-outputs"):
        collect += ["--ap", f"perfect-outputs={perfect / 'summary.json'}"]
    if bench_ok:
        collect += ["--bench", bench_dir / "bench.json"]
    if (out / "saved-runs").is_dir():
        collect += ["--saved-runs", out / "saved-runs", "--golden-forward", REPO / "fixtures" / "golden" / "forward_m2det512.npz"]
    for note in notes:
        collect += ["--note", note]
    no_baseline = False
    if steps.run("collect", collect) == 0:
        if baseline.is_file():
            regress = [*m2det, "regress", "--baseline", baseline, "--current", out / "results.json", "--output", out]
            regress += ["--allow-other-machine"] if args.allow_other_machine else []
            regress += ["--allow-other-workload"] if args.allow_other_workload else []
            steps.run("regress", regress)
        else:
            no_baseline = True
            print("!" * 100)
            print(f"!!! NOT GATED: no baseline for platform {platform} ({baseline}).\n"
                  f"!!! Create one deliberately from this night's figures, review it and commit it:\n"
                  f"!!!   m2det regress --baseline {baseline} --current {out / 'results.json'} --update")
            print("!" * 100)
    if run_dirs:
        (out / "report").mkdir(exist_ok=True)
        report = [*m2det, "report", *run_dirs, "--output", out / "report"]
        report += ["--bench", bench_dir / "bench.json"] if bench_ok else []
        steps.run("report", report)

    print("\n" + "=" * 100)
    for note in notes:
        print(f"NIGHTLY: {note}")
    for name, code in steps.outcomes.items():
        print(f"NIGHTLY: {name:<22} exit {code:<3} {steps.seconds[name]:6.0f} s")
    status, broken = overall_status(steps.outcomes, no_baseline)
    verdict = {EXIT_OK: "PASSED", EXIT_GATE_FAILED: "FAILED (tests or regression)",
               EXIT_INTERNAL: f"BROKEN (steps {broken})",
               EXIT_NOT_GATED: "NOT GATED (no baseline, or another machine or workload)"}[status]
    print(f"NIGHTLY: {verdict}; report: {out / 'regress.md'}, {out / 'report'}")
    print("=" * 100)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
