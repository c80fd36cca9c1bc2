"""The fusion map in an ``atc --mode=1 --om=X.om --json=X.json`` file: which ONNX nodes each .om op stands for.

Why: atc fuses Conv + BatchNorm + ReLU (and more) into one device op, so the
dump of one op holds the result of several ONNX nodes. The dump header's
``original_op`` usually names the ONNX output it stands for; when it does not
(older CANN, ops atc renamed), the model's JSON does. Layout, checked against
Ascend's accuracy tools (msquickcmp's fusion-rule parser; no code copied)::

    {"graph": [{"name": ..., "op": [
        {"name": "Conv_0Relu_1", "type": "Conv2D", "id": 3,
         "attr": [{"key": "_datadump_original_op_names", "value": {"list": {"s": ["Conv_0", "Relu_1"]}}}],
         "output_desc": [{"dtype": "DT_FLOAT16", "attr": [
             {"key": "_datadump_origin_name", "value": {"s": "Relu_1"}},
             {"key": "_datadump_origin_output_index", "value": {"i": 0}}]}]}]}]}
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from m2det_impl._io import PathLike, read_json_object
from m2det_impl.errors import InputFileError

__all__ = ["FusedOp", "read_fusion_map"]


@dataclass(frozen=True)
class FusedOp:
    """One .om op: the ONNX nodes fused into it and, per output, the ONNX output it stands for."""

    name: str
    op_type: str
    original_names: Tuple[str, ...]
    outputs: Tuple[Tuple[str, int], ...]  # (origin node name or "", origin output index), per output


def _attrs(items, path: Path, where: str) -> Dict[str, dict]:
    if items is None:
        return {}
    if not isinstance(items, list):
        raise InputFileError(path, f"{where}: 'attr' must be a list of {{key, value}} objects")
    out = {}
    for item in items:
        if isinstance(item, dict) and isinstance(item.get("key"), str):
            value = item.get("value")
            out[item["key"]] = value if isinstance(value, dict) else {}
    return out


def _string_list(value: dict) -> List[str]:
    listed = (value.get("list") or {}).get("s") if isinstance(value.get("list"), dict) else None
    return [s for s in listed if isinstance(s, str) and s] if isinstance(listed, list) else []


def _origin(desc: dict, path: Path, where: str) -> Tuple[str, int]:
    attrs = _attrs(desc.get("attr") if isinstance(desc, dict) else None, path, where)
    name = attrs.get("_datadump_origin_name", {}).get("s", "")
    index = attrs.get("_datadump_origin_output_index", {}).get("i", 0)
    try:
        return (name if isinstance(name, str) else "", int(index))
    except (TypeError, ValueError):
        raise InputFileError(path, f"{where}: _datadump_origin_output_index is not an integer") from None


def read_fusion_map(path: PathLike) -> Dict[str, FusedOp]:
    """Every op of every graph in an atc JSON, by op name (the name the dump header carries)."""
    path = Path(path)
    data = read_json_object(path, "atc --json model file")
    graphs = data.get("graph")
    if not isinstance(graphs, list):
        raise InputFileError(path, "not an atc --mode=1 JSON: no 'graph' list")
    ops: Dict[str, FusedOp] = {}
    for g, graph in enumerate(graphs):
        items: Optional[list] = graph.get("op") if isinstance(graph, dict) else None
        if not isinstance(items, list):
            raise InputFileError(path, f"graph {g}: no 'op' list")
        for op in items:
            if not isinstance(op, dict) or not isinstance(op.get("name"), str):
                raise InputFileError(path, f"graph {g}: an op without a 'name'")
            where = f"op {op['name']!r}"
            attrs = _attrs(op.get("attr"), path, where)
            descs = op.get("output_desc") or []
            if not isinstance(descs, list):
                raise InputFileError(path, f"{where}: 'output_desc' must be a list")
            ops[op["name"]] = FusedOp(
                op["name"], str(op.get("type", "")),
                tuple(_string_list(attrs.get("_datadump_original_op_names", {}))),
                tuple(_origin(d, path, f"{where} output {i}") for i, d in enumerate(descs)))
    return ops
