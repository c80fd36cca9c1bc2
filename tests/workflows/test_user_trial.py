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


def test_bench_json_records_the_weights(tmp_path):
    out = tmp_path / "bench"
    assert main(["bench", "--backend", "simulated-npu", "--sim-ms-per-image", "0", "--limit", "1", "--repeats", "1",
                 "--warmup", "0", "--no-end-to-end", "--host-images", "1", "--output", str(out), "--quiet"]) == EXIT_OK
    assert json.loads((out / "bench.json").read_text())["weights"] == {"kind": "none"}
    assert "Weights: none" in (out / "bench.md").read_text()
