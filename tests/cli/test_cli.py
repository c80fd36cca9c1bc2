"""The ``m2det`` command end to end: every subcommand on the bundled mini COCO
set and on files laid out as a 310P run leaves them, and the bad inputs a user
meets, each with a clear one-line message and a non-zero exit."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from support import SMALL_CONFIG_FILE, perfect_outputs, shaped_state

from m2det_impl.cli import main
from m2det_impl.exit_codes import EXIT_BAD_INPUT as EXIT_ERROR
from m2det_impl.exit_codes import EXIT_GATE_FAILED as EXIT_GATE
from m2det_impl.exit_codes import EXIT_OK
from m2det_impl.pipeline.ais_files import write_outputs
from m2det_impl.pipeline.preprocess import load_image, preprocess_image
from m2det_impl.resources import MINI_COCO

pytestmark = pytest.mark.cpu

MINI = MINI_COCO
ANN = MINI / "annotations" / "instances_minival2014.json"


@pytest.fixture(scope="module")
def perfect(cfg512):
    return perfect_outputs(ANN, cfg512)


@pytest.fixture(scope="module")
def ais_layout(tmp_path_factory, perfect):
    """Raw outputs of a perfect network, laid out as ais_infer leaves them."""
    root = tmp_path_factory.mktemp("ais")
    run = root / "2026_11_26-10_00_00"
    for stem, (scores, loc, _) in perfect.items():
        write_outputs(run, stem, scores, loc[None], first_index=0)
    (run / "sumary.json").write_text("{}")  # ais_infer's own summary file is ignored
    return root


def _evaluate(tmp_path, outputs, *extra):
    return main(["evaluate", "--outputs", str(outputs), "--annotations", str(ANN),
                 "--results", str(tmp_path / "r.json"), "--summary", str(tmp_path / "s.json"), "--quiet", *extra])


def test_evaluate_ais_layout_scores_ground_truth_perfectly(tmp_path, ais_layout, capsys):
    from m2det_impl.pipeline.preprocess import write_jpg_info

    info = write_jpg_info(MINI / "val2014", tmp_path / "m2det_jpg.info", workers=1)  # what lists the inputs
    assert len(info) == 24
    assert _evaluate(tmp_path, ais_layout, "--min-ap", "0.99", "--image-info", str(tmp_path / "m2det_jpg.info")) == EXIT_OK
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["ap"] >= 0.99 and len(summary["stats"]) == 12 and summary["num_images"] == 24
    results = json.loads((tmp_path / "r.json").read_text())
    n_gt = len(json.loads(ANN.read_text())["annotations"])
    assert len(results) == n_gt
    assert "Average Precision" in capsys.readouterr().out


def test_evaluate_benchmark_naming_gives_the_same_results(tmp_path, perfect, ais_layout):
    old = tmp_path / "benchmark_out"
    for stem, (scores, loc, _) in perfect.items():
        write_outputs(old, stem, scores, loc, first_index=1)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert _evaluate(tmp_path / "a", ais_layout) == EXIT_OK
    assert _evaluate(tmp_path / "b", old) == EXIT_OK
    assert (tmp_path / "a" / "r.json").read_text() == (tmp_path / "b" / "r.json").read_text()


def test_evaluate_image_info_overrides_sizes(tmp_path, ais_layout):
    """With sizes from the guide's jpg info file, boxes scale to those sizes."""
    data = json.loads(ANN.read_text())
    first = data["images"][0]
    info = tmp_path / "jpg.info"
    info.write_text(f"0 {first['file_name']} {first['width'] * 2} {first['height'] * 2}\n")
    assert _evaluate(tmp_path, ais_layout, "--image-info", str(info)) == EXIT_OK
    plain = tmp_path / "plain"
    plain.mkdir()
    assert _evaluate(plain, ais_layout) == EXIT_OK
    scaled = [r for r in json.loads((tmp_path / "r.json").read_text()) if r["image_id"] == first["id"]]
    base = [r for r in json.loads((plain / "r.json").read_text()) if r["image_id"] == first["id"]]
    assert scaled and len(scaled) == len(base)
    for a, b in zip(scaled, base):
        assert a["bbox"][0] == pytest.approx(2 * b["bbox"][0], rel=1e-5)


@pytest.fixture()
def damaged_layout(tmp_path, ais_layout):
    root = tmp_path / "damaged"
    shutil.copytree(ais_layout, root)
    run = root / "2026_11_26-10_00_00"
    victim = sorted(run.glob("*_1.bin"))[0]
    victim.write_bytes(victim.read_bytes()[:1000])
    return root, victim


def test_truncated_output_fails_naming_file_and_size(tmp_path, damaged_layout, capsys):
    root, victim = damaged_layout
    assert _evaluate(tmp_path, root) == EXIT_ERROR
    err = capsys.readouterr().err
    assert str(victim) in err and "1000 bytes" in err and "524160" in err and "Traceback" not in err
    assert not (tmp_path / "r.json").exists() and not (tmp_path / "s.json").exists()


def test_skip_bad_records_the_image_and_goes_on(tmp_path, damaged_layout):
    root, victim = damaged_layout
    assert _evaluate(tmp_path, root, "--skip-bad") == EXIT_OK
    summary = json.loads((tmp_path / "s.json").read_text())
    stem = victim.name[: -len("_1.bin")]
    assert list(summary["skipped"]) == [stem]
    assert summary["num_images"] == 24 and summary["ap"] < 1.0  # the skipped image counts as missed


def test_missing_output_file_names_the_missing_kind(tmp_path, ais_layout, capsys):
    root = tmp_path / "missing"
    shutil.copytree(ais_layout, root)
    victim = next(root.rglob("*_0.bin"))
    victim.unlink()
    (tmp_path / "out").mkdir()
    assert _evaluate(tmp_path / "out", root) == EXIT_ERROR
    err = capsys.readouterr().err
    stem = victim.name[: -len("_0.bin")]
    assert err.count("\n") == 1 and f"{stem}: missing the scores output file beside" in err
    assert str(victim.with_name(f"{stem}_1.bin")) in err and "--skip-bad" in err


def test_min_ap_gate_fails_with_exit_1(tmp_path, ais_layout, capsys):
    assert _evaluate(tmp_path, ais_layout, "--min-ap", "1.01", "--allow-partial") == EXIT_GATE
    assert "gate FAILED: AP 1.0000 < 1.01" in capsys.readouterr().err


@pytest.mark.parametrize("args, needle", [
    (["evaluate", "--outputs", "{tmp}/none", "--annotations", str(ANN), "--results", "{tmp}/r", "--summary", "{tmp}/s"],
     "outputs folder not found"),
    (["evaluate", "--outputs", "{tmp}", "--annotations", "{tmp}/none.json", "--results", "{tmp}/r", "--summary", "{tmp}/s"],
     "annotation file not found"),
    (["run", "--images", "{tmp}", "--backend", "torch"], "no images"),
    (["run", "--coco-root", "{tmp}"], "instances_minival2014.json"),
    (["infer", "--inputs", "{tmp}", "--output", "{tmp}/o", "--backend", "torch"], "no .bin inputs or images"),
])
def test_bad_inputs_give_one_line_errors(tmp_path, capsys, args, needle):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    assert main(args + ["--quiet"]) == EXIT_ERROR
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


# ------------------------------------------------------- runs with a model
# The plumbing below (results, summary, report, resume, shards, the guide's flow, bench, error
# messages) does not depend on the network's width or size: it runs the reduced network
# (fixtures/m2det320_small_vgg.py, given with --config as a user gives the reference's config
# files). Golden parity and tolerances of the real M2Det512 are held in tests/backends/.
@pytest.fixture(scope="module")
def onnx_path(small_export):
    return small_export(None).path


@pytest.fixture(scope="module")
def small(small_config_file):
    return ["--config", str(small_config_file)]


def _run(out, onnx_path, *extra):
    return main(["run", "--onnx", str(onnx_path), "--config", str(SMALL_CONFIG_FILE), "--output", str(out),
                 "--quiet", "--limit", "3", *extra])


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, onnx_path):
    out = tmp_path_factory.mktemp("run")
    assert _run(out, onnx_path, "--batch-size", "2") == EXIT_OK
    return out


def test_run_writes_results_summary_and_report(full_run):
    results = json.loads((full_run / "results.json").read_text())
    summary = json.loads((full_run / "summary.json").read_text())
    # an --onnx file brings its own weights: recorded by content hash (a cached export says what it was made from)
    assert summary["num_images"] == 3 and summary["golden_weights"] is True
    assert summary["weights"]["kind"] == "onnx" and len(summary["weights"]["sha256"]) == 64
    assert summary["weights"]["exported_from"] == "golden0"
    # the second trial: the "inference alone" figure printed was in no file; the backend's calls are
    # part of the wall clock, so their rate is never below the end-to-end one
    assert summary["inference_images_per_second"] >= summary["images_per_second"] > 0
    assert {r["image_id"] for r in results} <= set(sorted(i["id"] for i in json.loads(ANN.read_text())["images"])[:3])
    assert all(set(r) == {"image_id", "category_id", "bbox", "score"} for r in results)
    for name in ("report.md", "report.json", "detections.png"):
        assert (full_run / name).stat().st_size > 0
    assert "golden" in (full_run / "report.md").read_text().lower()
    assert "| n/a (golden weights) |" in (full_run / "report.md").read_text()  # never a delta to 0.378


def test_run_results_equal_the_guide_flow(tmp_path, full_run, onnx_path, small_cfg, small):
    """preprocess -> infer -> evaluate gives the same detections as run."""
    prep, outs = tmp_path / "prep", tmp_path / "outs"
    # preprocess and evaluate depend on the input size alone: they take --size, not a config file
    assert main(["preprocess", "--output", str(prep), "--limit", "3", "--quiet", "--size", str(small_cfg.size)]) == EXIT_OK
    bins = sorted(prep.glob("*.bin"))
    assert len(bins) == 3 and (prep / "m2det_bin.info").exists() and (prep / "m2det_jpg.info").exists()
    image = load_image(MINI / "val2014" / (bins[0].stem + ".jpg"))
    size = small_cfg.size
    assert np.array_equal(np.fromfile(bins[0], np.float32).reshape(3, size, size), preprocess_image(image, small_cfg))
    assert main(["infer", "--inputs", str(prep), "--output", str(outs), "--onnx", str(onnx_path),
                 "--batch-size", "2", "--quiet", *small]) == EXIT_OK
    assert len(list(outs.rglob("*_0.bin"))) == 3  # in ais_bench's time-stamped sub-folder
    assert main(["evaluate", "--outputs", str(outs), "--annotations", str(ANN), "--image-info",
                 str(prep / "m2det_jpg.info"), "--results", str(tmp_path / "r.json"),
                 "--summary", str(tmp_path / "s.json"), "--quiet", "--size", str(small_cfg.size)]) == EXIT_OK
    # the re-trial: the bin info file given as --image-info scaled every box by 512x512 sizes, exit 0
    assert main(["evaluate", "--outputs", str(outs), "--annotations", str(ANN), "--image-info",
                 str(prep / "m2det_bin.info"), "--results", str(tmp_path / "rb.json"), "--summary",
                 str(tmp_path / "sb.json"), "--quiet", "--size", str(small_cfg.size)]) == EXIT_ERROR
    assert not (tmp_path / "rb.json").exists()
    # the second trial: evaluate's summary named no weights; infer's notes beside its summary carry them
    weights = json.loads((tmp_path / "s.json").read_text())["weights"]
    assert weights == json.loads((full_run / "summary.json").read_text())["weights"]
    assert weights["kind"] == "onnx" and weights["path"] == str(Path(onnx_path).resolve())
    # the re-trial: report and collect showed "?" for an evaluated folder's backend and batch
    scored = json.loads((tmp_path / "s.json").read_text())
    run_identity = json.loads((full_run / "summary.json").read_text())["identity"]
    assert scored["batch_size"] == 2 and scored["identity"]["backend"] == run_identity["backend"] == "onnxruntime"
    assert scored["identity"]["model"] == run_identity["model"] == str(Path(onnx_path).resolve())
    folder = tmp_path / "evaluated"
    folder.mkdir()
    shutil.copy(tmp_path / "s.json", folder / "summary.json")
    assert main(["report", str(folder), "--quiet"]) == EXIT_OK
    row = next(line for line in (folder / "report.md").read_text().splitlines() if line.startswith(f"| {folder} |"))
    assert "| onnxruntime | 2 | 3 |" in row, row
    ours = json.loads((tmp_path / "r.json").read_text())
    theirs = json.loads((full_run / "results.json").read_text())
    assert len(ours) == len(theirs)
    # batch 2 vs batch 2 over the same three images: same numbers to float noise
    for a, b in zip(sorted(ours, key=lambda r: (r["image_id"], r["category_id"], -r["score"])),
                    sorted(theirs, key=lambda r: (r["image_id"], r["category_id"], -r["score"]))):
        assert (a["image_id"], a["category_id"]) == (b["image_id"], b["category_id"])
        assert a["score"] == pytest.approx(b["score"], abs=1e-4)


def test_run_resumes_without_redoing_or_duplicating(tmp_path, full_run, onnx_path, capsys):
    out = tmp_path / "resume"
    shutil.copytree(full_run, out)
    (out / "results.json").unlink()
    assert _run(out, onnx_path, "--no-report", "--batch-size", "2") == EXIT_OK
    captured = capsys.readouterr()
    assert "3 of 3 images already done" in captured.err
    assert (out / "results.json").read_text() == (full_run / "results.json").read_text()
    # the re-trial: a run whose every image was resumed kept the end-to-end speed and lost the inference one
    first, again = (json.loads((f / "summary.json").read_text()) for f in (full_run, out))
    for key in ("images_per_second", "inference_images_per_second"):
        assert again[key] == first[key] > 0, key
    # the second trial: a resume at another batch recorded batch 2 beside the speed batch 1 had measured
    summary = (out / "summary.json").read_text()
    assert _run(out, onnx_path, "--no-report", "--batch-size", "1") == EXIT_ERROR
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(err) == 1 and "batch_size" in err[0] and "--fresh" in err[0], err
    assert (out / "summary.json").read_text() == summary


def test_shards_merge_to_the_unsharded_results(tmp_path, full_run, onnx_path):
    shards = tmp_path / "shards"
    for i in range(2):
        assert _run(shards, onnx_path, "--shard", f"{i}/2", "--batch-size", "2") == EXIT_OK
    assert main(["merge", str(shards), "--annotations", str(ANN), "--limit", "3",
                 "--results", str(tmp_path / "m.json"), "--summary", str(tmp_path / "ms.json")]) == EXIT_OK
    merged = json.loads((tmp_path / "m.json").read_text())
    single = json.loads((full_run / "results.json").read_text())
    assert [(r["image_id"], r["category_id"]) for r in merged] == [(r["image_id"], r["category_id"]) for r in single]
    merged_summary = json.loads((tmp_path / "ms.json").read_text())
    assert merged_summary["num_images"] == 3
    # the second trial: a merged summary lost what produced it (report showed '?', collect refused it)
    single_summary = json.loads((full_run / "summary.json").read_text())
    for key in ("identity", "weights", "golden_weights", "batch_size"):
        assert merged_summary[key] == single_summary[key], key
    # the second trial: shards run over 3 images merged "--limit 2" scored all 3 (exit 0)
    assert main(["merge", str(shards), "--annotations", str(ANN), "--limit", "2", "--results",
                 str(tmp_path / "m2" / "m.json"), "--summary", str(tmp_path / "m2" / "ms.json")]) == EXIT_ERROR
    assert not (tmp_path / "m2").exists()
    # and --limit without --annotations selected nothing, silently (the re-trial)
    assert main(["merge", str(shards), "--limit", "2", "--results", str(tmp_path / "m3" / "m.json"),
                 "--summary", str(tmp_path / "m3" / "ms.json")]) == EXIT_ERROR
    assert not (tmp_path / "m3").exists()


def test_corrupt_image_stops_the_run_naming_it(tmp_path, onnx_path, small, capsys):
    root = tmp_path / "coco"
    shutil.copytree(MINI, root)
    first = sorted(json.loads(ANN.read_text())["images"], key=lambda i: i["id"])[0]
    bad = root / "val2014" / first["file_name"]
    bad.write_bytes(bad.read_bytes()[:200])
    assert main(["run", "--coco-root", str(root), "--onnx", str(onnx_path), "--output", str(tmp_path / "o"),
                 "--limit", "2", "--quiet", *small]) == EXIT_ERROR
    err = capsys.readouterr().err
    assert str(bad) in err and "--skip-bad" in err
    assert main(["run", "--coco-root", str(root), "--onnx", str(onnx_path), "--output", str(tmp_path / "o"),
                 "--limit", "2", "--quiet", "--skip-bad", "--no-report", *small]) == EXIT_OK
    assert str(first["id"]) in json.loads((tmp_path / "o" / "summary.json").read_text())["skipped"]


def test_wrong_bin_size_names_the_file(tmp_path, onnx_path, small, small_cfg, capsys):
    (tmp_path / "in").mkdir()
    bad = tmp_path / "in" / "x.bin"
    bad.write_bytes(b"\0" * 12)
    assert main(["infer", "--inputs", str(tmp_path / "in"), "--output", str(tmp_path / "o"),
                 "--onnx", str(onnx_path), "--quiet", *small]) == EXIT_ERROR
    err = capsys.readouterr().err
    assert str(bad) in err and str(3 * small_cfg.size ** 2 * 4) in err


def test_checkpoint_of_another_model_is_refused(tmp_path, cfg512, capsys):
    # M2Det512's names and shapes with a VOC (21-class) head, values left out (support.shaped_state)
    state = shaped_state(cfg512, conf__0__weight=torch.zeros(()).expand(21 * 6, 2048, 3, 3))
    path = tmp_path / "m2det512_voc.pth"
    torch.save(state, path)
    assert main(["run", "--weights", str(path), "--backend", "torch", "--output", str(tmp_path / "o"),
                 "--quiet", "--limit", "1"]) == EXIT_ERROR
    err = capsys.readouterr().err
    assert str(path) in err and "conf.0.weight" in err


def test_bench_writes_json_and_markdown(tmp_path, onnx_path, small):
    assert main(["bench", "--onnx", str(onnx_path), *small, "--limit", "2", "--batch-sizes", "1", "--repeats", "1",
                 "--warmup", "0", "--host-images", "8", "--no-end-to-end", "--output", str(tmp_path),
                 "--published", "modelzoo-current", "--quiet"]) == EXIT_OK
    data = json.loads((tmp_path / "bench.json").read_text())
    row = data["inference"][0]
    assert row["batch_size"] == 1 and row["images_per_second"] == pytest.approx(1000.0 / row["execute_ms"][0])
    assert row["wall_clock_images_per_second"] > 0 and row["execute_clock"] and row["wall_clock"]
    assert data["host"]["images"] == 8 and data["machine"]["cores"] == os.cpu_count()
    assert data["published"]["name"] == "modelzoo-current" and data["published"]["table"]["1"] == 45.349
    text = (tmp_path / "bench.md").read_text()
    assert "| 1 |" in text and "modelzoo-current" in text and "45.349" in text


def test_bench_published_takes_only_known_tables(capsys):
    with pytest.raises(SystemExit) as info:  # argparse's usage error, before any work
        main(["bench", "--published", "nosuch", "--quiet"])
    assert info.value.code == EXIT_ERROR
    err = capsys.readouterr().err
    assert "--published" in err and "modelzoo-current" in err


def test_report_over_run_folders(tmp_path, full_run):
    assert main(["report", str(full_run), "--output", str(tmp_path)]) == EXIT_OK
    text = (tmp_path / "report.md").read_text()
    assert "0.378" in text and "37.817" in text
    assert json.loads((tmp_path / "report.json").read_text())["runs"][0]["num_images"] == 3


def test_console_script_help_and_errors(tmp_path, capsys):
    """Every subcommand's help (in this process: argparse's exit 0 and usage text), then the console
    script itself in a process of its own, once for a help and once for a one-line error (each
    process costs an interpreter start and the package's imports, a few seconds on 2 cores)."""
    for sub in ("run", "evaluate", "merge", "export", "preprocess", "infer", "bench", "report"):
        with pytest.raises(SystemExit) as info:
            main([sub, "--help"])
        assert info.value.code == 0 and "usage:" in capsys.readouterr().out, sub
    exe = Path(sys.executable).with_name("m2det")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "m2det_impl.cli"]
    done = subprocess.run(cmd + ["run", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "usage: m2det run" in done.stdout
    done = subprocess.run(cmd + ["evaluate", "--outputs", str(tmp_path), "--annotations", str(ANN), "--results",
                                 str(tmp_path / "r"), "--summary", str(tmp_path / "s")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == EXIT_ERROR and "Traceback" not in done.stderr and "no output files" in done.stderr


def test_export_writes_static_onnx_and_atc_script(tmp_path, capsys):
    assert main(["export", "--batch", "1", "--output", str(tmp_path)]) == EXIT_OK
    out = capsys.readouterr().out
    onnx_file = tmp_path / "m2det512_bs1.onnx"
    assert onnx_file.stat().st_size > 500e6 and "opset 11" in out and "violation" not in out
    script = (tmp_path / "atc_build.sh").read_text()
    assert ('atc --framework=5 --model="$HERE"/m2det512_bs1.onnx --input_format=NCHW '
            '--input_shape=image:1,3,512,512 --output="$HERE"/m2det512_bs1 --log=error '
            '--soc_version=Ascend310P3') in script
    assert "--out_nodes" not in script
