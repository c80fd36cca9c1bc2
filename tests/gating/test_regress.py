"""``m2det regress`` and ``m2det collect``: the nightly's regression gate.

Baselines and results here are crafted by hand, so every expected verdict is
stated by the test, never computed by the code under test: a figure within
its one-sided rule passes, each kind of regression fails naming the figure, a
baseline from another machine or workload is not gated unless asked, and
``--update`` rewrites the baseline atomically and only when asked.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import numpy as np
import pytest
from support import perfect_outputs

from m2det_impl.cli import main
from m2det_impl.exit_codes import EXIT_BAD_INPUT as EXIT_ERROR
from m2det_impl.exit_codes import EXIT_GATE_FAILED as EXIT_GATE
from m2det_impl.exit_codes import EXIT_NOT_GATED, EXIT_OK
from m2det_impl.gating.machine import machine_identity, platform_name
from m2det_impl.gating.regress import BASELINES_DIR, load_baseline
from m2det_impl.resources import MINI_COCO

pytestmark = pytest.mark.cpu

MACHINE = {"cpu": "Test CPU 9000", "cores": 2, "arch": "x86_64", "soc": None, "cann": None, "driver": None,
           "gpu": None}
WORKLOAD = {"size": 512, "weights": "golden0", "images": 8, "precision": "fp32",
            "dataset": "instances_minival2014.json#sha256:0123456789ab"}
RULES = {
    "ap": {"max_drop": 0.002, "reason": "test: two thousandths of AP"},
    "throughput": {"max_drop_percent": 10, "reason": "test: ten percent"},
    "end_to_end": {"max_drop_percent": 20, "reason": "test: twenty percent"},
    "host_throughput": {"max_drop_percent": 20, "reason": "test: twenty percent"},
    "tolerance": {"max_growth_percent": 0, "reason": "test: may not grow"},
}
FIGURES = {
    "ap": {"onnxruntime/bs1": 0.300, "perfect-outputs": 1.0},
    "throughput": {"onnxruntime/bs1": 0.50, "onnxruntime/bs2": 0.60},
    "end_to_end": {"onnxruntime/bs1": 0.40},
    "host_throughput": {"host": 80.0},
    "tolerance": {"onnxruntime-vs-torch/scores/max_abs": 2.0e-6,
                  "onnxruntime-vs-torch/detections/disagreement": 0.0},
}
N_FIGURES = 8
MINI_ANN = MINI_COCO / "annotations" / "instances_minival2014.json"


def _baseline(**changes) -> dict:
    data = {"format": "m2det-baseline/1", "platform": "test-platform", "description": "crafted",
            "machine": dict(MACHINE), "workload": dict(WORKLOAD), "environment": {"onnxruntime": "1.32.0"},
            "rules": copy.deepcopy(RULES), "figures": copy.deepcopy(FIGURES)}
    data.update(changes)
    return data


def _current(figures=None, machine=None, workload=None) -> dict:
    return {"format": "m2det-results/1", "platform": "test-platform", "notes": ["crafted by tests/gating/test_regress.py"],
            "machine": dict(machine or MACHINE), "workload": dict(workload or WORKLOAD),
            "environment": {"onnxruntime": "1.33.0"}, "figures": copy.deepcopy(figures or FIGURES)}


def _with(kind: str, name: str, value) -> dict:
    figures = copy.deepcopy(FIGURES)
    if value is None:
        del figures[kind][name]
    else:
        figures.setdefault(kind, {})[name] = value
    return figures


def _write(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data, indent=1))
    return path


def _regress(tmp_path, baseline: dict, current: dict, *extra):
    b = _write(tmp_path / "baseline.json", baseline)
    c = _write(tmp_path / "current.json", current)
    out = tmp_path / "out"
    code = main(["regress", "--baseline", str(b), "--current", str(c), "--output", str(out), *extra])
    report = json.loads((out / "regress.json").read_text()) if (out / "regress.json").is_file() else None
    return code, report


# ------------------------------------------------------------------ passing
def test_identical_results_pass_and_every_figure_is_tabled(tmp_path, capsys):
    code, report = _regress(tmp_path, _baseline(), _current())
    out = capsys.readouterr().out
    assert code == EXIT_OK
    assert len(report["rows"]) == N_FIGURES and {r["verdict"] for r in report["rows"]} == {"ok"}
    for kind, values in FIGURES.items():
        for name in values:
            assert name in out
    assert "REGRESSED" not in out and report["gated"] is True
    markdown = (tmp_path / "out" / "regress.md").read_text()
    assert "| kind | figure | baseline | current | delta | allowed | verdict |" in markdown
    assert "onnxruntime-vs-torch/scores/max_abs" in markdown
    assert "crafted by tests/gating/test_regress.py" in markdown  # the current file's notes travel into the report


def test_changes_within_the_rules_pass_and_gains_are_improvements(tmp_path):
    figures = copy.deepcopy(FIGURES)
    figures["ap"]["onnxruntime/bs1"] = 0.2985            # -0.0015, allowed 0.002
    figures["throughput"]["onnxruntime/bs1"] = 0.455     # -9 %, allowed 10 %
    figures["throughput"]["onnxruntime/bs2"] = 1.2       # +100 %: one-sided, never a failure
    figures["end_to_end"]["onnxruntime/bs1"] = 0.33      # -17.5 %, allowed 20 %
    figures["host_throughput"]["host"] = 65.0            # -18.75 %
    figures["tolerance"]["onnxruntime-vs-torch/scores/max_abs"] = 1.0e-6  # shrank
    code, report = _regress(tmp_path, _baseline(), _current(figures))
    verdicts = {r["name"]: r["verdict"] for r in report["rows"] if r["kind"] == "throughput"}
    assert code == EXIT_OK and report["regressions"] == []
    assert verdicts == {"onnxruntime/bs1": "ok", "onnxruntime/bs2": "improved"}


@pytest.mark.parametrize("kind,name,value", [
    ("ap", "onnxruntime/bs1", 0.298),       # drop exactly 0.002
    ("throughput", "onnxruntime/bs1", 0.45),  # drop exactly 10 %
])
def test_a_drop_exactly_at_the_allowance_passes(tmp_path, kind, name, value):
    code, report = _regress(tmp_path, _baseline(), _current(_with(kind, name, value)))
    assert code == EXIT_OK, report["regressions"]


# ------------------------------------------------------------------ regressions
@pytest.mark.parametrize("kind,name,value", [
    ("ap", "onnxruntime/bs1", 0.297),                                  # drop 0.003 > 0.002
    ("ap", "perfect-outputs", 0.99),
    ("throughput", "onnxruntime/bs2", 0.53),                           # -11.7 % > 10 %
    ("end_to_end", "onnxruntime/bs1", 0.31),                           # -22.5 % > 20 %
    ("host_throughput", "host", 60.0),                                 # -25 % > 20 %
    ("tolerance", "onnxruntime-vs-torch/scores/max_abs", 2.1e-6),      # grew
    ("tolerance", "onnxruntime-vs-torch/detections/disagreement", 0.001),
    ("throughput", "onnxruntime/bs1", float("nan")),                   # not finite
])
def test_each_kind_of_regression_fails_naming_the_figure(tmp_path, capsys, kind, name, value):
    code, report = _regress(tmp_path, _baseline(), _current(_with(kind, name, value)))
    out = capsys.readouterr().out
    assert code == EXIT_GATE
    assert len(report["regressions"]) == 1 and f"{kind} {name}" in report["regressions"][0]
    failed = [r for r in report["rows"] if r["verdict"] == "REGRESSED"]
    assert [(r["kind"], r["name"]) for r in failed] == [(kind, name)]
    assert f"{kind} {name}:" in out and "REGRESSED" in out
    assert f"{kind} {name}" in (tmp_path / "out" / "regress.md").read_text()


def test_a_missing_figure_fails_and_a_new_one_is_not_gated(tmp_path, capsys):
    figures = _with("throughput", "onnxruntime/bs2", None)
    figures["throughput"]["onnxruntime/bs4"] = 0.7
    code, report = _regress(tmp_path, _baseline(), _current(figures))
    verdicts = {(r["kind"], r["name"]): r["verdict"] for r in report["rows"]}
    assert code == EXIT_GATE
    assert verdicts[("throughput", "onnxruntime/bs2")] == "MISSING"
    assert verdicts[("throughput", "onnxruntime/bs4")] == "new"
    assert "throughput onnxruntime/bs2: MISSING" in capsys.readouterr().out


# ------------------------------------------------------------------ machine and workload
def test_a_baseline_from_another_machine_is_not_gated(tmp_path, capsys):
    other = dict(MACHINE, cpu="Other CPU 1000")
    figures = _with("ap", "onnxruntime/bs1", 0.1)  # a regression that must not be gated
    code, report = _regress(tmp_path, _baseline(), _current(figures, machine=other))
    captured = capsys.readouterr()
    assert code == EXIT_NOT_GATED and report["gated"] is False
    assert "WARNING" in captured.err and "NOTHING IS GATED" in captured.err
    assert "machine cpu: baseline 'Test CPU 9000', current 'Other CPU 1000'" in captured.err
    assert "not gated (REGRESSED)" in captured.out
    assert "NOTHING WAS GATED" in (tmp_path / "out" / "regress.md").read_text()
    # the re-trial: the shipped CPU baseline (an Intel Xeon) gives exit 4 on an AMD laptop; say how to gate it
    hint = "m2det regress --baseline MY_MACHINE.json --current "
    assert hint in captured.err and "--update" in captured.err
    assert hint in (tmp_path / "out" / "regress.md").read_text()


def test_another_machine_is_gated_when_told_and_still_warns(tmp_path, capsys):
    other = dict(MACHINE, cores=4)
    figures = _with("ap", "onnxruntime/bs1", 0.1)
    code, report = _regress(tmp_path, _baseline(), _current(figures, machine=other), "--allow-other-machine")
    assert code == EXIT_GATE and report["gated"] is True
    assert "machine cores: baseline 2, current 4" in capsys.readouterr().err


@pytest.mark.parametrize("key,value", [("images", 24), ("weights", "trained"), ("precision", "fp16")])
def test_another_workload_is_not_gated_unless_told(tmp_path, key, value):
    current = _current(workload=dict(WORKLOAD, **{key: value}))
    assert _regress(tmp_path, _baseline(), current)[0] == EXIT_NOT_GATED
    assert _regress(tmp_path, _baseline(), current, "--allow-other-workload")[0] == EXIT_OK


def test_keys_the_baseline_does_not_state_are_not_compared(tmp_path):
    machine = {k: v for k, v in MACHINE.items() if k != "cpu"}
    code, report = _regress(tmp_path, _baseline(machine=machine), _current(machine=dict(MACHINE, cpu="Any CPU")))
    assert code == EXIT_OK and "cpu" in report["unstated"]["machine"]
    assert report["environment_changes"] == [{"key": "onnxruntime", "baseline": "1.32.0", "current": "1.33.0"}]


# ------------------------------------------------------------------ --update
def test_the_baseline_is_never_rewritten_without_update(tmp_path):
    path = _write(tmp_path / "baseline.json", _baseline())
    before = path.read_bytes()
    code, _ = _regress(tmp_path, _baseline(), _current(_with("ap", "onnxruntime/bs1", 0.1)))
    assert code == EXIT_GATE and path.read_bytes() == before


def test_update_rewrites_the_baseline_from_the_current_results(tmp_path, capsys):
    figures = _with("throughput", "onnxruntime/bs1", 0.25)  # a regression, accepted deliberately
    current = _current(figures, machine=dict(MACHINE, cpu="New CPU"))
    code, _ = _regress(tmp_path, _baseline(), current, "--update")
    assert code == EXIT_OK
    assert "baseline UPDATED" in capsys.readouterr().out
    written = json.loads((tmp_path / "baseline.json").read_text())
    assert written["figures"]["throughput"]["onnxruntime/bs1"] == 0.25
    assert written["machine"]["cpu"] == "New CPU" and written["rules"] == RULES
    assert written["platform"] == "test-platform" and written["source"]["by"] == "m2det regress --update"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["baseline.json", "current.json", "out"]  # no temp file
    assert load_baseline(tmp_path / "baseline.json")["figures"]["ap"]["perfect-outputs"] == 1.0


def test_update_that_fails_midway_leaves_the_old_baseline(tmp_path, monkeypatch, capsys):
    path = _write(tmp_path / "baseline.json", _baseline())
    before = path.read_bytes()
    current = _write(tmp_path / "current.json", _current(_with("ap", "onnxruntime/bs1", 0.1)))

    def refuse(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", refuse)
    code = main(["regress", "--baseline", str(path), "--current", str(current), "--output", str(tmp_path / "o"),
                 "--update"])
    assert code == EXIT_ERROR and "No space left on device" in capsys.readouterr().err
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_update_creates_a_missing_baseline_with_default_rules(tmp_path):
    current = _write(tmp_path / "current.json", _current())
    target = tmp_path / "baselines" / "new-platform.json"
    assert main(["regress", "--baseline", str(target), "--current", str(current), "--update"]) == EXIT_OK
    written = load_baseline(target)
    assert set(written["rules"]) >= set(FIGURES) and written["figures"]["host_throughput"] == {"host": 80.0}
    # and without --update a missing baseline is an error, not a silent pass
    assert main(["regress", "--baseline", str(tmp_path / "nope.json"), "--current", str(current)]) == EXIT_ERROR


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize("change,needle", [
    ({"rules": {k: v for k, v in RULES.items() if k != "tolerance"}}, "no rule for figure kind(s) ['tolerance']"),
    ({"format": "something-else"}, "not a baseline"),
    ({"rules": dict(RULES, ap={"max_drop": 0.1, "max_growth": 0.1, "reason": "x"})}, "not both or neither"),
    ({"rules": dict(RULES, ap={"max_drop": 0.1})}, "needs a reason"),
    ({"figures": dict(FIGURES, ap={"onnxruntime/bs1": "high"})}, "must be a number"),
])
def test_a_bad_baseline_gives_a_one_line_error_naming_the_file(tmp_path, capsys, change, needle):
    code, _ = _regress(tmp_path, _baseline(**change), _current())
    err = capsys.readouterr().err.strip()
    assert code == EXIT_ERROR and len(err.splitlines()) == 1
    assert "baseline.json" in err and needle in err


def test_shipped_baselines_load_and_hold_the_guides_figures():
    files = sorted(BASELINES_DIR.glob("*.json"))
    assert {"cpu-x86_64-2core.json", "310P3-cann5.1-fp16.json", "t4-trt-fp16.json"} <= {f.name for f in files}
    for path in files:
        assert load_baseline(path)["platform"] == path.stem
    npu = load_baseline(BASELINES_DIR / "310P3-cann5.1-fp16.json")["figures"]
    t4 = load_baseline(BASELINES_DIR / "t4-trt-fp16.json")["figures"]
    # reference section 10's table and section 1's AP, typed in here
    assert npu["throughput"] == {"om/bs1": 37.817, "om/bs4": 54.707, "om/bs8": 46.461, "om/bs16": 47.113,
                                 "om/bs32": 46.840}
    assert t4["throughput"] == {"tensorrt/bs1": 50.658, "tensorrt/bs4": 60.997, "tensorrt/bs8": 52.890,
                                "tensorrt/bs16": 62.186, "tensorrt/bs32": 64.602}
    assert set(npu["ap"].values()) == {0.378} and len(npu["ap"]) == 5 and set(t4["ap"].values()) == {0.378}


# ------------------------------------------------------------------ collect
def _summary(folder: Path, backend: str, batch: int, ap: float, images: int = 8, weights: str = "golden0") -> Path:
    folder.mkdir(parents=True)
    _write(folder / "summary.json", {"ap": ap, "num_images": images, "batch_size": batch, "skipped": {},
                                     "golden_weights": weights.startswith("golden"),
                                     "identity": {"size": 512, "backend": backend, "weights": weights}})
    return folder


def _bench(path: Path, machine: dict) -> Path:
    return _write(path, {"backend": "onnxruntime", "size": 512,
                         "machine": {"cpu": machine["cpu"], "cores": machine["cores"], "machine": machine["arch"]},
                         "inference": [{"batch_size": 1, "images_per_second": 0.5},
                                       {"batch_size": 2, "images_per_second": 0.6}],
                         "end_to_end": [{"batch_size": 1, "images_per_second": 0.4}],
                         "versus": {"backend": "onnxruntime-int8", "speed_ratio": {"1": 2.0},
                                    "inference": [{"batch_size": 1, "images_per_second": 1.0}]},
                         "host": {"images": 48, "images_per_second": 80.0}})


def test_collect_gathers_runs_bench_and_scores_then_regress_reads_them(tmp_path, capsys):
    here = machine_identity()
    run1 = _summary(tmp_path / "runs" / "ort1", "onnxruntime", 1, 0.30)
    run2 = _summary(tmp_path / "runs" / "torch1", "torch", 1, 0.31)
    perfect = _write(tmp_path / "perfect.json", {"ap": 1.0, "num_images": 8, "skipped": {}})
    bench = _bench(tmp_path / "bench.json", here)
    out = tmp_path / "results.json"
    assert main(["collect", "--run", str(run1), "--run", str(run2), "--ap", f"perfect-outputs={perfect}",
                 "--bench", str(bench), "--annotations", str(MINI_ANN), "--note", "eight images",
                 "--output", str(out)]) == EXIT_OK
    data = json.loads(out.read_text())
    assert data["format"] == "m2det-results/1" and data["notes"] == ["eight images"]
    assert data["figures"] == {
        "ap": {"onnxruntime/bs1": 0.30, "torch/bs1": 0.31, "perfect-outputs": 1.0},
        "throughput": {"onnxruntime/bs1": 0.5, "onnxruntime/bs2": 0.6, "onnxruntime-int8/bs1": 1.0},
        "end_to_end": {"onnxruntime/bs1": 0.4},
        "host_throughput": {"host": 80.0},
    }
    assert data["workload"]["images"] == 8 and data["workload"]["weights"] == "golden0"
    assert data["workload"]["precision"] == "fp32" and data["workload"]["dataset"].startswith("instances_minival2014")
    assert data["machine"] == here and data["platform"] == f"cpu-{here['arch']}-{here['cores']}core"
    assert data["environment"]["onnxruntime"]  # library versions are recorded with every run
    baseline = tmp_path / "baseline.json"
    assert main(["regress", "--baseline", str(baseline), "--current", str(out), "--update"]) == EXIT_OK
    assert main(["regress", "--baseline", str(baseline), "--current", str(out)]) == EXIT_OK


def test_collect_takes_one_bench_file_per_static_batch_model(tmp_path):
    here = machine_identity()
    first = _bench(tmp_path / "bench-bs1.json", here)
    second = json.loads(first.read_text())
    second["inference"] = [{"batch_size": 4, "images_per_second": 0.7}]
    second["end_to_end"], second["versus"], second["host"] = [], None, {"images": 48, "images_per_second": 90.0}
    second = _write(tmp_path / "bench-bs4.json", second)
    out = tmp_path / "r.json"
    assert main(["collect", "--bench", str(first), "--bench", str(second), "--output", str(out)]) == EXIT_OK
    figures = json.loads(out.read_text())["figures"]
    assert figures["throughput"]["onnxruntime/bs4"] == 0.7 and figures["throughput"]["onnxruntime/bs1"] == 0.5
    assert figures["host_throughput"] == {"host": 90.0}  # the host's best, measured twice
    # the same batch size twice is refused, naming both files
    assert main(["collect", "--bench", str(first), "--bench", str(first), "--output", str(out)]) == EXIT_ERROR


def test_collect_refuses_runs_of_different_workloads(tmp_path, capsys):
    a = _summary(tmp_path / "a", "onnxruntime", 1, 0.3, images=8)
    b = _summary(tmp_path / "b", "onnxruntime", 2, 0.3, images=24)
    assert main(["collect", "--run", str(a), "--run", str(b), "--output", str(tmp_path / "r.json")]) == EXIT_ERROR
    assert "different workloads" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()


def test_collect_refuses_a_bench_from_another_machine(tmp_path, capsys):
    bench = _bench(tmp_path / "bench.json", dict(machine_identity(), cpu="Some Other CPU"))
    assert main(["collect", "--bench", str(bench), "--output", str(tmp_path / "r.json")]) == EXIT_ERROR
    err = capsys.readouterr().err
    assert "bench.json" in err and "another machine" in err


def test_tolerance_statistics_of_saved_runs(tmp_path, cfg512):
    """Two runs of two mini-COCO images: a perfect network's outputs and the same
    with known perturbations; the statistics must report exactly those."""
    from m2det_impl.evaluation.tolerances import save_run
    from m2det_impl.gating.collect import tolerance_figures

    outputs = perfect_outputs(MINI_ANN, cfg512)
    stems = sorted(outputs)[:2]
    scores = np.stack([outputs[s][0] for s in stems])
    loc = np.stack([outputs[s][1] for s in stems])
    sizes = [(outputs[s][2]["width"], outputs[s][2]["height"]) for s in stems]
    gt_prior = int(np.argmax(scores[1, :, 0] < 0.5))  # a prior that carries a ground-truth box of image 1
    n_gt = int(np.count_nonzero(scores[1, :, 0] < 0.5))
    assert n_gt >= 2
    free = np.flatnonzero(scores[0, :, 0] == 1.0)[:2]  # priors without a box in image 0
    other = scores.copy()
    other[0, free[0], 3] += np.float32(0.001)    # below the 0.1 threshold: no detection changes
    other[1, gt_prior, 1:] = 0.0                 # image 1 loses one detection
    other[1, gt_prior, 0] = 1.0
    other_loc = loc.copy()
    other_loc[0, free[1], 2] += np.float32(0.0002)
    save_run(tmp_path, "onnxruntime__mini2__golden0", scores, loc, stems, sizes)
    save_run(tmp_path, "om-bs1__mini2__golden0", other, other_loc, stems, sizes)
    figures = tolerance_figures(tmp_path)
    pair = "om-bs1-vs-onnxruntime@mini2"
    assert figures[f"{pair}/scores/max_abs"] == pytest.approx(0.9, abs=1e-6)  # the lost detection's score
    assert figures[f"{pair}/loc/max_abs"] == pytest.approx(0.0002, rel=1e-3)
    assert figures[f"{pair}/scores/nonfinite"] == 0 and figures[f"{pair}/loc/cosine_distance"] > 0
    assert figures[f"{pair}/detections/disagreement"] == pytest.approx(1 / n_gt)
    assert not any(k.startswith("onnxruntime-vs") for k in figures)  # the reference is not compared with itself


# ------------------------------------------------------------------ platform names
@pytest.mark.parametrize("identity,precision,runtime,name", [
    ({"cpu": "x", "cores": 2, "arch": "x86_64"}, "fp32", None, "cpu-x86_64-2core"),
    ({"soc": "Ascend310P3", "cann": "7.0.0", "cores": 96, "arch": "aarch64"}, "fp16", None, "310P3-cann7.0.0-fp16"),
    ({"gpu": "Tesla T4", "cores": 8, "arch": "x86_64"}, "fp16", "trt", "t4-trt-fp16"),
    ({"gpu": "Tesla T4", "cores": 8, "arch": "x86_64"}, "fp32", None, "cpu-x86_64-8core"),
])
def test_platform_names(identity, precision, runtime, name):
    assert platform_name(identity, precision, runtime) == name


def test_an_unwritable_output_is_named_before_the_table(tmp_path, capsys):
    """The second trial: on a read-only output the whole table was printed, then the error; the folder is
    checked first now, so the one line is all there is."""
    blocker = _write(tmp_path / "a-file", {})
    b = _write(tmp_path / "baseline.json", _baseline())
    c = _write(tmp_path / "current.json", _current())
    code = main(["regress", "--baseline", str(b), "--current", str(c), "--output", str(blocker / "out")])
    captured = capsys.readouterr()
    assert code == EXIT_ERROR and captured.out == "", captured.out
    assert f"{blocker / 'out'}: output folder is not writable" in captured.err
