"""What `m2det run` tells a user about resumed, skipped and out-of-selection images.

The model is replaced by an all-background stand-in (tests/support.py): these
tests hold the orchestration's bookkeeping and messages, not a runtime.
"""

import json
import shutil

import pytest
from support import fake_backend_factory

from m2det_impl.cli import main
from m2det_impl.exit_codes import EXIT_OK
from m2det_impl.network.config import get_config
from m2det_impl.resources import MINI_COCO

pytestmark = pytest.mark.cpu


@pytest.fixture
def fake_model(monkeypatch):
    monkeypatch.setattr("m2det_impl.backends.spec.ModelSpec.create", fake_backend_factory(get_config(512)))


def _run(out, *extra):
    return main(["run", "--output", str(out), "--no-report", "--quiet", *extra])


def test_a_smaller_limit_resumes_what_it_needs_and_says_what_it_leaves_out(tmp_path, fake_model, capsys):
    out = tmp_path / "r"
    assert _run(out, "--limit", "3") == EXIT_OK
    capsys.readouterr()
    assert _run(out, "--limit", "2") == EXIT_OK
    captured = capsys.readouterr()
    assert "resuming: 2 of 2 images already done" in captured.err
    assert "note: 1 image(s) journaled" in captured.err and "left out of results.json" in captured.err
    assert "2 images (2 resumed)" in captured.out
    assert json.loads((out / "summary.json").read_text())["num_images"] == 2


def test_a_skipped_image_is_not_counted_as_done(tmp_path, fake_model, capsys):
    root = tmp_path / "coco"
    shutil.copytree(MINI_COCO, root)
    victim = sorted((root / "val2014").glob("*.jpg"))[0]
    victim.write_bytes(victim.read_bytes()[:100])  # a truncated JPEG
    assert _run(tmp_path / "r", "--coco-root", str(root), "--limit", "3", "--skip-bad") == EXIT_OK
    captured = capsys.readouterr()
    assert "2 images (0 resumed), 1 skipped" in captured.out
    assert "skipped image" in captured.err and victim.name in captured.err
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["num_images"] == 3 and len(summary["skipped"]) == 1  # the skipped image scores as a miss


def test_no_lock_file_stays_after_a_finished_run(tmp_path, fake_model):
    assert _run(tmp_path / "r", "--limit", "1") == EXIT_OK
    assert not list((tmp_path / "r").glob("*.lock"))
