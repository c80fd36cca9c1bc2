"""What a new user hit in the second trial (issue 20): each case as one cheap cpu test.

Models are the simulated NPU or the all-background stand-in (tests/support.py)
wherever the real network adds nothing; the few that need an ONNX file use the
session's cached golden export.
"""

from __future__ import annotations

import hashlib
import json

import pytest
from support import fake_backend_factory

from m2det_impl.cli import main
from m2det_impl.exit_codes import EXIT_BAD_INPUT, EXIT_GATE_FAILED, EXIT_OK
from m2det_impl.network.config import get_config

pytestmark = pytest.mark.cpu


@pytest.fixture
def fake_model(monkeypatch):
    monkeypatch.setattr("m2det_impl.backends.spec.ModelSpec.create", fake_backend_factory(get_config(512)))


def _one_error_line(captured, *names):
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1, captured.err
    assert "Traceback" not in captured.err and "internal error" not in captured.err, captured.err
    for name in names:
        assert str(name) in lines[0], (name, lines[0])
    return lines[0]


# ------------------------------------------------------------------ 1. weights credited that were never loaded
def test_weights_for_a_runtime_that_reads_none_are_refused(tmp_path, capsys):
    weights = tmp_path / "random.pth"
    weights.write_bytes(b"not used")
    out = tmp_path / "run"
    code = main(["run", "--backend", "simulated-npu", "--weights", str(weights), "--limit", "1",
                 "--output", str(out), "--quiet"])
    assert code == EXIT_BAD_INPUT
    assert "--weights" in _one_error_line(capsys.readouterr(), weights)
    assert not out.exists()


def test_weights_beside_an_onnx_file_are_refused(tmp_path, capsys):
    weights, onnx = tmp_path / "random.pth", tmp_path / "model.onnx"
    weights.write_bytes(b"not used")
    onnx.write_bytes(b"never opened: the refusal comes first")
    code = main(["run", "--onnx", str(onnx), "--weights", str(weights), "--limit", "1",
                 "--output", str(tmp_path / "run"), "--quiet"])
    assert code == EXIT_BAD_INPUT
    assert "--onnx" in _one_error_line(capsys.readouterr(), weights)


def test_the_weights_record_names_what_produced_the_numbers(tmp_path):
    from m2det_impl.backends.spec import ModelSpec

    ckpt, onnx = tmp_path / "w.pth", tmp_path / "m.onnx"
    ckpt.write_bytes(b"checkpoint bytes")
    onnx.write_bytes(b"onnx bytes")
    assert ModelSpec().weights_record() == {"kind": "golden"}
    assert ModelSpec(backend="simulated-npu").weights_record() == {"kind": "none"}
    assert ModelSpec(weights=ckpt).weights_record() == {
        "kind": "checkpoint", "path": str(ckpt.resolve()), "sha256": hashlib.sha256(b"checkpoint bytes").hexdigest()}
    assert ModelSpec(onnx=onnx).weights_record() == {
        "kind": "onnx", "path": str(onnx.resolve()), "sha256": hashlib.sha256(b"onnx bytes").hexdigest()}


def test_a_simulated_run_records_no_weights_and_says_so_on_its_picture(tmp_path, monkeypatch):
    import m2det_impl.gating.report as report

    banners = []
    draw = report.draw_detections

    def spy(*args, **kwargs):
        banners.append((kwargs.get("golden"), kwargs.get("banner")))
        return draw(*args, **kwargs)

    monkeypatch.setattr(report, "draw_detections", spy)
    out = tmp_path / "run"
    assert main(["run", "--backend", "simulated-npu", "--sim-ms-per-image", "0", "--limit", "1",
                 "--output", str(out), "--quiet"]) == EXIT_OK
    summary = json.loads((out / "summary.json").read_text())
    assert summary["weights"] == {"kind": "none"} and summary["golden_weights"] is False
    (golden, banner), = banners
    assert banner and "reference cases" in banner and "--weights" not in banner
    text = (out / "report.md").read_text()
    assert "No model" in text and "none: simulated NPU" in text
    assert "pass --weights" not in text.lower()
    assert "| n/a (no model) |" in text  # the second trial: no delta to the published AP of a model not run


def test_bench_json_records_the_weights(tmp_path):
    out = tmp_path / "bench"
    assert main(["bench", "--backend", "simulated-npu", "--sim-ms-per-image", "0", "--limit", "1", "--repeats", "1",
                 "--warmup", "0", "--no-end-to-end", "--host-images", "1", "--output", str(out), "--quiet"]) == EXIT_OK
    assert json.loads((out / "bench.json").read_text())["weights"] == {"kind": "none"}
    assert "Weights: none" in (out / "bench.md").read_text()


# ------------------------------------------------------------------ 4. bad input is exit 2, not an internal error
def _tiny_onnx(path, dims):
    """A one-node ONNX file whose image input has ``dims``: the header is all the checks read."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["image"], ["scores"])], "tiny",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, dims)],
                              [helper.make_tensor_value_info("scores", TensorProto.FLOAT, dims)])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)]), str(path))
    return path


def test_fp16_forecast_of_a_static_batch_4_model_fails_first(tmp_path, capsys, monkeypatch):
    onnx = _tiny_onnx(tmp_path / "m2det512_bs4.onnx", [4, 3, 512, 512])
    monkeypatch.setattr("m2det_impl.precision.forecast.forecast_fp16_stream",
                        lambda *a, **k: pytest.fail("the forecast started before the model was checked"))
    out = tmp_path / "cmp"
    code = main(["compare", "--emulate", "fp16", "--onnx", str(onnx), "--limit", "1", "--output", str(out), "--quiet"])
    assert code == EXIT_BAD_INPUT
    line = _one_error_line(capsys.readouterr(), onnx)
    assert "static 4" in line and "dynamic" in line and "batch-1" in line
    assert not out.exists()


def test_fp16_forecast_of_a_model_without_m2det_outputs_fails_first(tmp_path, capsys, monkeypatch):
    """The forecast reads ``scores`` and ``loc`` by name: another graph is bad input (exit 2), named
    before the forecast starts, not a KeyError from inside it (exit 3)."""
    onnx = _tiny_onnx(tmp_path / "other.onnx", ["batch", 3, 512, 512])  # one output, "scores"
    monkeypatch.setattr("m2det_impl.precision.forecast.forecast_fp16_stream",
                        lambda *a, **k: pytest.fail("the forecast started before the model was checked"))
    out = tmp_path / "cmp"
    code = main(["compare", "--emulate", "fp16", "--onnx", str(onnx), "--limit", "1", "--output", str(out), "--quiet"])
    assert code == EXIT_BAD_INPUT
    line = _one_error_line(capsys.readouterr(), onnx)
    assert "['scores']" in line and "without loc" in line and "m2det export" in line
    assert not out.exists()


@pytest.mark.parametrize("command", [["compare", "--emulate", "fp16"], ["run"]])
def test_a_truncated_onnx_file_is_named_in_one_line(tmp_path, capsys, command):
    whole = _tiny_onnx(tmp_path / "whole.onnx", ["batch", 3, 512, 512]).read_bytes()
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(whole[: len(whole) - 20])
    code = main([*command, "--onnx", str(cut), "--limit", "1", "--output", str(tmp_path / "o"), "--quiet"])
    assert code == EXIT_BAD_INPUT
    assert "ONNX" in _one_error_line(capsys.readouterr(), cut)


def test_run_at_another_size_than_the_model_names_both(tmp_path, capsys):
    onnx = _tiny_onnx(tmp_path / "m512.onnx", ["batch", 3, 512, 512])
    code = main(["run", "--size", "320", "--onnx", str(onnx), "--limit", "1", "--output", str(tmp_path / "o"),
                 "--quiet"])
    assert code == EXIT_BAD_INPUT
    line = _one_error_line(capsys.readouterr(), onnx)
    assert "512x512" in line and "--size 320" in line


def test_report_with_a_json_that_is_no_bench_file(tmp_path, capsys, fake_model):
    run = tmp_path / "run"
    assert main(["run", "--limit", "1", "--output", str(run), "--quiet", "--no-report"]) == EXIT_OK
    capsys.readouterr()
    bench = tmp_path / "other.json"
    bench.write_text(json.dumps({"images": 3}))
    code = main(["report", str(run), "--bench", str(bench), "--output", str(tmp_path / "rep")])
    assert code == EXIT_BAD_INPUT
    assert "bench.json" in _one_error_line(capsys.readouterr(), bench)
    assert not (tmp_path / "rep").exists()


# ------------------------------------------------------------------ 2. a gate over an incomplete output folder
@pytest.fixture
def ais_outputs(tmp_path):
    """Three images' outputs in ais_bench's layout, with its summary listing them."""
    from support import perfect_outputs

    from m2det_impl.pipeline.ais_files import write_outputs
    from m2det_impl.resources import MINI_COCO

    annotations = MINI_COCO / "annotations" / "instances_minival2014.json"
    outputs = perfect_outputs(annotations, get_config(512))
    stems = sorted(outputs)[:3]
    out = tmp_path / "out"
    folder = out / "2024_01_01-00_00_00"
    info = {}
    for i, stem in enumerate(stems):
        scores, loc, _ = outputs[stem]
        paths = write_outputs(folder, stem, scores, loc)
        info[str(i)] = {"infiles": [f"prep/{stem}.bin"], "outfiles": [str(p) for p in paths]}
    (out / "2024_01_01-00_00_00_summary.json").write_text(json.dumps({"filesinfo": info}))
    return out, folder, stems, annotations


def _evaluate(tmp_path, out, annotations, *extra):
    return main(["evaluate", "--outputs", str(out), "--annotations", str(annotations), "--results",
                 str(tmp_path / "results.json"), "--summary", str(tmp_path / "summary.json"), "--quiet", *extra])


def test_the_gate_fails_over_a_folder_missing_a_listed_image(tmp_path, ais_outputs, capsys):
    out, folder, stems, annotations = ais_outputs
    for f in folder.glob(f"{stems[1]}_*"):
        f.unlink()
    assert _evaluate(tmp_path, out, annotations, "--min-ap", "0.0") == EXIT_GATE_FAILED
    captured = capsys.readouterr()
    err = captured.err
    assert stems[1] in err and "1 image(s) not scored" in err
    assert "gate passed" not in captured.out + err  # one verdict (the trial saw both, stdout and stderr)
    assert _evaluate(tmp_path, out, annotations, "--min-ap", "0.0", "--allow-partial") == EXIT_OK
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["allow_partial"] is True and summary["listed"] == 3 and list(summary["skipped"]) == [stems[1]]
    # outputs whose folder records no model: said so, never credited to anything
    assert summary["weights"]["kind"] == "unknown" and summary["golden_weights"] is False
    assert summary["num_images"] == 3  # the missing image counts as a miss


def test_skip_bad_and_a_missing_file_are_both_not_scored(tmp_path, ais_outputs, capsys):
    out, folder, stems, annotations = ais_outputs
    (folder / f"{stems[0]}_0.bin").write_bytes(b"cut")
    for f in folder.glob(f"{stems[2]}_*"):
        f.unlink()
    assert _evaluate(tmp_path, out, annotations, "--min-ap", "0.0", "--skip-bad") == EXIT_GATE_FAILED
    err = capsys.readouterr().err
    assert "2 image(s) not scored" in err
    assert f"not scored {stems[0]}:" in err and f"not scored {stems[2]}:" in err
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert sorted(summary["skipped"]) == [stems[0], stems[2]] and summary["not_scored"] == 2


# ------------------------------------------------------------------ 7. a re-run of a finished run keeps its speed
def test_a_rerun_of_a_finished_run_keeps_the_speed_it_measured(tmp_path, fake_model, capsys):
    out = tmp_path / "run"
    assert main(["run", "--limit", "2", "--output", str(out), "--quiet", "--no-report"]) == EXIT_OK
    first = json.loads((out / "summary.json").read_text())
    assert first["images_per_second"] > 0
    assert main(["run", "--limit", "2", "--output", str(out), "--quiet", "--no-report"]) == EXIT_OK
    again = json.loads((out / "summary.json").read_text())
    assert again["images_per_second"] == first["images_per_second"]
    assert "earlier run" in again["images_per_second_from"]


# ------------------------------------------------------------------ 8. bundled data reachable from a wheel
def test_the_shard_merge_hint_is_a_command_that_scores(tmp_path, fake_model, capsys, monkeypatch):
    import shlex

    monkeypatch.chdir(tmp_path)  # outside the checkout: nothing relative to the repository
    out = tmp_path / "shards"
    for shard in ("0/2", "1/2"):
        assert main(["run", "--limit", "2", "--shard", shard, "--output", str(out), "--quiet"]) == EXIT_OK
    hint = next(line for line in capsys.readouterr().out.splitlines() if "m2det merge" in line)
    command = shlex.split(hint.split("with: ", 1)[1])
    assert command[:2] == ["m2det", "merge"]
    files = [str(p) for p in sorted(out.glob("results.shard-*-of-2.json"))]
    args = [a for a in command[2:] if "*" not in a] + files + ["--results", str(tmp_path / "r.json"),
                                                               "--summary", str(tmp_path / "s.json")]
    assert main(["merge", *args]) == EXIT_OK
    assert json.loads((tmp_path / "s.json").read_text())["num_images"] == 2


def test_a_bare_baseline_name_and_the_readme_path_work_anywhere(tmp_path, monkeypatch):
    from m2det_impl.resources import BASELINES_DIR, resolve_baseline

    monkeypatch.chdir(tmp_path)
    shipped = BASELINES_DIR / "cpu-x86_64-2core.json"
    assert resolve_baseline("cpu-x86_64-2core") == shipped
    assert resolve_baseline("m2det_impl/data/baselines/cpu-x86_64-2core.json") == shipped
    from m2det_impl.cli.app import build_parser

    args = build_parser().parse_args(["regress", "--baseline", "cpu-x86_64-2core", "--current", "c.json"])
    assert "name" in build_parser()._subparsers._group_actions[0].choices["regress"].format_help()
    assert args.baseline == "cpu-x86_64-2core"


def test_evaluate_takes_bundled_annotations(tmp_path, ais_outputs, monkeypatch):
    out, _, _, _ = ais_outputs
    monkeypatch.chdir(tmp_path)
    assert _evaluate(tmp_path, out, "bundled", "--min-ap", "0.5") == EXIT_OK


# ------------------------------------------------------------------ 10. smaller points
def test_a_failing_run_leaves_no_empty_folder_or_header_only_journal(tmp_path, capsys):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"random bytes, not a checkpoint")
    out = tmp_path / "run"
    assert main(["run", "--backend", "torch", "--weights", str(bad), "--limit", "1", "--output", str(out),
                 "--quiet"]) == EXIT_BAD_INPUT
    assert not out.exists()


def test_shard_help_says_shards_count_from_zero(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    assert "0/2 and 1/2" in " ".join(capsys.readouterr().out.split())


def test_readme_nightly_exit_codes_agree_with_the_script():
    from pathlib import Path

    from m2det_impl.exit_codes import EXIT_GATE_FAILED, EXIT_INTERNAL, EXIT_NOT_GATED

    root = Path(__file__).resolve().parents[2]
    text = " ".join((root / "README.md").read_text().split())
    assert f"{EXIT_INTERNAL} a step broke" in text and f"{EXIT_NOT_GATED} not gated (no baseline" in text
    assert f"{EXIT_GATE_FAILED} a test failed or a figure regressed" in text


def test_shipped_data_cites_no_spec_that_is_not_shipped():
    from m2det_impl.resources import data_path

    for path in data_path().rglob("*"):
        if path.suffix in (".md", ".json", ".txt") and path.stat().st_size < 2_000_000:
            assert "SPEC" not in path.read_text(errors="replace"), path


def test_cache_lists_and_cleans_entries(tmp_path, monkeypatch, capsys):
    import os
    import time

    monkeypatch.setenv("M2DET_CACHE_DIR", str(tmp_path / "cache"))  # never the real cache
    for key, age_days in (("old", 30), ("new", 0)):
        folder = tmp_path / "cache" / "onnx" / key
        folder.mkdir(parents=True)
        (folder / "m2det512_dynamic.onnx").write_bytes(b"x" * 1000)
        (folder / "entry.json").write_text("{}")
        stamp = time.time() - age_days * 86400
        os.utime(folder / "entry.json", (stamp, stamp))
    assert main(["cache"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "2 entries" in out and "m2det512_dynamic.onnx" in out and "30.0 days ago" in out
    assert main(["cache", "--clean", "--older-than", "7"]) == EXIT_OK
    assert not (tmp_path / "cache" / "onnx" / "old").exists() and (tmp_path / "cache" / "onnx" / "new").exists()
    assert main(["cache", "--clean"]) == EXIT_OK
    assert not (tmp_path / "cache" / "onnx" / "new").exists()


def test_a_rejected_checkpoint_leaves_no_cache_folder_and_announces_no_export(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("M2DET_CACHE_DIR", str(tmp_path / "cache"))  # never the real cache
    bad = tmp_path / "random.pth"
    bad.write_bytes(b"random bytes, not a checkpoint")
    assert main(["export", "--weights", str(bad), "--output", str(tmp_path / "models")]) == EXIT_BAD_INPUT
    captured = capsys.readouterr()
    _one_error_line(captured, bad)
    assert "exporting" not in captured.out + captured.err
    onnx_entries = tmp_path / "cache" / "onnx"
    assert not onnx_entries.exists() or not any(onnx_entries.iterdir()), list(onnx_entries.rglob("*"))


def test_a_failed_build_removes_its_entry_and_a_waiting_builder_still_builds(tmp_path, monkeypatch):
    from m2det_impl.backends.cache import cached_file

    monkeypatch.setenv("M2DET_CACHE_DIR", str(tmp_path / "cache"))

    def broken(path):
        path.write_bytes(b"half")
        raise RuntimeError("the exporter broke")

    with pytest.raises(RuntimeError):
        cached_file("onnx", {"k": 1}, "model.onnx", broken)
    assert not any((tmp_path / "cache" / "onnx").iterdir())
    record = cached_file("onnx", {"k": 1}, "model.onnx", lambda path: path.write_bytes(b"whole") and None)
    assert record.path.read_bytes() == b"whole" and not record.reused


def test_a_model_handed_out_of_the_cache_is_one_copy_and_a_write_through_it_rebuilds(tmp_path, monkeypatch,
                                                                                      caplog):
    import os

    from m2det_impl._io import atomic_link_or_copy
    from m2det_impl.backends.cache import cached_file

    monkeypatch.setenv("M2DET_CACHE_DIR", str(tmp_path / "cache"))
    builds = []

    def build(path):
        builds.append(path)
        path.write_bytes(b"model bytes")

    record = cached_file("onnx", {"k": 2}, "model.onnx", build)
    handed = tmp_path / "models" / "model.onnx"
    handed.parent.mkdir()
    assert atomic_link_or_copy(record.path, handed) is True  # same file system: a hard link
    assert os.path.samefile(handed, record.path) and handed.stat().st_nlink == 2
    assert atomic_link_or_copy(record.path, handed) is True and sorted(p.name for p in handed.parent.iterdir()) == [
        "model.onnx"]  # handed out again over itself: no stray temporary file
    assert cached_file("onnx", {"k": 2}, "model.onnx", build).reused and len(builds) == 1
    with open(handed, "r+b") as f:  # the user edits the file in place (as onnx.save over it would)
        f.write(b"MODEL")
    os.utime(handed, ns=(record.path.stat().st_atime_ns, record.path.stat().st_mtime_ns + 10**9))
    again = cached_file("onnx", {"k": 2}, "model.onnx", build)
    assert not again.reused and len(builds) == 2 and again.path.read_bytes() == b"model bytes"
    assert "changed on disk since it was cached" in caplog.text
    assert handed.read_bytes() == b"MODEL bytes"  # the user's file is theirs: the rebuild replaced the cache's


def test_a_gate_over_a_folder_nothing_lists_fails_unless_partial_is_allowed(tmp_path, ais_outputs, capsys):
    out, folder, stems, annotations = ais_outputs
    for summary in out.glob("*_summary.json"):
        summary.unlink()  # no ais summary, and no --image-info: nothing says which images were run
    assert _evaluate(tmp_path, out, annotations, "--min-ap", "0.0") == EXIT_GATE_FAILED
    captured = capsys.readouterr()
    err = captured.err
    assert "nothing lists the inputs" in err and "--image-info" in err and "3 image(s) present" in err
    assert "gate passed" not in captured.out + err
    assert _evaluate(tmp_path, out, annotations, "--min-ap", "0.0", "--allow-partial") == EXIT_OK
    assert json.loads((tmp_path / "summary.json").read_text())["allow_partial"] is True
    assert _evaluate(tmp_path, out, annotations) == EXIT_OK  # no gate asked for: scored as it is


def test_an_export_handed_out_as_a_hard_link_still_says_what_it_was_made_from(tmp_path, monkeypatch):
    """The re-trial: a run on models/m2det512_bs4.onnx (written by m2det export without --weights) showed
    a delta to the published AP and no golden warning: the file outside the cache named no weights."""
    from m2det_impl._io import atomic_link_or_copy
    from m2det_impl.backends.cache import cached_file, export_weights_tag
    from m2det_impl.backends.spec import ModelSpec

    monkeypatch.setenv("M2DET_CACHE_DIR", str(tmp_path / "cache"))
    def build(path):
        path.write_bytes(b"model bytes")

    record = cached_file("onnx", {"weights": "golden0", "batch": "4"}, "m2det512_bs4.onnx", build)
    handed = tmp_path / "models" / "m2det512_bs4.onnx"
    handed.parent.mkdir()
    assert atomic_link_or_copy(record.path, handed) is True
    assert export_weights_tag(handed) == "golden0"
    spec = ModelSpec(onnx=handed)
    assert spec.golden_numbers(spec.weights_record()) is True
    stranger = tmp_path / "models" / "other.onnx"
    stranger.write_bytes(b"model bytes")  # the same bytes, another file: not the cache's
    assert export_weights_tag(stranger) is None
