"""Every command checks where it will write before it works, and creates missing folders the same way."""

import json

import pytest

from m2det_impl.cli import main
from m2det_impl.exit_codes import EXIT_BAD_INPUT

pytestmark = pytest.mark.cpu


def test_bench_refuses_an_unwritable_output_before_measuring(tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    measured = []
    monkeypatch.setattr("m2det_impl.backends.spec.ModelSpec.create", lambda *a, **k: measured.append(1))
    assert main(["bench", "--output", str(blocker / "bench"), "--quiet"]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert f"{blocker / 'bench'}: output folder is not writable" in err and not measured


def test_evaluate_refuses_an_unwritable_results_file_before_decoding(tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    decoded = []
    monkeypatch.setattr("m2det_impl.pipeline.evaluate.results_from_outputs", lambda *a, **k: decoded.append(1))
    code = main(["evaluate", "--outputs", str(tmp_path), "--annotations", str(tmp_path / "ann.json"),
                 "--results", str(blocker / "r.json"), "--summary", str(tmp_path / "s.json")])
    assert code == EXIT_BAD_INPUT and not decoded
    assert f"{blocker}: output folder is not writable" in capsys.readouterr().err


def test_report_creates_a_missing_output_folder(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.json").write_text(json.dumps({"ap": 0.25, "identity": {"backend": "onnxruntime"},
                                                  "num_images": 1, "dataset": "test set"}))
    out = tmp_path / "new" / "report"
    assert main(["report", str(run), "--output", str(out)]) == 0
    assert "| test set | 0.2500 |" in (out / "report.md").read_text()
