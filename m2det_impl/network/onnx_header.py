"""An ONNX file's graph inputs, read without loading the model.

A 530 MB export takes seconds to parse and as much memory; what a job must
know before any work (is this ONNX at all, is it whole, which input size and
batch does it take) lies in a few hundred bytes. This reads the protobuf wire
format directly, seeking over everything else (the initializers' weights), so
a model given with the wrong ``--size``, a static batch where one image at a
time is needed, or a truncated file fails in the first second, in one line
naming the file.

ModelProto field 7 is the graph; GraphProto field 11 its inputs, 12 its
outputs (ValueInfoProto: 1 name, 2 type); TypeProto 1 a tensor type (2 its shape);
TensorShapeProto 1 its dims (1 dim_value, 2 dim_param).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator, List, Optional, Tuple, Union

from m2det_impl._io import PathLike
from m2det_impl.errors import InputFileError

__all__ = ["OnnxInput", "onnx_inputs", "onnx_outputs", "image_input"]

Dim = Union[int, str, None]  # a fixed size, a symbolic name, or unknown


@dataclass(frozen=True)
class OnnxInput:
    name: str
    dims: Tuple[Dim, ...]

    @property
    def static_batch(self) -> Optional[int]:
        """The batch size when it is fixed, else ``None`` (dynamic)."""
        batch = self.dims[0] if self.dims else None
        return batch if isinstance(batch, int) and batch > 0 else None


class _Bad(Exception):
    pass


def _varint(data: BinaryIO) -> Optional[int]:
    result, shift = 0, 0
    while True:
        byte = data.read(1)
        if not byte:
            if shift:
                raise _Bad("cut inside a field header")
            return None
        result |= (byte[0] & 0x7F) << shift
        if not byte[0] & 0x80:
            return result
        shift += 7
        if shift > 63:
            raise _Bad("a malformed varint")


def _fields(data: BinaryIO, end: int) -> Iterator[Tuple[int, int, int, int]]:
    """(field number, wire type, value or payload start, payload length) up to ``end``; seeks past
    length-delimited payloads unless the caller reads them."""
    while data.tell() < end:
        key = _varint(data)
        if key is None:
            raise _Bad("cut inside a message")
        number, wire = key >> 3, key & 7
        if number == 0:
            raise _Bad("field number 0")
        if wire == 0:
            yield number, wire, _varint(data) or 0, 0
        elif wire == 2:
            length = _varint(data)
            if length is None:
                raise _Bad("cut inside a field header")
            start = data.tell()
            if start + length > end:
                raise _Bad(f"a field of {length} bytes runs past the end")
            yield number, wire, start, length
            data.seek(start + length)
        elif wire == 1:
            data.seek(8, os.SEEK_CUR)
            yield number, wire, 0, 0
        elif wire == 5:
            data.seek(4, os.SEEK_CUR)
            yield number, wire, 0, 0
        else:
            raise _Bad(f"wire type {wire}")
        if data.tell() > end:
            raise _Bad("a value runs past the end")


def _sub(data: BinaryIO, start: int, length: int, want: int) -> List[Tuple[int, int, int, int]]:
    data.seek(start)
    return [f for f in _fields(data, start + length) if f[0] == want]


def _read_input(data: BinaryIO, start: int, length: int) -> OnnxInput:
    name, dims = "", []
    data.seek(start)
    fields = list(_fields(data, start + length))
    for number, wire, pos, size in fields:
        if number == 1 and wire == 2:
            data.seek(pos)
            name = data.read(size).decode("utf-8", "replace")
    for number, wire, pos, size in fields:
        if number != 2 or wire != 2:
            continue
        for _, w1, p1, s1 in _sub(data, pos, size, 1):  # TypeProto.tensor_type
            for _, w2, p2, s2 in _sub(data, p1, s1, 2):  # .shape
                for _, w3, p3, s3 in _sub(data, p2, s2, 1):  # .dim
                    dim: Dim = None
                    data.seek(p3)
                    for n4, w4, p4, s4 in list(_fields(data, p3 + s3)):
                        if n4 == 1 and w4 == 0:
                            dim = p4
                        elif n4 == 2 and w4 == 2:
                            data.seek(p4)
                            dim = data.read(s4).decode("utf-8", "replace")
                    dims.append(dim)
    return OnnxInput(name, tuple(dims))


def onnx_inputs(path: PathLike) -> List[OnnxInput]:
    """The graph inputs of the ONNX file at ``path`` (initializers listed as inputs are left
    out only by the caller's choice: an M2Det export lists its image first). A file that is not
    a whole ONNX model is an :class:`InputFileError` naming it."""
    return _graph_values(path, 11)


def onnx_outputs(path: PathLike) -> List[OnnxInput]:
    """The graph outputs of the ONNX file at ``path``, in order (an M2Det export: ``scores``, ``loc``);
    errors as :func:`onnx_inputs`."""
    return _graph_values(path, 12)


def _graph_values(path: PathLike, field: int) -> List[OnnxInput]:
    """The ValueInfoProtos of GraphProto field ``field`` (11 inputs, 12 outputs)."""
    path = Path(path)
    size = 0
    try:
        size = path.stat().st_size
        with open(path, "rb") as data:
            graphs = [(pos, length) for number, wire, pos, length in _fields(data, size) if number == 7 and wire == 2]
            if not graphs:
                raise _Bad("no graph")
            pos, length = graphs[-1]
            data.seek(pos)
            values = [(p, n) for number, wire, p, n in _fields(data, pos + length) if number == field and wire == 2]
            return [_read_input(data, p, n) for p, n in values]
    except _Bad as exc:
        raise InputFileError(path, f"not a readable ONNX model: truncated or not ONNX ({exc}, {size} bytes)") from None
    except OSError as exc:
        raise InputFileError(path, f"cannot read the ONNX model ({exc.strerror or exc})") from None


def image_input(path: PathLike) -> OnnxInput:
    """The model's image input: the first graph input of rank 4, or an :class:`InputFileError`."""
    for found in onnx_inputs(path):
        if len(found.dims) == 4:
            return found
    raise InputFileError(path, "not an image model: no input of shape [batch, 3, height, width]")
