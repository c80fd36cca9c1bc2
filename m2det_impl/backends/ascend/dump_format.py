"""The dump files CANN writes for ``ais_bench --dump`` (an ``acl.json`` with ``dump_mode: all``), read.

Why here: the device's own dump is the only place the 310P says what each of
its fused operators computed; ``m2det drift`` (precision.drift) compares it
layer by layer with ONNX Runtime. This module only reads the files and turns
their device layouts into NCHW arrays; it knows nothing about ONNX.

One file per executed operator, named
``{op_type}.{op_name}.{task_id}.{stream_id}.{timestamp}`` (newer runtimes
append ``.{FFTS+ tag}.{context}.{thread}.{device}``), under
``{dump_path}/{time}/{device}/{model}/{model_id}/{iteration}/``. The runtime
replaces every space, dot, slash and backslash of the op type and op name by
``_`` in the file name, so the name splits on dots unambiguously; the header
keeps the real op name.

A file is (CANN's ``toolkit.dumpdata`` schema, proto3, checked against
Ascend/tools' ``msaicerr/ms_interface/dump_data_pb2.py`` and the runtime's
``dump_task.cpp``; no code copied):

- a little-endian uint64: the length of the header;
- the header, a serialised ``DumpData`` message (``version`` 1, ``dump_time``
  2, ``output`` 3, ``input`` 4, ``buffer`` 5, ``op_name`` 6, ``attr`` 7,
  ``space`` 8) whose tensors carry a ``size`` but no data;
- the raw bytes of every input, then every output, then every buffer and
  workspace, each ``size`` bytes; nothing else (the runtime's own parser
  refuses a file whose sizes do not add up to its length, and so do we).

The schema is built here as a descriptor in Python (``descriptor_pb2``), in a
private pool, so it needs only the ``protobuf`` package onnx brings in, no
``protoc``, and cannot clash with an Ascend wheel that registers the same
message names. It is proto3 as CANN's is: an enum value this schema does not
name (a format from a newer CANN) stays a number and is refused by name,
never read as the default NCHW.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError

from m2det_impl._io import PathLike
from m2det_impl.errors import InputFileError

__all__ = [
    "DATA_TYPES",
    "FORMATS",
    "FORMAT_NCHW",
    "FORMAT_ND",
    "FORMAT_NC1HWC0",
    "DT_FLOAT",
    "DT_FLOAT16",
    "DumpData",
    "DumpTensor",
    "DumpFile",
    "DumpName",
    "parse_dump_name",
    "read_dump",
    "read_dumps",
    "find_dump_files",
]

log = logging.getLogger(__name__)

#: ``OutputDataType`` values (CANN's numbering); only float and float16 convert.
DATA_TYPES: Dict[int, str] = {
    0: "DT_UNDEFINED", 1: "DT_FLOAT", 2: "DT_FLOAT16", 3: "DT_INT8", 4: "DT_UINT8", 5: "DT_INT16",
    6: "DT_UINT16", 7: "DT_INT32", 8: "DT_INT64", 9: "DT_UINT32", 10: "DT_UINT64", 11: "DT_BOOL",
    12: "DT_DOUBLE", 13: "DT_STRING", 14: "DT_DUAL_SUB_INT8", 15: "DT_DUAL_SUB_UINT8", 16: "DT_COMPLEX64",
    17: "DT_COMPLEX128", 18: "DT_QINT8", 19: "DT_QINT16", 20: "DT_QINT32", 21: "DT_QUINT8", 22: "DT_QUINT16",
    23: "DT_RESOURCE", 24: "DT_STRING_REF", 25: "DT_DUAL",
}
#: ``OutputFormat`` values the schema names (CANN's numbering; the rest stay numbers).
FORMATS: Dict[int, str] = {
    0: "FORMAT_NCHW", 1: "FORMAT_NHWC", 2: "FORMAT_ND", 3: "FORMAT_NC1HWC0", 4: "FORMAT_FRACTAL_Z",
    5: "FORMAT_NC1C0HWPAD", 6: "FORMAT_NHWC1C0", 7: "FORMAT_FSR_NCHW", 8: "FORMAT_FRACTAL_DECONV",
    9: "FORMAT_C1HWNC0", 10: "FORMAT_FRACTAL_DECONV_TRANSPOSE", 11: "FORMAT_FRACTAL_DECONV_SP_STRIDE_TRANS",
    12: "FORMAT_NC1HWC0_C04", 13: "FORMAT_FRACTAL_Z_C04", 14: "FORMAT_CHWN", 16: "FORMAT_HWCN",
    27: "FORMAT_NDHWC", 29: "FORMAT_FRACTAL_NZ", 30: "FORMAT_NCDHW", 32: "FORMAT_NDC1HWC0", 35: "FORMAT_NC",
}
DT_FLOAT, DT_FLOAT16 = 1, 2
FORMAT_NCHW, FORMAT_ND, FORMAT_NC1HWC0 = 0, 2, 3
_NUMPY_TYPES = {DT_FLOAT: np.dtype("<f4"), DT_FLOAT16: np.dtype("<f2")}
_HEADER_LENGTH = struct.Struct("<Q")  # little-endian uint64


# ------------------------------------------------------------------ the schema
def _schema() -> descriptor_pb2.FileDescriptorProto:
    """``toolkit.dumpdata`` as a FileDescriptorProto (field numbers and types as CANN's)."""
    F = descriptor_pb2.FieldDescriptorProto
    fd = descriptor_pb2.FileDescriptorProto(name="m2det_dump_data.proto", package="toolkit.dumpdata",
                                            syntax="proto3")
    for name, values in (("OutputDataType", DATA_TYPES), ("OutputFormat", {**FORMATS, 255: "FORMAT_MAX"}),
                         ("BufferType", {0: "L1"})):
        enum = fd.enum_type.add(name=name)
        for number, label in sorted(values.items()):
            enum.value.add(name=label, number=number)

    def message(name: str, fields: Sequence[Tuple[str, int, int, str, bool]]):
        msg = fd.message_type.add(name=name)
        for field_name, number, kind, type_name, repeated in fields:
            field = msg.field.add(name=field_name, number=number, type=kind,
                                  label=F.LABEL_REPEATED if repeated else F.LABEL_OPTIONAL)
            if type_name:
                field.type_name = f".toolkit.dumpdata.{type_name}"
        return msg

    enum_, msg_ = F.TYPE_ENUM, F.TYPE_MESSAGE
    message("OriginalOp", [("name", 1, F.TYPE_STRING, "", False), ("output_index", 2, F.TYPE_UINT32, "", False),
                           ("data_type", 3, enum_, "OutputDataType", False), ("format", 4, enum_, "OutputFormat", False)])
    message("Shape", [("dim", 1, F.TYPE_UINT64, "", True)])
    message("DimRange", [("dim_start", 1, F.TYPE_UINT64, "", False), ("dim_end", 2, F.TYPE_UINT64, "", False)])
    message("OpOutput", [("data_type", 1, enum_, "OutputDataType", False), ("format", 2, enum_, "OutputFormat", False),
                         ("shape", 3, msg_, "Shape", False), ("original_op", 4, msg_, "OriginalOp", False),
                         ("data", 5, F.TYPE_BYTES, "", False), ("size", 6, F.TYPE_UINT64, "", False),
                         ("original_shape", 7, msg_, "Shape", False), ("sub_format", 8, F.TYPE_INT32, "", False),
                         ("address", 9, F.TYPE_UINT64, "", False), ("dim_range", 10, msg_, "DimRange", True),
                         ("offset", 11, F.TYPE_UINT64, "", False)])
    message("OpInput", [("data_type", 1, enum_, "OutputDataType", False), ("format", 2, enum_, "OutputFormat", False),
                        ("shape", 3, msg_, "Shape", False), ("data", 4, F.TYPE_BYTES, "", False),
                        ("size", 5, F.TYPE_UINT64, "", False), ("original_shape", 6, msg_, "Shape", False),
                        ("sub_format", 7, F.TYPE_INT32, "", False), ("address", 8, F.TYPE_UINT64, "", False),
                        ("offset", 9, F.TYPE_UINT64, "", False)])
    message("OpBuffer", [("buffer_type", 1, enum_, "BufferType", False), ("data", 2, F.TYPE_BYTES, "", False),
                         ("size", 3, F.TYPE_UINT64, "", False)])
    message("OpAttr", [("name", 1, F.TYPE_STRING, "", False), ("value", 2, F.TYPE_STRING, "", False)])
    space = message("Workspace", [("type", 1, enum_, "Workspace.SpaceType", False),
                                  ("data", 2, F.TYPE_BYTES, "", False), ("size", 3, F.TYPE_UINT64, "", False)])
    space.enum_type.add(name="SpaceType").value.add(name="LOG", number=0)
    message("DumpData", [("version", 1, F.TYPE_STRING, "", False), ("dump_time", 2, F.TYPE_UINT64, "", False),
                         ("output", 3, msg_, "OpOutput", True), ("input", 4, msg_, "OpInput", True),
                         ("buffer", 5, msg_, "OpBuffer", True), ("op_name", 6, F.TYPE_STRING, "", False),
                         ("attr", 7, msg_, "OpAttr", True), ("space", 8, msg_, "Workspace", True)])
    return fd


_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(_schema())
#: The ``DumpData`` message class (a private pool: no clash with Ascend's own generated module).
DumpData = message_factory.GetMessageClass(_POOL.FindMessageTypeByName("toolkit.dumpdata.DumpData"))


# ------------------------------------------------------------------ tensors
def _name(table: Dict[int, str], value: int) -> str:
    return table.get(int(value), f"unknown ({int(value)})")


@dataclass(frozen=True)
class DumpTensor:
    """One dumped input or output: its header fields and its raw bytes (device layout)."""

    path: Path
    kind: str  # "input" or "output"
    index: int
    data_type: int
    format: int
    shape: Tuple[int, ...]
    original_shape: Tuple[int, ...]
    original_name: str  # the ONNX node this output stands for ("" if the header names none)
    original_index: int
    raw: bytes

    @property
    def format_name(self) -> str:
        """The device layout's name (``FORMAT_NC1HWC0``), or its number when unknown."""
        return FORMATS.get(self.format, str(self.format))

    @property
    def data_type_name(self) -> str:
        """The data type's name (``DT_FLOAT16``), or its number when unknown."""
        return DATA_TYPES.get(self.data_type, str(self.data_type))

    @property
    def where(self) -> str:
        return f"{self.kind} {self.index}"

    def describe(self) -> str:
        return (f"{self.where}: {_name(DATA_TYPES, self.data_type)}, {_name(FORMATS, self.format)}, "
                f"shape {list(self.shape)}")

    def _fail(self, problem: str) -> InputFileError:
        return InputFileError(self.path, f"{self.where}: {problem}")

    def check(self) -> None:
        """Refuse, before any work, a tensor :meth:`to_nchw` cannot convert (type, format, size)."""
        if int(self.format) not in (FORMAT_NCHW, FORMAT_ND, FORMAT_NC1HWC0):
            raise self._fail(f"format {_name(FORMATS, self.format)} is not supported (NCHW, ND and NC1HWC0 only)")
        if self.original_shape or int(self.format) != FORMAT_NC1HWC0:
            self.to_nchw()  # the header says all: convert once to prove it fits
        else:
            self.values()  # the layout is checked against the ONNX value's shape after the golden run

    def values(self) -> np.ndarray:
        """The raw bytes as a flat float32 array (float16 widened exactly)."""
        dtype = _NUMPY_TYPES.get(int(self.data_type))
        if dtype is None:
            raise self._fail(f"data type {_name(DATA_TYPES, self.data_type)} is not supported (float and "
                             "float16 only)")
        count = int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1
        if count * dtype.itemsize != len(self.raw):
            raise self._fail(f"shape {list(self.shape)} of {dtype.name} needs {count * dtype.itemsize} bytes, "
                             f"the header's size is {len(self.raw)}")
        return np.frombuffer(self.raw, dtype=dtype).astype(np.float32)

    def to_nchw(self, expected: Optional[Sequence[int]] = None) -> np.ndarray:
        """The tensor in the ONNX model's logical layout, float32.

        ``expected`` is the ONNX value's shape (from the model), used when the
        header carries no ``original_shape``; NC1HWC0 needs one of the two,
        because the channel count is padded up to a multiple of C0 on the
        device and only the original shape says how many channels are real.
        """
        logical = tuple(int(d) for d in (self.original_shape or expected or ()))
        values = self.values()
        fmt = int(self.format)
        if fmt == FORMAT_NC1HWC0:
            if len(self.shape) != 5:
                raise self._fail(f"NC1HWC0 data needs a 5-d shape [N, C1, H, W, C0], got {list(self.shape)}")
            n, c1, h, w, c0 = self.shape
            if len(logical) != 4:
                raise self._fail(f"NC1HWC0 data needs the original NCHW shape (header original_shape or the "
                                 f"ONNX value's shape), got {list(logical) or 'none'}")
            on, c, oh, ow = logical
            if (on, oh, ow) != (n, h, w) or c1 != -(-c // c0):
                raise self._fail(f"NC1HWC0 shape {list(self.shape)} does not hold NCHW {list(logical)} "
                                 f"(needs [{on}, ceil({c}/{c0})={-(-c // c0)}, {oh}, {ow}, {c0}])")
            blocks = values.reshape(n, c1, h, w, c0).transpose(0, 1, 4, 2, 3)  # N, C1, C0, H, W
            return np.ascontiguousarray(blocks.reshape(n, c1 * c0, h, w)[:, :c])
        if fmt in (FORMAT_NCHW, FORMAT_ND):
            target = logical or self.shape
            if int(np.prod(target, dtype=np.int64)) != values.size:
                raise self._fail(f"{_name(FORMATS, fmt)} data of shape {list(self.shape)} cannot be read as "
                                 f"{list(target)}")
            return values.reshape(target)
        raise self._fail(f"format {_name(FORMATS, fmt)} is not supported (NCHW, ND and NC1HWC0 only)")


@dataclass(frozen=True)
class DumpFile:
    """One dump file: the operator, its inputs and outputs."""

    path: Path
    op_name: str  # from the header (the real name); the file name's when the header has none
    op_type: str  # from the file name
    version: str
    inputs: Tuple[DumpTensor, ...]
    outputs: Tuple[DumpTensor, ...]


# ------------------------------------------------------------------ names and folders
@dataclass(frozen=True)
class DumpName:
    """The parts of a dump file's name."""

    op_type: str
    op_name: str  # with ' ', '.', '/', '\\' replaced by '_' (the runtime's rule)
    task_id: int
    stream_id: int
    timestamp: int


def parse_dump_name(name: str) -> Optional[DumpName]:
    """``{op_type}.{op_name}.{task}.{stream}.{timestamp}[...]``, or None for another file.

    The runtime sanitises both names, so the second dot ends the op name; an
    older dump with dots left in the name still parses, because the op name
    runs up to the first three consecutive numeric parts.
    """
    parts = name.split(".")
    for i in range(2, len(parts) - 2):
        if all(p.isdigit() for p in parts[i:i + 3]) and parts[0] and all(parts[1:i]):
            if not all(p.isdigit() for p in parts[i + 3:]):
                return None  # a converted copy (...output.0.npy) or something else that only looks like one
            return DumpName(parts[0], ".".join(parts[1:i]), int(parts[i]), int(parts[i + 1]), int(parts[i + 2]))
    return None


def find_dump_files(folder: PathLike) -> List[Path]:
    """The dump files of ONE inference under ``folder`` (any depth), in execution order (timestamp).

    Refuses a folder without dump files, and one holding several iterations
    or models (several folders with dump files): ais_bench with
    ``--warmup_count 0 --loop 1`` dumps exactly one; pick its folder otherwise.
    """
    root = Path(folder)
    if not root.is_dir():
        raise InputFileError(root, "dump folder not found")
    found: List[Tuple[Path, DumpName]] = []
    ignored = 0
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        parsed = parse_dump_name(path.name)
        if parsed is None:
            ignored += 1
            continue
        found.append((path, parsed))
    if not found:
        raise InputFileError(root, "no dump files named {op_type}.{op_name}.{task_id}.{stream_id}.{timestamp} "
                                   "here (an ais_bench --dump folder?)")
    parents = sorted({str(p.parent.relative_to(root)) for p, _ in found})
    if len(parents) > 1:
        shown = ", ".join(parents[:4]) + (", ..." if len(parents) > 4 else "")
        raise InputFileError(root, f"dump files of {len(parents)} iterations or models ({shown}): pass the folder "
                                   "of one (ais_bench --warmup_count 0 --loop 1 dumps a single inference)")
    if ignored:
        log.info("%s: %d files that are not dump files ignored", root, ignored)
    found.sort(key=lambda item: (item[1].timestamp, item[1].task_id, item[0].name))
    return [p for p, _ in found]


# ------------------------------------------------------------------ one file
def _shape(message) -> Tuple[int, ...]:
    return tuple(int(d) for d in message.dim)


def read_dump(path: PathLike) -> DumpFile:
    """Read one dump file; a malformed one is an :class:`InputFileError` naming the file and the problem."""
    path = Path(path)
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise InputFileError(path, f"cannot read the dump file ({exc.strerror or exc})") from None
    if len(blob) < _HEADER_LENGTH.size:
        raise InputFileError(path, f"truncated dump file: {len(blob)} bytes, shorter than the 8-byte header length")
    (length,) = _HEADER_LENGTH.unpack_from(blob)
    body = len(blob) - _HEADER_LENGTH.size
    if length > body:
        raise InputFileError(path, f"header length {length} runs past the end of the file ({body} bytes follow "
                                   "the length)")
    header = DumpData()
    try:
        header.ParseFromString(blob[_HEADER_LENGTH.size:_HEADER_LENGTH.size + length])
    except DecodeError as exc:
        raise InputFileError(path, f"the {length}-byte header is not a DumpData message ({exc})") from None
    sections = ([("input", i, t) for i, t in enumerate(header.input)]
                + [("output", i, t) for i, t in enumerate(header.output)]
                + [("buffer", i, t) for i, t in enumerate(header.buffer)]
                + [("workspace", i, t) for i, t in enumerate(header.space)])
    declared = sum(int(t.size) for _, _, t in sections)
    data = len(blob) - _HEADER_LENGTH.size - length
    if declared != data:
        problem = "overrun the file" if declared > data else "leave bytes unaccounted for"
        raise InputFileError(path, f"data sizes in the header ({declared} bytes over {len(sections)} tensors) "
                                   f"{problem}: {data} bytes follow the header")
    offset = _HEADER_LENGTH.size + length
    tensors: Dict[str, List[DumpTensor]] = {"input": [], "output": []}
    for kind, index, t in sections:
        size = int(t.size)
        if kind in tensors:
            original = t.original_op if kind == "output" and t.HasField("original_op") else None
            tensors[kind].append(DumpTensor(
                path, kind, index, int(t.data_type), int(t.format), _shape(t.shape), _shape(t.original_shape),
                original.name if original is not None else "", int(original.output_index) if original else 0,
                blob[offset:offset + size]))
        offset += size
    parsed = parse_dump_name(path.name)
    op_name = header.op_name or (parsed.op_name if parsed else path.name)
    return DumpFile(path, op_name, parsed.op_type if parsed else "", header.version,
                    tuple(tensors["input"]), tuple(tensors["output"]))


def read_dumps(paths: Iterable[PathLike]) -> List[DumpFile]:
    """:func:`read_dump` of each path, in the given order."""
    return [read_dump(p) for p in paths]
