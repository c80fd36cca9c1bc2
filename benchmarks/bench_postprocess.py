"""Post-processing speed on the golden cases: milliseconds per image.

    python benchmarks/bench_postprocess.py [--repeats 200] [--warmup 5]

For each case of the package's data/postprocess_cases.npz: the median (and min,
p90) wall time of one ``detect()`` call, single process, after warm-up calls
(the first call loads or compiles the numba kernels; its time is printed
separately so that it never leaks into the figures). Each timed output is
checked against the reference's detections first, so a fast wrong answer
cannot pass for a result. The reference's own post-processing takes about
32 ms per image on these cases (reference section 10); the project's budget is 4 ms.

No assertions on time live in the test-suite: timings depend on the machine
and its load, so they are reported here instead.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from m2det_impl.network.config import get_config  # noqa: E402
from m2det_impl.network.priors import make_priors  # noqa: E402
from m2det_impl.pipeline.postprocess import detect, warmup  # noqa: E402
from m2det_impl.resources import POSTPROCESS_CASES_FILE  # noqa: E402

GOLDEN = POSTPROCESS_CASES_FILE


def load_cases(cfg):
    with np.load(GOLDEN) as data:
        raw = {k: data[k] for k in data.files}
    cases = []
    for k in range(3):
        scores = np.zeros((cfg.num_priors, cfg.num_classes), np.float32)
        scores[raw[f"scores_rows_{k}"], raw[f"scores_cols_{k}"]] = raw[f"scores_vals_{k}"]
        w, h = (int(v) for v in raw[f"wh_{k}"])
        cases.append((k, scores, raw[f"loc_{k}"], w, h, raw[f"dets_{k}"]))
    return cases


def check(got, expected):
    """The tolerances of tests/pipeline/test_postprocess.py."""
    ok = (
        got.shape == expected.shape
        and np.array_equal(got[:, 0], expected[:, 0])
        and np.abs(got[:, 1:5] - expected[:, 1:5]).max(initial=0) <= 1e-3
        and (np.abs(got[:, 5] - expected[:, 5]) / expected[:, 5]).max(initial=0) <= 1e-5
    )
    if not ok:
        raise SystemExit("detect() output differs from the golden detections: not timing it")


def time_calls(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return np.array(times) * 1e3


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=200, help="timed calls per case")
    parser.add_argument("--warmup", type=int, default=5, help="untimed calls per case first")
    args = parser.parse_args(argv)

    cfg = get_config(512)
    priors = make_priors(cfg)
    cases = load_cases(cfg)

    start = time.perf_counter()
    warmup(cfg)
    print(f"warmup() (numba cache load or compile): {1e3 * (time.perf_counter() - start):.1f} ms")

    print(f"detect() per image, {args.repeats} timed calls after {args.warmup} warm-up calls")
    print(f"{'case':>4} {'W x H':>9} {'rows':>5} {'median ms':>10} {'min ms':>7} {'p90 ms':>7}")
    medians = []
    for k, scores, loc, w, h, expected in cases:
        call = lambda: detect(scores, loc, priors, w, h, cfg)  # noqa: E731
        for _ in range(args.warmup):
            check(call(), expected)
        ms = time_calls(call, args.repeats)
        medians.append(float(np.median(ms)))
        print(f"{k:>4} {f'{w}x{h}':>9} {expected.shape[0]:>5} {np.median(ms):>10.3f} "
              f"{ms.min():>7.3f} {np.percentile(ms, 90):>7.3f}")

    batch_scores = np.stack([c[1] for c in cases])
    batch_loc = np.stack([c[2] for c in cases])
    widths, heights = [c[3] for c in cases], [c[4] for c in cases]
    call = lambda: detect(batch_scores, batch_loc, priors, widths, heights, cfg)  # noqa: E731
    for got, case in zip(call(), cases):
        check(got, case[5])
    ms = time_calls(call, max(1, args.repeats // 3))
    print(f"batch of 3: {np.median(ms) / 3:.3f} ms per image (median)")
    print(f"worst per-case median: {max(medians):.3f} ms (budget 4 ms; reference ~32 ms); "
          f"mean of medians {statistics.mean(medians):.3f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
