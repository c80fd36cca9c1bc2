"""Test-side ENCODER of CANN dump files, written from the schema alone (independent of the reader under test).

It speaks the protobuf wire format by hand (varints, length-delimited fields)
with CANN's field numbers (``toolkit.dumpdata``: ``DumpData`` version 1,
dump_time 2, output 3, input 4, op_name 6; ``OpOutput`` data_type 1, format 2,
shape 3, original_op 4, size 6, original_shape 7; ``OpInput`` data_type 1,
format 2, shape 3, size 5, original_shape 6; ``OriginalOp`` name 1,
output_index 2; ``Shape`` dim 1), and lays the data out as the device does
(NC1HWC0: ``[N, ceil(C/16), H, W, 16]``, channels zero-padded), without any
code of ``m2det_impl.backends.ascend``. A bug shared by encoder and reader
would need the same wrong field number or axis order written twice.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

DT_FLOAT, DT_FLOAT16, DT_INT8 = 1, 2, 3
NCHW, ND, NC1HWC0, FRACTAL_NZ = 0, 2, 3, 29


# ------------------------------------------------------------------ protobuf wire format
def varint(value: int) -> bytes:
    out = bytearray()
    value &= (1 << 64) - 1
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def field_varint(number: int, value: int) -> bytes:
    return varint(number << 3 | 0) + varint(value)


def field_bytes(number: int, payload: bytes) -> bytes:
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def shape_message(dims: Sequence[int]) -> bytes:
    # proto3 packs repeated scalars: Shape.dim (1) as one length-delimited run of varints
    return field_bytes(1, b"".join(varint(int(d)) for d in dims)) if dims else b""


# ------------------------------------------------------------------ device layouts
def to_device(array: np.ndarray, fmt: int, dtype: int) -> Tuple[bytes, List[int]]:
    """``array`` (NCHW) in the device's layout: its raw bytes and the dumped shape."""
    np_type = {DT_FLOAT: "<f4", DT_FLOAT16: "<f2"}.get(dtype, "<f4")
    a = np.asarray(array, dtype=np.float32)
    if fmt == NC1HWC0:
        n, c, h, w = a.shape
        c1 = (c + 15) // 16
        padded = np.zeros((n, c1 * 16, h, w), np.float32)
        padded[:, :c] = a
        blocks = padded.reshape(n, c1, 16, h, w).transpose(0, 1, 3, 4, 2)  # N, C1, H, W, C0
        return np.ascontiguousarray(blocks).astype(np_type).tobytes(), [n, c1, h, w, 16]
    if fmt == ND:
        flat = a.reshape(a.shape[0], -1)
        return flat.astype(np_type).tobytes(), list(flat.shape)
    return np.ascontiguousarray(a).astype(np_type).tobytes(), list(a.shape)


@dataclass
class Tensor:
    """One dumped tensor as the encoder writes it."""

    raw: bytes
    shape: List[int]
    data_type: int = DT_FLOAT
    format: int = NCHW
    original_shape: List[int] = field(default_factory=list)
    original_name: str = ""
    original_index: int = 0
    size: Optional[int] = None  # the header's size (default: len(raw))

    @classmethod
    def of(cls, array: np.ndarray, fmt: int = NCHW, dtype: int = DT_FLOAT, original_name: str = "",
           original_index: int = 0, with_original_shape: bool = True) -> "Tensor":
        raw, shape = to_device(array, fmt, dtype)
        return cls(raw, shape, dtype, fmt, list(np.shape(array)) if with_original_shape else [], original_name,
                   original_index)

    def output_message(self) -> bytes:
        body = field_varint(1, self.data_type) if self.data_type else b""
        body += field_varint(2, self.format) if self.format else b""
        body += field_bytes(3, shape_message(self.shape))
        if self.original_name:
            original = field_bytes(1, self.original_name.encode())
            original += field_varint(2, self.original_index) if self.original_index else b""
            body += field_bytes(4, original)
        body += field_varint(6, len(self.raw) if self.size is None else self.size)
        if self.original_shape:
            body += field_bytes(7, shape_message(self.original_shape))
        return body

    def input_message(self) -> bytes:
        body = field_varint(1, self.data_type) + (field_varint(2, self.format) if self.format else b"")
        body += field_bytes(3, shape_message(self.shape))
        body += field_varint(5, len(self.raw) if self.size is None else self.size)
        if self.original_shape:
            body += field_bytes(6, shape_message(self.original_shape))
        return body


def encode_dump(op_name: str, outputs: Sequence[Tensor], inputs: Sequence[Tensor] = (), version: str = "2.0",
                dump_time: int = 1700000000000000) -> bytes:
    """A complete dump file: length, header, input data, output data."""
    header = field_bytes(1, version.encode()) + field_varint(2, dump_time)
    header += b"".join(field_bytes(3, t.output_message()) for t in outputs)
    header += b"".join(field_bytes(4, t.input_message()) for t in inputs)
    header += field_bytes(6, op_name.encode())
    data = b"".join(t.raw for t in inputs) + b"".join(t.raw for t in outputs)
    return struct.pack("<Q", len(header)) + header + data


def sanitise(name: str) -> str:
    """The runtime's rule for names in dump file names."""
    for ch in " ./\\":
        name = name.replace(ch, "_")
    return name


def dump_path(root: Path, op_type: str, op_name: str, task: int, timestamp: int, iteration: int = 0,
              model: str = "m2det_bs1") -> Path:
    """``{root}/{time}/{device}/{model}/{model_id}/{iteration}/{op_type}.{op_name}.{task}.{stream}.{timestamp}``."""
    folder = root / "20240101000000" / "0" / model / "1" / str(iteration)
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{sanitise(op_type)}.{sanitise(op_name)}.{task}.2.{timestamp}"


def write_dump(root: Path, op_type: str, op_name: str, outputs: Sequence[Tensor], task: int, timestamp: int,
               inputs: Sequence[Tensor] = (), **kwargs) -> Path:
    path = dump_path(root, op_type, op_name, task, timestamp, **kwargs)
    path.write_bytes(encode_dump(op_name, outputs, inputs))
    return path
