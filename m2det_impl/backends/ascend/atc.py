"""Building an ``.om`` with CANN's ``atc``: the op census of an ONNX graph
against what ``atc`` documents, the ``atc`` command lines, and the build script.

This is the Ascend runtime's build step, as quantization is ONNX Runtime's
int8 build step: ``network`` knows the model and its ONNX graph, this module
knows what ``atc`` takes and how it is called (docs/reference.md, section 9).
"""

from __future__ import annotations

import shlex
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Union

import onnx
from onnx import helper

from m2det_impl._io import PathLike, atomic_write_text, read_json
from m2det_impl.errors import InputFileError, UsageError
from m2det_impl.network.export import INPUT_NAME, load_graph
from m2det_impl.published import GUIDE_BATCH_SIZES
from m2det_impl.resources import ATC_OPS_FILE

__all__ = [
    "DEFAULT_ATC_OPS_FILE",
    "AtcSupport",
    "CensusReport",
    "op_census",
    "load_atc_support",
    "atc_census",
    "atc_argv",
    "atc_command",
    "atc_dynamic_argv",
    "write_atc_script",
    "write_build_files",
]

#: The ONNX ops CANN's atc takes at opset 11 (package data).
DEFAULT_ATC_OPS_FILE = ATC_OPS_FILE


# ------------------------------------------------------------------ census
def op_census(model: Union[onnx.ModelProto, PathLike]) -> Counter:
    """How many nodes of each op type the graph holds (``domain::Op`` outside
    the default domain)."""
    proto, _ = load_graph(model, None)
    return Counter(
        n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}::{n.op_type}" for n in proto.graph.node
    )


@dataclass(frozen=True)
class AtcSupport:
    """The ONNX ops ``atc`` documents for one opset, read from the package data (``data/``)."""

    opset: int
    ops: frozenset
    source: str
    path: Path


@dataclass
class CensusReport:
    """Result of :func:`atc_census`: the op counts and anything ``atc`` would refuse."""

    counts: Counter
    opset: int
    unsupported: Dict[str, int] = field(default_factory=dict)
    violations: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.unsupported and not self.violations

    def summary(self) -> str:
        ops = ", ".join(f"{op} x{n}" for op, n in sorted(self.counts.items()))
        lines = [f"opset {self.opset}: {sum(self.counts.values())} nodes: {ops}"]
        if self.unsupported:
            lines.append("not in atc's ONNX op list: " + ", ".join(f"{k} x{v}" for k, v in self.unsupported.items()))
        lines += [f"violation: {v}" for v in self.violations]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def load_atc_support(path: PathLike = DEFAULT_ATC_OPS_FILE) -> AtcSupport:
    """Read the list of ONNX ops ``atc`` supports (the package's ``data/atc_opset11_ops.json``)."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(path, "atc op list not found (it ships inside the package as data/atc_opset11_ops.json: reinstall m2det-conformance)")
    data = read_json(path, "atc op list")
    try:
        return AtcSupport(int(data["opset"]), frozenset(data["ops"]), str(data["source"]), path)
    except (ValueError, KeyError, TypeError) as exc:
        raise InputFileError(path, f"not an atc op list ({type(exc).__name__}: {exc})") from None


def _model_opset(proto: onnx.ModelProto) -> int:
    for entry in proto.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    return 0


def atc_census(model: Union[onnx.ModelProto, PathLike], support: Optional[AtcSupport] = None) -> CensusReport:
    """Check the graph against what ``atc`` documents for ONNX opset 11.

    Fails (in the report) on an op outside the list, another opset, a ``Resize``
    whose ``sizes``/``scales`` are not constant or whose mode is neither
    nearest nor linear (CANN's documented constraints), and a non-default
    domain. So an export that would fail on the 310P fails here first.
    """
    proto, where = load_graph(model, None)
    support = support or load_atc_support()
    counts = op_census(proto)
    report = CensusReport(counts=counts, opset=_model_opset(proto))
    if report.opset != support.opset:
        report.violations.append(f"{where}: opset {report.opset}, the op list is for opset {support.opset}")
    report.unsupported = {op: n for op, n in sorted(counts.items()) if op not in support.ops}
    constants = {t.name for t in proto.graph.initializer}
    constants |= {o for n in proto.graph.node if n.op_type == "Constant" for o in n.output}
    for node in proto.graph.node:
        if node.op_type != "Resize":
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        mode = attrs.get("mode", b"nearest")
        mode = mode.decode() if isinstance(mode, bytes) else str(mode)
        if mode not in ("nearest", "linear"):
            report.violations.append(f"Resize {node.name}: mode {mode!r}; atc supports nearest and linear")
        dynamic = [name for name in node.input[1:] if name and name not in constants]
        if dynamic:
            report.violations.append(
                f"Resize {node.name}: inputs {dynamic} are computed, atc needs constant sizes/scales "
                "(export with a static batch)"
            )
        nearest_mode = attrs.get("nearest_mode", b"round_prefer_floor")
        nearest_mode = nearest_mode.decode() if isinstance(nearest_mode, bytes) else str(nearest_mode)
        if mode == "nearest" and nearest_mode != "round_prefer_ceil":
            note = (f"Resize nearest_mode {nearest_mode!r}: CANN 8 documents only round_prefer_ceil "
                    "for nearest; if the .om disagrees with ONNX Runtime, suspect the Resize first")
            if note not in report.notes:
                report.notes.append(note)
    return report


# ------------------------------------------------------------------ atc
def atc_argv(
    onnx_path: PathLike,
    batch: int,
    soc_version: str = "Ascend310P3",
    output: Optional[PathLike] = None,
    size: int = 512,
    log: str = "error",
) -> List[str]:
    """The ``atc`` arguments that build one static-batch ``.om`` (reference section 9).

    ``output`` defaults to ``<onnx stem>_bs<batch>`` beside the ONNX file (the
    stem alone when it already ends so; ``atc`` appends ``.om`` itself). No ``--out_nodes``: the ONNX outputs are
    already ``scores, loc`` in that order.
    """
    if isinstance(batch, bool) or int(batch) != batch or batch < 1:
        raise UsageError(f"atc builds static-batch models: batch must be a positive int, got {batch!r}")
    onnx_path = Path(onnx_path)
    if output is None:
        suffix = f"_bs{int(batch)}"
        stem = onnx_path.stem if onnx_path.stem.endswith(suffix) else onnx_path.stem + suffix
        output = onnx_path.with_name(stem)
    return [
        "atc",
        "--framework=5",
        f"--model={onnx_path}",
        "--input_format=NCHW",
        f"--input_shape={INPUT_NAME}:{int(batch)},3,{int(size)},{int(size)}",
        f"--output={output}",
        f"--log={log}",
        f"--soc_version={soc_version}",
    ]


def atc_dynamic_argv(
    onnx_path: PathLike,
    batches: Iterable[int],
    soc_version: str = "Ascend310P3",
    output: Optional[PathLike] = None,
    size: int = 512,
    log: str = "error",
) -> List[str]:
    """The ``atc`` arguments that build ONE dynamic-batch ``.om`` from the dynamic-batch ONNX export:
    ``--input_shape=image:-1,3,S,S --dynamic_batch_size=1,4,8`` (atc's gears). Such a model runs any of
    ``batches`` (aclruntime's ``set_dynamic_batchsize``; ``m2det infer/run --backend om --batch-size N``).

    ``output`` defaults to ``<onnx stem>_dynbs`` beside the ONNX file."""
    gears = sorted({int(b) for b in batches})
    if not gears or any(isinstance(b, bool) or b < 1 for b in gears):
        raise UsageError(f"dynamic batch sizes must be positive ints, got {list(batches)!r}")
    onnx_path = Path(onnx_path)
    if output is None:
        output = onnx_path.with_name(onnx_path.stem + "_dynbs")
    return [
        "atc",
        "--framework=5",
        f"--model={onnx_path}",
        "--input_format=NCHW",
        f"--input_shape={INPUT_NAME}:-1,3,{int(size)},{int(size)}",
        f"--dynamic_batch_size={','.join(map(str, gears))}",
        f"--output={output}",
        f"--log={log}",
        f"--soc_version={soc_version}",
    ]


def atc_command(
    onnx_path: PathLike,
    batch: int,
    soc_version: str = "Ascend310P3",
    output: Optional[PathLike] = None,
    size: int = 512,
) -> str:
    """:func:`atc_argv` as one shell-quoted command line."""
    return shlex.join(atc_argv(onnx_path, batch, soc_version, output, size))


def _from_script(path: Path, folder: Path) -> str:
    """``path`` as a bash word relative to the script's own folder (``"$HERE"/name``),
    so the script and its models travel together, whatever the working directory."""
    import os

    relative = os.path.relpath(path.resolve(), folder.resolve())
    return '"$HERE"/' + shlex.quote(relative)


def write_atc_script(
    path: PathLike,
    onnx_paths: Union[PathLike, Mapping[int, PathLike]],
    batches: Iterable[int] = GUIDE_BATCH_SIZES,
    soc_version: str = "Ascend310P3",
    size: int = 512,
) -> Path:
    """Write a bash script that builds one ``.om`` per batch size.

    ``onnx_paths`` is one ONNX file for all batches or ``{batch: file}`` (the
    static exports ``atc`` digests best). The script finds the models (and
    writes the ``.om`` files) relative to its own folder, so the folder copied
    to the 310P host works there, run from any working directory.
    """
    commands = []
    for b in batches:
        if isinstance(onnx_paths, Mapping):
            if b not in onnx_paths:
                raise UsageError(f"no ONNX file given for batch {b} (have {sorted(onnx_paths)})")
            src = Path(onnx_paths[b])
        else:
            src = Path(onnx_paths)
        commands.append(atc_argv(src, b, soc_version, size=size))
    return _write_travelling_script(path, commands, "Builds one static-batch .om per batch size")


def _write_travelling_script(path: PathLike, commands: Sequence[Sequence[str]], what: str) -> Path:
    """A bash script of ``atc`` command lines whose ``--model``/``--output`` are relative to the script's
    own folder, so the script and its models travel together, whatever the working directory."""
    folder = Path(path).resolve().parent
    lines = ["#!/usr/bin/env bash",
             f"# {what} (m2det_impl.backends.ascend.atc).",
             "# The models are found beside this script: copy the folder anywhere, run it from anywhere.",
             "set -euo pipefail",
             'HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"']
    for argv in commands:
        words = []
        for word in argv:
            key, sep, value = word.partition("=")
            if sep and key in ("--model", "--output"):
                words.append(f"{key}=" + _from_script(Path(value), folder))
            else:
                words.append(shlex.quote(word))
        lines.append(" ".join(words))
    out = atomic_write_text(path, "\n".join(lines) + "\n")
    out.chmod(0o755)
    return out


def write_build_files(files: Mapping[Optional[int], Path], out_dir: Path, *, soc_version: str = "Ascend310P3",
                      size: int = 512, dynamic_batches: Iterable[int] = (), **_options: object) -> List[str]:
    """What ``atc`` needs beside freshly exported ONNX files: each file's census
    (one line each; the details in ``atc_census.txt``) and ``atc_build.sh``:
    one static-batch ``.om`` per static export and, with ``dynamic_batches``,
    one dynamic-batch ``.om`` from the dynamic export. Returns the lines to show the user."""
    lines: List[str] = []
    details: List[str] = []
    counts: Dict[Path, int] = {}
    for batch, path in files.items():
        report = atc_census(path)
        problems = counts[Path(path)] = len(report.violations) + len(report.unsupported)
        first = report.summary().splitlines()[0]
        lines.append(f"{path.name}: atc census " + ("ok" if report.ok else f"{problems} problem(s) for atc")
                     + f"; {first}")
        details.append(f"# {path.name}\n{report.summary()}\n")
    census = atomic_write_text(Path(out_dir) / "atc_census.txt", "\n".join(details))
    lines.append(f"atc census details -> {census}")
    static = {b: p for b, p in files.items() if b is not None}
    dynamic = list(dynamic_batches)
    if dynamic and None not in files:
        raise UsageError("--dynamic-batch-sizes builds from the dynamic-batch export: drop --batch")
    if static or dynamic:
        commands = [atc_argv(static[b], b, soc_version, size=size) for b in sorted(static)]
        if dynamic:
            commands.append(atc_dynamic_argv(files[None], dynamic, soc_version, size=size))
        out = _write_travelling_script(Path(out_dir) / "atc_build.sh", commands,
                                       "Builds one static-batch .om per batch size" if not dynamic
                                       else "Builds the .om files")
        lines.append(f"atc commands -> {out}:")
        lines.append(out.read_text().rstrip("\n"))
        flagged = counts.get(Path(files[None]), 0) if dynamic else 0
        if flagged:  # the script is written all the same: atc may fold them per gear (unverified on a 310P)
            lines.append(f"WARNING: the dynamic-batch line builds from {Path(files[None]).name}, which the census "
                         f"flags {flagged} times (Resize sizes computed from the batch; atc_census.txt). atc fixes "
                         f"each gear's shapes and may fold them, which no 310P has confirmed: if atc rejects it, "
                         f"build static .om files instead (m2det export --batch 1 --batch 4 ...)")
    else:
        lines.append("dynamic-batch export (for ONNX Runtime); atc needs static exports (--batch B, repeatable) "
                     "or gears for one dynamic-batch .om (--dynamic-batch-sizes 1,4,8)")
    return lines
