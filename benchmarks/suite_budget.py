"""The cpu suite's time in forwards of the model it tests: the budget of issue 23.

    python benchmarks/suite_budget.py [--budget 90] [--forwards 5] [-- extra pytest args]

A wall-clock target does not travel between machines, so the suite's budget
is relative: pytest's own time for the README's test command
(``pytest -m cpu -n 2``) divided by one ONNX Runtime forward of M2Det512 at
batch 1 (2 intra-op threads, the median of ``--forwards`` timed runs after one
warm-up), measured on the same machine in the same invocation: the forward
just before the suite and again just after it, the median of both sets, so a
machine that gets busier during the run moves both figures alike.

The suite runs on an empty model cache of its own (a temporary ``M2DET_CACHE_DIR``,
removed afterwards), as CI's fresh clone does: every export and quantization it
needs is inside its time. ``--warm-cache`` lets it share the forward's cache
instead (a second run on one machine, which measures less).

Prints both figures, the ratio and the budget, and writes them to
``suite_budget.json`` (``--output``). The exit code is pytest's; a ratio over
the budget is reported, never turned into a failure: timings depend on the
machine and its load, and the suite holds no timed assertion (see
docs/testing.md, "Suite time").
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import List

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DEFAULT_BUDGET = 90.0  # forwards of M2Det512 (issue 23)
FORWARD_THREADS = 2


def forward_times(count: int) -> List[float]:
    """Seconds of ``count`` ONNX Runtime forwards of M2Det512 (golden weights, batch 1, 2 threads) after a warm-up.

    The model comes through the project's model cache, so the export the suite makes (or made) is reused."""
    import numpy as np
    import onnxruntime as ort

    from m2det_impl.backends.cache import cached_onnx
    from m2det_impl.network.config import get_config

    cfg = get_config(512)
    path = cached_onnx(cfg)
    options = ort.SessionOptions()
    options.intra_op_num_threads = FORWARD_THREADS
    session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    image = np.random.default_rng(0).standard_normal((1, 3, cfg.size, cfg.size)).astype(np.float32)
    feed = {session.get_inputs()[0].name: image}
    session.run(None, feed)  # warm-up: allocations and kernel selection
    times = []
    for _ in range(count):
        start = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - start)
    return times


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET, help="forwards allowed (default 90)")
    parser.add_argument("--forwards", type=int, default=5, help="timed forwards before and after (default 5)")
    parser.add_argument("--output", type=Path, default=Path("suite_budget.json"), help="where the figures go")
    parser.add_argument("--warm-cache", action="store_true",
                        help="let the suite use the forward's model cache (default: an empty one, as on CI)")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = parser.parse_args(argv)

    before = forward_times(args.forwards)
    command = [sys.executable, "-m", "pytest", "-m", "cpu", "-n", "2", *args.pytest_args]
    with tempfile.TemporaryDirectory(prefix="m2det-suite-cache-") as empty_cache:
        env = os.environ.copy()
        if not args.warm_cache:
            env["M2DET_CACHE_DIR"] = empty_cache
        start = time.perf_counter()
        code = subprocess.call(command, cwd=REPO, env=env)
        suite_s = time.perf_counter() - start
    after = forward_times(args.forwards)
    forward_s = statistics.median(before + after)
    ratio = suite_s / forward_s
    figures = {"pytest_s": round(suite_s, 1), "forward_s": round(forward_s, 3),
               "forwards_before_s": [round(t, 3) for t in before], "forwards_after_s": [round(t, 3) for t in after],
               "ratio_forwards": round(ratio, 1), "budget_forwards": args.budget, "within_budget": ratio <= args.budget,
               "pytest_exit_code": code, "command": " ".join(command[2:]), "model_cache": "warm" if args.warm_cache
               else "empty", "cpu": _cpu_name(), "cores": os.cpu_count()}
    args.output.write_text(json.dumps(figures, indent=1) + "\n")
    verdict = "within" if ratio <= args.budget else "OVER"
    print(f"suite budget: pytest {suite_s:.1f} s / forward {forward_s:.3f} s = {ratio:.1f} forwards "
          f"({verdict} the budget of {args.budget:g}); {_cpu_name()}, {os.cpu_count()} cores -> {args.output}")
    return code


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
