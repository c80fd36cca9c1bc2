"""The command line a hurried user meets: one-line usage errors, help on every option, clear 'not found'."""

import argparse
from importlib.metadata import version

import pytest

from m2det_impl.cli import build_parser, main
from m2det_impl.environment import library_versions
from m2det_impl.exit_codes import EXIT_BAD_INPUT

pytestmark = pytest.mark.cpu


def test_a_usage_error_is_one_line(capsys):
    with pytest.raises(SystemExit) as info:
        main(["run", "--batch-size", "0"])
    assert info.value.code == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "m2det run: error: argument --batch-size: must be >= 1, got 0" in err
    assert "usage:" not in err


def _subparsers(parser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            yield from action.choices.items()


def test_every_option_of_every_command_has_help_text():
    missing = [f"{name} {'/'.join(a.option_strings)}" for name, sub in _subparsers(build_parser())
               for a in sub._actions
               if a.option_strings and not isinstance(a, argparse._HelpAction) and not (a.help or "").strip()]
    assert not missing, missing


def test_bench_has_one_batch_option():
    bench = dict(_subparsers(build_parser()))["bench"]
    options = {o for a in bench._actions for o in a.option_strings}
    assert "--batch-sizes" in options and "--batch-size" not in options


def test_infer_on_a_missing_folder_says_not_found(tmp_path, capsys):
    assert main(["infer", "--inputs", str(tmp_path / "nope"), "--output", str(tmp_path / "o")]) == EXIT_BAD_INPUT
    assert f"{tmp_path / 'nope'}: input folder not found" in capsys.readouterr().err


def test_the_recorded_pycocotools_version_is_the_installed_one():
    assert library_versions()["pycocotools"] == version("pycocotools") != "?"


def test_the_cli_knows_the_library_defaults_it_repeats():
    """Two values the parser repeats so that building it imports neither onnx nor onnxruntime."""
    from m2det_impl.backends.ort.int8 import DEFAULT_CALIBRATION_IMAGES
    from m2det_impl.cli.commands.compare import PRECISION_MODE_CHOICES
    from m2det_impl.cli.common import DEFAULT_CALIBRATION_IMAGES as CLI_CALIBRATION_IMAGES
    from m2det_impl.precision.fp16 import PRECISION_MODES

    assert CLI_CALIBRATION_IMAGES == DEFAULT_CALIBRATION_IMAGES and PRECISION_MODE_CHOICES == PRECISION_MODES
