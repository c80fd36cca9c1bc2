"""The original repository's config files, read as literals and never run.

Expected configs come from the reference section 1 table (``get_config`` is held to
the same table in test_config.py); the files are written in the reference's
layout by ``config_samples``.
"""

from __future__ import annotations

import pytest
from config_samples import reference_config_text

from m2det_impl.cli import build_parser
from m2det_impl.cli.common import config_from as _config
from m2det_impl.errors import InputFileError, M2DetError
from m2det_impl.network.config import get_config
from m2det_impl.network.config_file import load_config_file, parse_config_source

pytestmark = pytest.mark.cpu


def _write(tmp_path, text, name="m2det512_vgg.py"):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("size", [320, 512, 704, 800])
def test_reference_layout_maps_onto_the_preset(tmp_path, size):
    read = load_config_file(_write(tmp_path, reference_config_text(size), f"m2det{size}_vgg.py"))
    assert read.config == get_config(size)
    assert read.differences == ()
    # the import and the os.path lines are listed, not run
    assert any(n.startswith("not run: line") and "import os" in n for n in read.notes)
    assert any(n.startswith("not evaluated: COCOroot") for n in read.notes)


def test_test_settings_follow_the_reference_call(tmp_path):
    text = (reference_config_text(512).replace("iou = 0.45", "iou = 0.5").replace("soft_nms = True", "soft_nms = False")
            .replace("topk = 0", "topk = 100").replace("score_threshold = 0.1", "score_threshold = 0.05")
            .replace("keep_per_class = 50", "keep_per_class = 20"))
    test = load_config_file(_write(tmp_path, text)).config.test
    # cpu_soft_nms(dets, cfg.test_cfg.iou, method=1): the iou lands in sigma too (reference section 7)
    assert (test.nms_iou, test.soft_nms_sigma, test.soft_nms, test.topk) == (0.5, 0.5, False, 100)
    assert (test.score_threshold, test.keep_per_class) == (0.05, 20)
    assert (test.soft_nms_method, test.soft_nms_nt, test.soft_nms_threshold) == (1, 0.3, 0.001)


def test_differences_from_the_preset_are_listed(tmp_path):
    text = reference_config_text(512).replace("rgb_means = (104, 117, 123)", "rgb_means = (0, 0, 0)")
    read = load_config_file(_write(tmp_path, text))
    assert read.config.rgb_means == (0.0, 0.0, 0.0)
    assert read.differences == ("rgb_means = (0.0, 0.0, 0.0) (preset (104.0, 117.0, 123.0))",)


@pytest.mark.parametrize("change, needle", [
    (("'vgg16'", "'resnet101'"), "backbone 'resnet101': only 'vgg16'"),
    (("sfam = False", "sfam = True"), "SFAM is not implemented"),
    (("input_size = 512", "input_size = 300"), "model.input_size 300"),
    (("input_size = 512", "input_size = '512'"), "model.input_size must be an integer"),
    (("num_scales = 6", "num_scales = 5"), "num_scales 5"),
    (("base_out = [22,34]", "base_out = [2,4]"), "base_out [2, 4]"),
    (("step_pattern = [8, 16, 32, 64, 128, 256]", "step_pattern = [8, 16]"), "step_pattern must be a list of 6"),
    (("iou = 0.45", "iou = 0"), "test_cfg.iou must be a number in (0.0, 1.0]"),
    (("iou = 0.45", "iou = IOU"), "the variable 'IOU'"),
    (("topk = 0", "topk = True"), "test_cfg.topk must be an integer"),
    (("model = dict(", "model = make("), "a call of make()"),
    (("bkg_label = 0", "bkg_label = 81"), "loss.bkg_label must be in 0..80"),
])
def test_values_this_implementation_cannot_run_are_refused(tmp_path, change, needle):
    text = reference_config_text(512)
    assert change[0] in text
    path = _write(tmp_path, text.replace(change[0], change[1], 1))
    with pytest.raises(InputFileError) as info:
        load_config_file(path)
    assert str(path) in str(info.value) and needle in str(info.value)


@pytest.mark.parametrize("extra, needle", [
    ("model['input_size'] = 320", "changes model in place"),
    ("test_cfg.update(iou=0.3)", "changes test_cfg outside a literal assignment"),
    ("for model in [1]:\n    pass", "changes model outside a literal assignment"),
    ("dict = lambda **k: 0", "rebinds 'dict'"),
    ("from collections import OrderedDict as dict", "rebinds 'dict'"),
])
def test_statements_that_would_change_a_section_are_refused(tmp_path, extra, needle):
    path = _write(tmp_path, reference_config_text(512) + extra + "\n")
    with pytest.raises(InputFileError, match=needle) as info:
        load_config_file(path)
    assert str(path) in str(info.value)


def test_code_in_a_config_file_is_never_run(tmp_path):
    sentinel = tmp_path / "ran"
    text = reference_config_text(512) + (
        f"__import__('os').system('touch {sentinel}')\n"
        f"open({str(sentinel)!r}, 'w').write('x')\n"
        f"train_cfg = dict(hook=open({str(sentinel)!r}, 'w'))\n"
    )
    read = load_config_file(_write(tmp_path, text))
    assert read.config == get_config(512)
    assert not sentinel.exists()
    assert sum(n.startswith("not run:") for n in read.notes) == 3  # import os and the two calls
    assert any(n.startswith("not evaluated: train_cfg") for n in read.notes)


def test_last_assignment_wins_as_in_python():
    values, not_literal, skipped = parse_config_source("a = 1\na = dict(b=[1, (2, -3.5)], c={'d': None})\n")
    assert values == {"a": {"b": [1, (2, -3.5)], "c": {"d": None}}} and not not_literal and not skipped


@pytest.mark.parametrize("problem, needle", [
    ("missing", "config file not found"), ("folder", "found a folder"), ("latin1", "not UTF-8"),
    ("python2", "not a Python config file"), ("empty", r"no 'model = dict\(\.\.\.\)'"),
])
def test_unreadable_config_files(tmp_path, problem, needle):
    path = tmp_path / "c.py"
    if problem == "folder":
        path.mkdir()
    elif problem == "latin1":
        path.write_bytes("model = dict(input_size=512)  # caf\xe9\n".encode("latin-1"))
    elif problem == "python2":
        path.write_text("print 'hello'\n")
    elif problem == "empty":
        path.write_text("")
    with pytest.raises(InputFileError, match=needle) as info:
        load_config_file(path)
    assert str(path) in str(info.value)


def test_cli_takes_a_config_file_and_refuses_a_contradicting_size(tmp_path):
    path = _write(tmp_path, reference_config_text(320), "m2det320_vgg.py")
    assert _config(build_parser().parse_args(["run", "--config", str(path)])) == get_config(320)
    assert _config(build_parser().parse_args(["run", "--config", str(path), "--size", "320"])) == get_config(320)
    with pytest.raises(M2DetError, match="--size 512 contradicts"):
        _config(build_parser().parse_args(["run", "--config", str(path), "--size", "512"]))
    assert _config(build_parser().parse_args(["run"])) == get_config(512)
