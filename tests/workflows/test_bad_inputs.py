"""Issue 20, points 3 and 9: a corrupt image among the inputs of ``preprocess`` or ``infer`` leaves no
half-finished folder (``--skip-bad`` names it and goes on), and an interrupted command says truthfully
whether the same command resumes (only ``run`` does)."""

from __future__ import annotations

import shutil

import pytest

from m2det_impl.cli.app import main
from m2det_impl.exit_codes import EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_OK
from m2det_impl.resources import MINI_COCO

pytestmark = pytest.mark.cpu


@pytest.fixture
def images(tmp_path):
    """Two bundled images and, between them by name, a corrupt JPEG."""
    folder = tmp_path / "images"
    folder.mkdir()
    for source in sorted((MINI_COCO / "val2014").glob("*.jpg"))[:2]:
        shutil.copy(source, folder / source.name)
    names = sorted(p.name for p in folder.iterdir())
    bad = folder / (names[0][:-4] + "_corrupt.jpg")
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return folder, bad


def test_preprocess_stops_on_a_corrupt_image_and_leaves_no_bin_behind(images, tmp_path, capsys):
    folder, bad = images
    out = tmp_path / "prep"
    assert main(["preprocess", "--images", str(folder), "--output", str(out), "--quiet"]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(bad) in err[0]
    assert not out.exists()  # no input without its info files, and no empty folder either


def test_preprocess_skip_bad_names_it_and_writes_the_rest_with_their_info_files(images, tmp_path, capsys):
    folder, bad = images
    out = tmp_path / "prep"
    assert main(["preprocess", "--images", str(folder), "--output", str(out), "--skip-bad", "--quiet"]) == EXIT_OK
    captured = capsys.readouterr()
    assert f"skipped {bad}" in captured.err and "1 unreadable image(s) skipped" in captured.out
    bins = sorted(p.name for p in out.glob("*.bin"))
    assert len(bins) == 2 and not any("corrupt" in b for b in bins)
    listed = (out / "m2det_bin.info").read_text().splitlines()
    assert len(listed) == 2 and not any("corrupt" in line for line in listed)
    assert not any("corrupt" in line for line in (out / "m2det_jpg.info").read_text().splitlines())


@pytest.mark.parametrize("skip_bad", [False, True])
def test_infer_checks_every_image_before_writing(images, tmp_path, capsys, skip_bad):
    folder, bad = images
    out = tmp_path / "out"
    argv = ["infer", "--backend", "simulated-npu", "--sim-ms-per-image", "0", "--inputs", str(folder),
            "--output", str(out), "--output-dirname", "run", "--quiet"] + (["--skip-bad"] if skip_bad else [])
    code = main(argv)
    captured = capsys.readouterr()
    if not skip_bad:
        assert code == EXIT_BAD_INPUT
        err = captured.err.strip().splitlines()
        assert len(err) == 1 and str(bad) in err[0] and "--skip-bad" in err[0]
        assert not out.exists()  # nothing written
        return
    assert code == EXIT_OK and f"skipped {bad}" in captured.err
    written = sorted(p.name for p in (out / "run").iterdir())
    assert len(written) == 4 and not any("corrupt" in name for name in written)  # <stem>_0, <stem>_1 each


@pytest.mark.parametrize("command, resumes", [("run", True), ("infer", True), ("preprocess", False),
                                             ("export", False)])
def test_an_interrupted_command_says_whether_it_resumes(monkeypatch, capsys, tmp_path, command, resumes):
    from m2det_impl.cli import commands

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setitem(commands.COMMANDS, command, interrupted)
    argv = {"run": ["run"], "infer": ["infer", "--inputs", str(tmp_path), "--output", str(tmp_path / "o")],
            "preprocess": ["preprocess", "--output", str(tmp_path / "p")],
            "export": ["export", "--output", str(tmp_path / "m")]}[command]
    assert main(argv) == EXIT_INTERRUPTED
    err = capsys.readouterr().err
    assert ("run the same command again to resume" in err) is resumes
    if not resumes:  # the second trial: export said "what was written so far is kept" with nothing written
        assert "starts over" in err and "only m2det run and m2det infer resume" in err
        assert "nothing half-written is left" in err and "kept but incomplete" not in err


def test_a_text_file_as_weights_says_what_it_is(tmp_path, capsys):
    """The fresh-clone trial: a text file given as --weights read 'not a readable PyTorch checkpoint (101)'."""
    text = tmp_path / "text.pth"
    text.write_text("101 is not a checkpoint\n")
    assert main(["run", "--backend", "torch", "--weights", str(text), "--limit", "1", "--output",
                 str(tmp_path / "o"), "--quiet"]) == EXIT_BAD_INPUT
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(err) == 1 and str(text) in err[0] and "neither a zip archive" in err[0] and "'101 is n'" in err[0]


def test_collect_takes_the_bundled_annotations(tmp_path, capsys):
    """The fresh-clone trial: evaluate and merge took --annotations bundled, collect did not."""
    import json

    from m2det_impl.resources import MINI_COCO_ANNOTATIONS

    run = tmp_path / "run"
    assert main(["run", "--backend", "simulated-npu", "--sim-ms-per-image", "0", "--limit", "1", "--output", str(run),
                 "--no-report", "--quiet"]) == EXIT_OK
    by_name, by_path = tmp_path / "a.json", tmp_path / "b.json"
    assert main(["collect", "--run", str(run), "--annotations", "bundled", "--output", str(by_name)]) == EXIT_OK
    assert main(["collect", "--run", str(run), "--annotations", str(MINI_COCO_ANNOTATIONS),
                 "--output", str(by_path)]) == EXIT_OK
    named, pathed = json.loads(by_name.read_text()), json.loads(by_path.read_text())
    assert named["workload"]["dataset"] == pathed["workload"]["dataset"] and named["workload"]["dataset"]


def test_a_collect_that_fails_leaves_no_folder_behind(tmp_path, capsys):
    """The second trial: failing commands left empty folders. collect makes the results file's folder
    only once it has something to write; a folder given as the file is refused, in one line."""
    out = tmp_path / "new" / "results.json"
    assert main(["collect", "--run", str(tmp_path / "absent-run"), "--output", str(out)]) == EXIT_BAD_INPUT
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(err) == 1 and "absent-run" in err[0], err
    assert not (tmp_path / "new").exists()
    (tmp_path / "folder").mkdir()
    assert main(["collect", "--run", str(tmp_path / "absent-run"), "--output", str(tmp_path / "folder")]) != EXIT_OK
    assert "is a folder" in capsys.readouterr().err


def test_an_output_folder_made_for_a_job_that_fails_goes_again_unless_it_holds_something(tmp_path):
    """What every folder-writing command stands on: the folders the job made are removed while empty
    (deepest first, never one that was there before), and a folder holding a file is kept."""
    from m2det_impl._io import output_folder

    (tmp_path / "there").mkdir()
    with pytest.raises(ValueError):
        with output_folder(tmp_path / "there" / "a" / "b") as out:
            assert out.is_dir()
            raise ValueError("a bad input found late")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["there"] and not any((tmp_path / "there").iterdir())
    with pytest.raises(KeyboardInterrupt):
        with output_folder(tmp_path / "kept" / "b") as out:
            (out / "journal.jsonl").write_text("{}\n")  # something computed: never lost
            raise KeyboardInterrupt
    assert (tmp_path / "kept" / "b" / "journal.jsonl").is_file()
    with output_folder(tmp_path / "ok") as out:
        pass
    assert out.is_dir()  # a job that succeeds keeps its (even empty) folder


def test_export_with_a_rejected_checkpoint_leaves_no_folder(tmp_path, capsys, monkeypatch):
    """The second trial: ``export`` with a checkpoint it refuses made its output folder first."""
    monkeypatch.setenv("M2DET_CACHE_DIR", str(tmp_path / "cache"))
    weights = tmp_path / "notes.pth"
    weights.write_text("not a checkpoint\n")
    out = tmp_path / "new" / "models"
    assert main(["export", "--weights", str(weights), "--output", str(out)]) == EXIT_BAD_INPUT
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(err) == 1 and str(weights) in err[0], err
    assert not (tmp_path / "new").exists()


def test_compare_emulate_names_a_corrupt_image_before_building_any_model(images, tmp_path, capsys, monkeypatch):
    """The fp16 forecast built its sessions (seconds; an export on a fresh machine) and only then met a
    corrupt image: every image is decoded first, and the one line is the whole of stderr."""
    from m2det_impl.backends import cache

    def no_model(*args, **kwargs):
        raise AssertionError("a model was built before the images were checked")

    monkeypatch.setattr(cache, "cached_onnx", no_model)
    folder, bad = images
    out = tmp_path / "cmp"
    code = main(["compare", "--emulate", "fp16", "--size", "320", "--images", str(folder), "--output", str(out),
                 "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == EXIT_BAD_INPUT and len(err) == 1 and str(bad) in err[0], (code, err)
    assert "--skip-bad" not in err[0]  # compare has no such option to suggest
    assert not out.exists()


@pytest.mark.parametrize("opset", ["7", "10", "21"])
def test_export_at_an_opset_it_cannot_make_is_refused_in_one_line(tmp_path, capsys, opset):
    """The second trial: ``--opset 7`` was exit 3 after the exporter failed inside torch, with 320 kB of
    its graph on stdout and an empty folder left."""
    out = tmp_path / "models"
    assert main(["export", "--batch", "1", "--opset", opset, "--output", str(out)]) == EXIT_BAD_INPUT
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.strip().splitlines()) == 1, captured.err
    assert f"--opset {opset}" in captured.err and "11 to 20" in captured.err
    assert not out.exists()


def test_compare_given_a_runs_json_files_asks_for_the_folder(tmp_path, capsys):
    """The second trial: two summary.json files were read as .npz saved runs, and the one line was numpy's
    advice to unpickle them."""
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text("{}")
    assert main(["compare", str(tmp_path / "a" / "summary.json"), str(tmp_path / "b" / "summary.json")]) \
        == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "give its folder" in err[0] and "pickle" not in err[0], err


def test_collect_reads_the_annotation_file_that_names_its_workload(tmp_path):
    """The second trial: ``collect --annotations`` of a truncated JSON recorded it as the dataset (by hash)."""
    from m2det_impl.errors import InputFileError
    from m2det_impl.gating.collect import dataset_identity

    bad = tmp_path / "instances.json"
    bad.write_text('{"images": [')
    with pytest.raises(InputFileError, match="instances.json: annotation file is not valid JSON"):
        dataset_identity(bad)
    assert dataset_identity(MINI_COCO / "annotations" / "instances_minival2014.json").startswith(
        "instances_minival2014.json#sha256:")


def test_a_run_asks_for_the_batch_it_runs_whether_or_not_it_names_it(tmp_path):
    """The re-trial: after an interrupted run without --batch-size, the same run with --batch-size 1 (the
    batch it ran) was refused as "a different run ('default' then, 1 now)", and infer started a new folder
    ("None then, 1 now"). Journal and job record keep the batch a job asks for: a dynamic model's 1, a
    static ONNX file's own (from its header), an .om's own."""
    from dataclasses import replace

    import onnx
    from onnx import TensorProto, helper

    from m2det_impl.backends.spec import ModelSpec

    def model(batch):
        graph = helper.make_graph([helper.make_node("Identity", ["image"], ["scores"])], "tiny",
                                  [helper.make_tensor_value_info("image", TensorProto.FLOAT, [batch, 3, 8, 8])],
                                  [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [batch, 3, 8, 8])])
        path = tmp_path / f"m{batch}.onnx"
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)]), path)
        return path

    def asked(spec, batch):
        return replace(spec, batch_size=batch).batch_asked()

    dynamic, static = ModelSpec(onnx=model("batch")), ModelSpec(onnx=model(3))
    assert asked(dynamic, None) == asked(dynamic, 1) == 1 != asked(dynamic, 2)
    assert asked(static, None) == asked(static, 3) == 3
    assert asked(ModelSpec(), None) == 1  # the cached export is dynamic
    assert asked(ModelSpec(backend="om", om=tmp_path / "m.om"), None) == "the model's own"
