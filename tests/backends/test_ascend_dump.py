"""The Ascend dump reader, file names and folders, the atc JSON fusion map and the acl.json writer.

Dump files come from the test-side encoder (tests/ascend_dumps.py: the wire
format by hand, from CANN's field numbers), never from the reader's schema.
"""

from __future__ import annotations

import json
import re
import struct

import numpy as np
import pytest

from m2det_impl.backends.ascend.acl_json import acl_dump_config, write_acl_json
from m2det_impl.backends.ascend.dump_format import DumpData, find_dump_files, parse_dump_name, read_dump
from m2det_impl.backends.ascend.om_json import read_fusion_map
from m2det_impl.errors import InputFileError
from tests.ascend_dumps import (
    DT_FLOAT,
    DT_FLOAT16,
    NC1HWC0,
    NCHW,
    ND,
    Tensor,
    encode_dump,
    write_dump,
)

pytestmark = pytest.mark.cpu


def _values(shape, seed=0) -> np.ndarray:
    """Distinct fp16-exact values, so any misplaced element shows."""
    count = int(np.prod(shape))
    return (np.random.default_rng(seed).permutation(count).reshape(shape) / 8 - count / 16).astype(np.float16).astype(np.float32)


@pytest.mark.parametrize("channels", [1, 16, 20, 33])
def test_nc1hwc0_fp16_reads_back_as_nchw_without_the_padding(tmp_path, channels):
    a = _values((1, channels, 3, 5))
    path = tmp_path / "f"
    path.write_bytes(encode_dump("op", [Tensor.of(a, NC1HWC0, DT_FLOAT16, "Relu_3", 0)]))
    [out] = read_dump(path).outputs
    assert out.shape == (1, -(-channels // 16), 3, 5, 16) and out.original_shape == (1, channels, 3, 5)
    assert out.original_name == "Relu_3" and out.original_index == 0
    np.testing.assert_array_equal(out.to_nchw(), a)


def test_nc1hwc0_without_original_shape_takes_the_onnx_shape(tmp_path):
    a = _values((2, 20, 4, 3))
    path = tmp_path / "f"
    path.write_bytes(encode_dump("op", [Tensor.of(a, NC1HWC0, DT_FLOAT16, with_original_shape=False)]))
    [out] = read_dump(path).outputs
    np.testing.assert_array_equal(out.to_nchw(a.shape), a)
    with pytest.raises(InputFileError, match="needs the original NCHW shape"):
        out.to_nchw()


@pytest.mark.parametrize("fmt,dtype", [(NCHW, DT_FLOAT), (NCHW, DT_FLOAT16), (ND, DT_FLOAT), (ND, DT_FLOAT16)])
def test_nchw_and_nd_in_float_and_float16(tmp_path, fmt, dtype):
    a = _values((1, 7, 3, 2))
    path = tmp_path / "f"
    path.write_bytes(encode_dump("op", [Tensor.of(a, fmt, dtype)]))
    [out] = read_dump(path).outputs
    np.testing.assert_array_equal(out.to_nchw(), a)


def test_inputs_come_before_outputs_and_the_header_fields_are_cann_s(tmp_path):
    x, y, z = _values((1, 2, 2, 2), 1), _values((1, 3, 1, 1), 2), _values((1, 1, 2, 1), 3)
    path = tmp_path / "Conv2D.a_b.7.2.123"
    path.write_bytes(encode_dump("a/b", [Tensor.of(y, NCHW, DT_FLOAT, "Conv_1", 1), Tensor.of(z)],
                                 [Tensor.of(x, NC1HWC0, DT_FLOAT16)], version="2.0"))
    dump = read_dump(path)
    assert (dump.op_name, dump.op_type, dump.version) == ("a/b", "Conv2D", "2.0")
    assert [t.kind for t in dump.inputs + dump.outputs] == ["input", "output", "output"]
    np.testing.assert_array_equal(dump.inputs[0].to_nchw(), x)
    np.testing.assert_array_equal(dump.outputs[0].to_nchw(), y)
    np.testing.assert_array_equal(dump.outputs[1].to_nchw(), z)
    assert dump.outputs[0].original_index == 1 and dump.outputs[1].original_name == ""
    # the schema itself: CANN's message and field numbers
    fields = {f.name: f.number for f in DumpData.DESCRIPTOR.fields}
    assert fields == {"version": 1, "dump_time": 2, "output": 3, "input": 4, "buffer": 5, "op_name": 6, "attr": 7,
                      "space": 8}
    output = DumpData.DESCRIPTOR.fields_by_name["output"].message_type
    assert {f.name: f.number for f in output.fields} == {
        "data_type": 1, "format": 2, "shape": 3, "original_op": 4, "data": 5, "size": 6, "original_shape": 7,
        "sub_format": 8, "address": 9, "dim_range": 10, "offset": 11}
    assert DumpData.DESCRIPTOR.full_name == "toolkit.dumpdata.DumpData"


def _good(tmp_path):
    path = tmp_path / "Conv2D.c.1.2.3"
    path.write_bytes(encode_dump("c", [Tensor.of(_values((1, 20, 2, 2)), NC1HWC0, DT_FLOAT16, "Relu_0")]))
    return path


@pytest.mark.parametrize("case,message", [
    ("empty", "truncated dump file: 0 bytes, shorter than the 8-byte header length"),
    ("seven bytes", "truncated dump file: 7 bytes"),
    ("header length past the file", r"header length 100000 runs past the end of the file \(\d+ bytes follow"),
    # one byte of data read as header: a parse error or, by chance, a size mismatch; refused either way
    ("header length one too long", "is not a DumpData message|data sizes in the header"),
    ("header length one too short", "is not a DumpData message"),
    ("header not protobuf", "is not a DumpData message"),
    ("sizes overrun the file", "overrun the file"),
    ("bytes after the data", "leave bytes unaccounted for"),
])
def test_malformed_files_are_refused_naming_the_file(tmp_path, case, message):
    path = _good(tmp_path)
    blob = path.read_bytes()
    (length,) = struct.unpack_from("<Q", blob)
    edit = {
        "empty": lambda: b"",
        "seven bytes": lambda: blob[:7],
        "header length past the file": lambda: struct.pack("<Q", 100000) + blob[8:],
        "header length one too long": lambda: struct.pack("<Q", length + 1) + blob[8:],
        "header length one too short": lambda: struct.pack("<Q", length - 1) + blob[8:],
        "header not protobuf": lambda: struct.pack("<Q", 4) + b"\xff\xff\xff\xff" + blob[8:],
        "sizes overrun the file": lambda: blob[:-1],
        "bytes after the data": lambda: blob + b"\0",
    }[case]
    path.write_bytes(edit())
    with pytest.raises(InputFileError) as info:
        read_dump(path)
    text = str(info.value)
    assert text.startswith(f"{path}: ") and re.search(message, text) and "\n" not in text, text


def test_the_header_length_is_little_endian(tmp_path):
    path = _good(tmp_path)
    blob = path.read_bytes()
    (length,) = struct.unpack_from("<Q", blob)
    path.write_bytes(struct.pack(">Q", length) + blob[8:])
    with pytest.raises(InputFileError, match="runs past the end"):
        read_dump(path)


@pytest.mark.parametrize("edit,message", [
    (lambda t: setattr(t, "data_type", 3), "data type DT_INT8 is not supported"),
    (lambda t: setattr(t, "data_type", 0), "data type DT_UNDEFINED is not supported"),
    (lambda t: setattr(t, "format", 29), "format FORMAT_FRACTAL_NZ is not supported"),
    (lambda t: setattr(t, "format", 4), "format FORMAT_FRACTAL_Z is not supported"),
    (lambda t: setattr(t, "format", 201), "format unknown (201) is not supported"),
    (lambda t: setattr(t, "shape", [1, 2, 2, 2, 8]), "needs 128 bytes, the header's size is 256"),
    (lambda t: setattr(t, "original_shape", [1, 40, 2, 2]), "does not hold NCHW [1, 40, 2, 2]"),
    (lambda t: setattr(t, "original_shape", [1, 20, 2, 3]), "does not hold NCHW"),
    (lambda t: setattr(t, "shape", [1, 2, 2, 32]), "needs a 5-d shape"),
])
def test_values_that_cannot_be_converted_are_refused(tmp_path, edit, message):
    tensor = Tensor.of(_values((1, 20, 2, 2)), NC1HWC0, DT_FLOAT16)
    edit(tensor)
    path = tmp_path / "f"
    path.write_bytes(encode_dump("op", [tensor]))
    [out] = read_dump(path).outputs  # the file itself is sound
    with pytest.raises(InputFileError) as info:
        out.check()
        out.to_nchw()
    assert str(info.value).startswith(f"{path}: output 0: ") and message in str(info.value), str(info.value)


# ------------------------------------------------------------------ names and folders
def test_dump_file_names():
    assert parse_dump_name("Conv2D._unet1_layers_layers_0_conv_Conv.12.2.1700000000123456") == (
        parse_dump_name("Conv2D._unet1_layers_layers_0_conv_Conv.12.2.1700000000123456.4.1.0.0"))
    name = parse_dump_name("Conv2D.conv1_Relu.12.2.1700000000123456")
    assert (name.op_type, name.op_name, name.task_id, name.stream_id, name.timestamp) == (
        "Conv2D", "conv1_Relu", 12, 2, 1700000000123456)
    assert parse_dump_name("Add.a.b.c.3.4.5").op_name == "a.b.c"  # an old dump that kept the dots
    for other in ("acl.json", "Conv2D.conv1.12.2.1700000000123456.output.0.npy", "Conv2D.x.1.2", "readme",
                  ".1.2.3.4", "Conv2D..1.2.3"):
        assert parse_dump_name(other) is None, other


def test_one_iteration_is_found_in_execution_order_and_two_are_refused(tmp_path):
    a = Tensor.of(_values((1, 1, 1, 2)))
    late = write_dump(tmp_path, "Add", "late/op", [a], task=1, timestamp=20)
    early = write_dump(tmp_path, "Add", "early.op", [a], task=2, timestamp=10)
    (early.parent / "Add.early_op.2.2.10.output.0.npy").write_bytes(b"converted copy")
    assert find_dump_files(tmp_path) == [early, late]
    assert read_dump(late).op_name == "late/op"  # the header keeps what the file name sanitised
    write_dump(tmp_path, "Add", "again", [a], task=1, timestamp=30, iteration=1)
    with pytest.raises(InputFileError, match="dump files of 2 iterations or models"):
        find_dump_files(tmp_path)
    with pytest.raises(InputFileError, match="dump folder not found"):
        find_dump_files(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputFileError, match="no dump files"):
        find_dump_files(tmp_path / "empty")


# ------------------------------------------------------------------ atc JSON
def test_fusion_map_of_an_atc_json(tmp_path):
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"graph": [{"name": "g", "op": [
        {"name": "Conv_0Relu_1", "type": "Conv2D", "id": 3, "attr": [
            {"key": "_datadump_original_op_names", "value": {"list": {"val_type": 1, "s": ["Conv_0", "Relu_1"]}}}],
         "output_desc": [{"dtype": "DT_FLOAT16", "attr": [
             {"key": "_datadump_origin_name", "value": {"s": "Relu_1"}},
             {"key": "_datadump_origin_output_index", "value": {"i": 0}}]}]},
        {"name": "trans_TransData_2", "type": "TransData", "output_desc": [{"attr": []}]},
        {"name": "Split_4", "type": "SplitD", "output_desc": [{"attr": [
            {"key": "_datadump_origin_name", "value": {"s": "Split_4"}}]}, {"attr": [
            {"key": "_datadump_origin_name", "value": {"s": "Split_4"}},
            {"key": "_datadump_origin_output_index", "value": {"i": 1}}]}]},
    ]}]}))
    ops = read_fusion_map(path)
    assert ops["Conv_0Relu_1"].original_names == ("Conv_0", "Relu_1")
    assert ops["Conv_0Relu_1"].outputs == (("Relu_1", 0),)
    assert ops["trans_TransData_2"].original_names == () and ops["trans_TransData_2"].outputs == (("", 0),)
    assert ops["Split_4"].outputs == (("Split_4", 0), ("Split_4", 1))
    path.write_text(json.dumps({"op": []}))
    with pytest.raises(InputFileError, match="no 'graph' list"):
        read_fusion_map(path)


# ------------------------------------------------------------------ acl.json
def test_acl_json_is_the_one_ais_bench_writes_for_dump(tmp_path):
    out = tmp_path / "result"
    path = write_acl_json(out, "/models/m2det_bs1.om")
    assert path == out / "acl.json" and (out / "dump").is_dir()
    data = json.loads(path.read_text())
    assert data == {"dump": {"dump_list": [{"model_name": "m2det_bs1"}], "dump_mode": "all",
                             "dump_path": str(out / "dump")}}
    # ais_bench: json.dump(indent=4, separators=(", ", ": "), sort_keys=True)
    assert path.read_text() == json.dumps(data, indent=4, separators=(", ", ": "), sort_keys=True)
    assert acl_dump_config("a/m2det.v2.om", "d")["dump"]["dump_list"] == [{"model_name": "m2det"}]
