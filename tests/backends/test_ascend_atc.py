"""atc, the Ascend runtime's build step (m2det_impl/backends/ascend/atc.py): the op census of the
exports against what atc documents for opset 11, the atc command lines, and the build script that
travels with its models (reference section 9).

The full exports come from the session cache (tests/conftest.py); the small graphs built here
exercise the census on cases the M2Det export does not contain.
"""

from __future__ import annotations

import os
import shlex
import stat
import subprocess
from pathlib import Path

import pytest
from onnx import TensorProto, helper
from support import decoder_sums

from m2det_impl.backends.ascend.atc import (
    atc_census,
    atc_command,
    load_atc_support,
    write_atc_script,
)
from m2det_impl.published import GUIDE_BATCH_SIZES

pytestmark = pytest.mark.cpu


# ------------------------------------------------------------------ census
def test_atc_op_list_is_documented():
    support = load_atc_support()
    assert support.opset == 11
    assert "hiascend.com" in support.source
    # ops this network needs, all on CANN's page; ops it must not rely on, absent
    assert {"Conv", "Relu", "MaxPool", "Concat", "Resize", "Add", "Reshape", "Transpose",
            "Softmax", "BatchNormalization", "Constant"} <= support.ops
    assert not {"Loop", "Scan", "GridSample", "Einsum"} & support.ops


# M2Det512 at static batch 1 (what every deployment builds first) and the reduced network at batch 3 (a static
# batch above 1 folded by the same exporter; support.SMALL_CONFIG_FILE), as tests/network/test_export.py holds them
@pytest.mark.parametrize("model_name, batch, cfg_fixture", [pytest.param("golden", 1, "cfg512", id="512-static1"),
                                                            pytest.param("small", 3, "small_cfg", id="small-static3")])
def test_static_export_passes_the_atc_census(request, model_name, batch, cfg_fixture):
    record = request.getfixturevalue(f"{model_name}_export")(batch)
    cfg = request.getfixturevalue(cfg_fixture)
    report = atc_census(record.path)
    assert report.ok, report.summary()
    # 8 TUMs x 5 decoder upsamplings + the up_reduce upsampling (reference section 2)
    assert report.counts["Resize"] == decoder_sums(cfg) + 1 == (41 if model_name == "golden" else 11)
    assert report.counts["Softmax"] == 1


def test_census_flags_the_dynamic_export_resizes(golden_export):
    """CANN needs constant Resize sizes; the dynamic export computes them."""
    report = atc_census(golden_export(None).path)
    assert not report.ok
    assert sum("Resize" in v and "constant sizes" in v for v in report.violations) == 40


def test_census_flags_unsupported_ops_and_opsets():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    node = helper.make_node("Scan", ["x"], ["y"])
    graph = helper.make_graph([node], "g", [x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    report = atc_census(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))
    assert report.unsupported == {"Scan": 1}
    assert any("opset 13" in v for v in report.violations)
    assert "Scan x1" in report.summary()


# ------------------------------------------------------------------ atc
def test_atc_command_is_the_guides_command_without_out_nodes():
    assert atc_command("/models/m2det512_bs4.onnx", 4) == (
        "atc --framework=5 --model=/models/m2det512_bs4.onnx --input_format=NCHW "
        "--input_shape=image:4,3,512,512 --output=/models/m2det512_bs4 --log=error "
        "--soc_version=Ascend310P3"
    )
    assert "--output=/models/m2det512_bs16 " in atc_command("/models/m2det512.onnx", 16)
    assert atc_command("a b.onnx", 1, soc_version="Ascend310P1", output="out/m") == (
        "atc --framework=5 '--model=a b.onnx' --input_format=NCHW --input_shape=image:1,3,512,512 "
        "--output=out/m --log=error --soc_version=Ascend310P1"
    )


@pytest.mark.parametrize("batch", [0, -2, 1.5])
def test_atc_command_needs_a_static_batch(batch):
    with pytest.raises(ValueError, match="static-batch"):
        atc_command("m.onnx", batch)


def test_atc_script_covers_the_guides_batch_sizes(tmp_path):
    assert GUIDE_BATCH_SIZES == (1, 4, 8, 16, 32)
    files = {b: tmp_path / f"m2det512_bs{b}.onnx" for b in GUIDE_BATCH_SIZES}
    script = write_atc_script(tmp_path / "build.sh", files)
    lines = script.read_text().splitlines()
    commands = [ln for ln in lines if ln.startswith("atc ")]
    assert [c.split("--input_shape=image:")[1].split(",")[0] for c in commands] == ["1", "4", "8", "16", "32"]
    assert all(f'--model="$HERE"/m2det512_bs{b}.onnx' in c for b, c in zip(GUIDE_BATCH_SIZES, commands))
    assert "set -euo pipefail" in lines
    assert script.stat().st_mode & stat.S_IXUSR
    with pytest.raises(ValueError, match="batch 4"):
        write_atc_script(tmp_path / "x.sh", {1: files[1]})
    assert os.path.exists(script)


@pytest.mark.parametrize("kind", ["static", "dynamic"])
def test_atc_script_finds_its_models_beside_itself_from_any_folder(tmp_path, monkeypatch, kind):
    """Issue 20: the models/ folder copied to the 310P host must build there, run from any working directory
    (the second trial: the dynamic-batch line named the models by absolute laptop paths). A stand-in
    ``atc`` on PATH records the model and output it was given; the folder is moved after writing."""
    from m2det_impl.backends.ascend.atc import write_build_files

    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    name = "m2det512_bs1" if kind == "static" else "m2det512"
    (tmp_path / "models" / f"{name}.onnx").write_bytes(b"onnx")
    if kind == "static":
        write_atc_script("models/atc_build.sh", {1: "models/m2det512_bs1.onnx"}, batches=(1,))
    else:
        monkeypatch.setattr("m2det_impl.backends.ascend.atc.atc_census", lambda path: _CleanCensus())
        write_build_files({None: Path("models/m2det512.onnx")}, Path("models"), dynamic_batches=(1, 4))
    moved = tmp_path / "elsewhere" / "models copy"
    moved.parent.mkdir()
    (tmp_path / "models").rename(moved)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "atc-args.txt"
    (bin_dir / "atc").write_text(f'#!/usr/bin/env bash\nprintf "%s\\n" "$@" >> {shlex.quote(str(record))}\n')
    (bin_dir / "atc").chmod(0o755)
    other = tmp_path / "somewhere-else"
    other.mkdir()
    done = subprocess.run(["bash", str(moved / "atc_build.sh")], cwd=other, capture_output=True, text=True,
                          env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}, timeout=60)
    assert done.returncode == 0, done.stderr
    args = record.read_text().splitlines()
    output = "m2det512_bs1" if kind == "static" else "m2det512_dynbs"
    assert f"--model={moved / f'{name}.onnx'}" in args
    assert f"--output={moved / output}" in args


class _CleanCensus:
    """A census with nothing to report (the file above is not a real ONNX model)."""

    violations: tuple = ()
    unsupported: tuple = ()
    ok = True

    def summary(self) -> str:
        return "no Resize"


def test_a_dynamic_batch_line_over_a_flagged_export_says_so(tmp_path, monkeypatch):
    """The re-trial: the dynamic-batch route wrote its atc line for an export the census flags 40 times,
    and said so only as a count. The script is still written (atc may fold the sizes per gear; no 310P
    has confirmed either way), with a warning naming the static route."""
    from m2det_impl.backends.ascend.atc import write_build_files

    class Flagged(_CleanCensus):
        violations = ("Resize /unet1/Resize: inputs are computed", "Resize /unet2/Resize: inputs are computed")
        ok = False

    monkeypatch.setattr("m2det_impl.backends.ascend.atc.atc_census", lambda path: Flagged())
    (tmp_path / "m2det512.onnx").write_bytes(b"onnx")
    lines = write_build_files({None: tmp_path / "m2det512.onnx"}, tmp_path, dynamic_batches=(1, 4))
    warning = [line for line in lines if line.startswith("WARNING")]
    assert len(warning) == 1 and "flags 2 times" in warning[0] and "--batch 1 --batch 4" in warning[0]
    assert "--dynamic_batch_size=1,4" in (tmp_path / "atc_build.sh").read_text()
