"""Every markdown table the package writes is read back by a real markdown parser (markdown-it-py,
GFM tables): each table-looking line belongs to a parsed table, and each row has its header's cell
count (a row of 8 cells over a separator of 7 renders as a paragraph of pipes). The figures bench
writes in its markdown are the ones it prints and records.
"""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import pytest
from markdown_it import MarkdownIt
from markdown_it.rules_block.table import escapedSplit
from support import fake_backend_factory

from m2det_impl.cli import main
from m2det_impl.exit_codes import EXIT_OK
from m2det_impl.network.config import get_config

pytestmark = pytest.mark.cpu

_MD = MarkdownIt("commonmark").enable("table")


def _cells(line: str) -> int:
    line = line.strip()
    line = line[1:] if line.startswith("|") else line
    line = line[:-1] if line.endswith("|") and not line.endswith("\\|") else line
    return len(escapedSplit(line))


def assert_tables_well_formed(text: str, what: str) -> int:
    """Every line starting with ``|`` (outside code fences) lies in a table the parser found,
    and each of that table's rows has the header's cell count; returns the number of tables."""
    lines = text.splitlines()
    tokens = _MD.parse(text)
    in_tables, fenced = set(), set()
    tables = 0
    header = None
    for token in tokens:
        if token.type == "table_open":
            tables += 1
            in_tables.update(range(*token.map))
            header = None
        elif token.type == "fence" and token.map:
            fenced.update(range(*token.map))
        elif token.type == "tr_open":
            row = lines[token.map[0]]
            if header is None:
                header = _cells(row)
                separator = lines[token.map[0] + 1]
                assert _cells(separator) == header, f"{what}: separator {separator!r} under header {row!r}"
            else:
                assert _cells(row) == header, f"{what}: row {row!r} has {_cells(row)} cells, the header {header}"
    stray = [line for i, line in enumerate(lines)
             if line.lstrip().startswith("|") and i not in in_tables and i not in fenced]
    assert not stray, f"{what}: lines that look like a table but do not parse as one: {stray[:3]}"
    return tables


def _bench_data() -> dict:
    row = {"batch_size": 1, "images_per_second": 0.46, "wall_clock_images_per_second": 0.45,
           "median_s_per_batch": 2.2}
    return {"backend": "onnxruntime", "size": 512, "machine": {"cpu": "x", "cores": 2},
            "weights": {"kind": "golden"},
            "inference": [row, {**row, "batch_size": 4}],
            "end_to_end": [{"batch_size": 1, "images": 2, "images_per_second": 0.3, "pure_images_per_second": 0.29,
                            "ratio": 0.97, "host": "processes", "results_dicts_s": [0.1],
                            "with_dicts_images_per_second": 0.29}],
            "versus": {"backend": "onnxruntime (versus)", "inference": [row, {**row, "batch_size": 4}],
                       "speed_ratio": {"1": 1.0, "4": 1.1}},
            "host": {"images": 10, "images_per_second": 100.0}}


def test_bench_markdown_tables_parse():
    from m2det_impl.gating.bench_report import bench_markdown

    assert assert_tables_well_formed(bench_markdown(_bench_data()), "bench.md") == 2


@pytest.fixture
def fake_model(monkeypatch):
    monkeypatch.setattr("m2det_impl.backends.spec.ModelSpec.create", fake_backend_factory(get_config(512)))


def test_report_compare_and_regress_markdown_tables_parse(tmp_path, fake_model):
    runs = []
    for name in ("a", "b"):
        runs.append(tmp_path / name)
        assert main(["run", "--limit", "1", "--output", str(runs[-1]), "--quiet"]) == EXIT_OK
        assert_tables_well_formed((runs[-1] / "report.md").read_text(), f"{name}/report.md")
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps(_bench_data()))
    assert main(["report", str(runs[0]), str(runs[1]), "--bench", str(bench), "--output", str(tmp_path / "rep")]) == 0
    text = (tmp_path / "rep" / "report.md").read_text()
    assert assert_tables_well_formed(text, "report.md") >= 3
    # two runs of one backend and batch size are told apart
    rows = [line for line in text.splitlines() if line.startswith("| ") and "onnxruntime | 1 |" in line]
    assert len(rows) == 2 and rows[0] != rows[1]

    assert main(["compare", str(runs[0]), str(runs[1]), "--output", str(tmp_path / "cmp")]) == 0
    assert_tables_well_formed((tmp_path / "cmp" / "compare.md").read_text(), "compare.md")

    current = tmp_path / "current.json"
    assert main(["collect", "--run", str(runs[0]), "--output", str(current)]) == 0
    from m2det_impl.resources import BASELINES_DIR

    baseline = BASELINES_DIR / "cpu-x86_64-2core.json"
    main(["regress", "--baseline", str(baseline), "--current", str(current), "--output", str(tmp_path / "reg")])
    assert assert_tables_well_formed((tmp_path / "reg" / "regress.md").read_text(), "regress.md") >= 1


def test_drift_markdown_tables_parse():
    from m2det_impl.precision.drift import drift_markdown

    dump = SimpleNamespace(format_name="FORMAT_NCHW", data_type_name="DT_FLOAT16")
    match = SimpleNamespace(node="/conv/Conv", op_type="Conv", dump_op="conv_relu", dump=dump)
    node = SimpleNamespace(depth=1, match=match, cosine=0.9999, max_abs=1e-3, max_rel=1e-2, rel_l2=1e-3,
                           bound=SimpleNamespace(value=1e-2), forecast_rel_l2=1e-3, passed=True)
    unmatched = SimpleNamespace(op_name="x", op_type="Cast", output=0, file="a.dump", reason="no ONNX node")
    report = SimpleNamespace(first_divergent=None, nodes=[node], unmatched=[unmatched], mode="force_fp16",
                             bounds=SimpleNamespace(floor=1e-3, margin=3.0))
    assert assert_tables_well_formed(drift_markdown(report, "drift.png"), "drift.md") == 2


def test_bench_prints_the_figures_its_markdown_and_json_hold(tmp_path, capsys):
    out = tmp_path / "bench"
    assert main(["bench", "--backend", "simulated-npu", "--sim-ms-per-image", "1", "--limit", "2", "--repeats", "1",
                 "--warmup", "0", "--host-images", "1", "--output", str(out), "--quiet"]) == EXIT_OK
    captured = capsys.readouterr()
    text = (out / "bench.md").read_text()
    assert_tables_well_formed(text, "bench.md")
    data = json.loads((out / "bench.json").read_text())
    row = next(line for line in text.splitlines() if line.startswith("| 1 |"))
    e2e = data["end_to_end"][0]
    for key in ("images_per_second", "pure_images_per_second"):
        assert f"{e2e[key]:.3f}" in row, (key, row)
    console = next(line for line in captured.err.splitlines() if line.startswith("batch 1: end to end"))
    for figure in re.findall(r"(\d+\.\d+) img/s", console):
        assert f"| {figure} |" in row, (figure, console, row)
