"""The raw-output files an Ascend run leaves, written and read as the real tools do.

``ais_bench`` (formerly ``ais_infer``) writes, per input, ``<stem>_0``,
``<stem>_1`` (in .om output order; the stem is the input's name cut at its
FIRST dot) into ``<output>/<%Y_%m_%d-%H_%M_%S>/`` (or ``<output>/<output_dirname>/``),
as raw float32 (``--outfmt BIN``), ``.npy`` (``NPY``) or text (``TXT``: rows of
the last axis, ``%f`` with a space after each value), and puts
``<folder name>_summary.json`` beside that folder, holding ``filesinfo`` (per
sample index its ``infiles`` and ``outfiles``) and the timing figures; its
throughput is ``1000 * batch / mean(execute ms)`` of the model execute alone.
The older ``benchmark`` tool wrote flat ``_1``, ``_2`` ``.bin`` files. Which
file is which is decided by element count alone (scores hold P x C floats, loc
P x 4), so every naming, format and output order reads the same, and a missing
or truncated file is named with the size it should have (reference section 9).

As ais_bench cuts each execute's outputs with ``np.array_split`` along the
batch axis, every file keeps that axis: ``.npy`` outputs are ``[1, P, C]`` and
``[1, P, 4]`` (the guide's flat scores ``[P, C]``); the readers flatten, so
files of either shape read the same (docs/ascend-runtime-notes.md, section 5).
The summary holds ais_bench's keys and nothing else; what this tool adds (the
clock, the batch, the device) goes to ``<folder name>_m2det.json`` beside it.
"""

from __future__ import annotations

import io
import os
import re
import stat
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from m2det_impl._io import PathLike, atomic_write_bytes, atomic_write_json
from m2det_impl.errors import InputFileError, UsageError
from m2det_impl.network.config import M2DetConfig

__all__ = [
    "OutputPair",
    "OutputProblem",
    "expected_sizes",
    "write_outputs",
    "scan_outputs",
    "read_pair",
    "ais_stem",
    "AisOutputWriter",
    "OUTPUT_FORMATS",
    "natural_sorted",
    "INPUT_SUFFIXES",
    "check_output_dirname",
]

# <stem>_<output index>.<bin|npy|txt>; the index is short, so a COCO stem's 12-digit id never matches.
_OUTPUT_NAME = re.compile(r"^(?P<stem>.+)_(?P<index>\d{1,3})\.(?P<ext>bin|npy|txt)$")
OUTPUT_FORMATS = ("BIN", "NPY", "TXT")


@dataclass(frozen=True)
class OutputPair:
    """The two output files of one input image."""

    stem: str
    scores_path: Path
    loc_path: Path


@dataclass(frozen=True)
class OutputProblem:
    """An image whose outputs cannot be read, with the reason in one line."""

    stem: str
    message: str


def expected_sizes(cfg: M2DetConfig) -> Dict[str, int]:
    """Bytes of each output file for one image."""
    p = cfg.num_priors
    return {"scores": p * cfg.num_classes * 4, "loc": p * 4 * 4}


def _describe(cfg: M2DetConfig) -> Dict[str, str]:
    sizes = expected_sizes(cfg)
    return {
        "scores": f"{sizes['scores']} bytes (scores, float32 {cfg.num_priors}x{cfg.num_classes})",
        "loc": f"{sizes['loc']} bytes (loc, float32 {cfg.num_priors}x4)",
    }


def write_outputs(folder: PathLike, stem: str, scores: np.ndarray, loc: np.ndarray,
                  first_index: int = 0) -> Tuple[Path, Path]:
    """Write one image's outputs as ais_infer does: scores then loc, float32."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    scores_path = folder / f"{stem}_{first_index}.bin"
    loc_path = folder / f"{stem}_{first_index + 1}.bin"
    atomic_write_bytes(scores_path, np.ascontiguousarray(scores, dtype=np.float32).tobytes())
    atomic_write_bytes(loc_path, np.ascontiguousarray(loc, dtype=np.float32).tobytes())
    return scores_path, loc_path


def _other_preset_hint(nbytes: Optional[int], cfg: M2DetConfig) -> str:
    """Why an output file has the wrong size: another preset's outputs (evaluate ``--size 320`` over
    M2Det512's outputs) are named as such with the ``--size`` that reads them, else truncation or
    another model is the guess."""
    from m2det_impl.network.config import SUPPORTED_SIZES, get_config

    for size in SUPPORTED_SIZES:
        other = get_config(size)
        if size != cfg.size and nbytes in expected_sizes(other).values():
            return f"(the size of M2Det{size}'s outputs: give --size {size})"
    return "(truncated or from another model?)"


def scan_outputs(folder: PathLike, cfg: M2DetConfig) -> Tuple[List[OutputPair], List[OutputProblem]]:
    """Find every image's output pair under ``folder`` (recursively, since
    ais_infer writes into a time-stamped sub-folder). Returns the complete pairs
    sorted by stem and the problems found (missing, truncated, duplicated)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputFileError(folder, "outputs folder not found")
    groups: Dict[str, List[Path]] = defaultdict(list)
    try:
        found = sorted(p for p in folder.rglob("*") if p.suffix in (".bin", ".npy", ".txt"))
    except OSError as exc:
        raise InputFileError(folder, f"cannot list the outputs folder ({exc.strerror or exc})") from None
    for path in found:
        match = _OUTPUT_NAME.match(path.name)
        if match:
            groups[match.group("stem")].append(path)
    if not groups:
        raise InputFileError(folder, "no output files named <stem>_<n>.bin/.npy/.txt here (an ais_bench output "
                                     "folder?)")
    sizes = expected_sizes(cfg)
    describe = _describe(cfg)
    pairs: List[OutputPair] = []
    problems: List[OutputProblem] = []
    for stem in sorted(groups):
        files = groups[stem]
        parents = sorted({str(p.parent) for p in files})
        if len(parents) > 1:
            problems.append(OutputProblem(stem, f"outputs of {stem} found in several folders ({', '.join(parents)}): "
                                                "point --outputs at one run's folder"))
            continue
        by_kind: Dict[str, List[Path]] = defaultdict(list)
        bad = []
        for path in files:
            try:
                info = path.stat()
            except OSError as exc:  # a dangling link, a file removed while scanning
                bad.append(f"{path}: cannot read ({exc.strerror or exc})")
                continue
            if not stat.S_ISREG(info.st_mode):
                bad.append(f"{path}: not a regular file")
                continue
            if path.suffix == ".bin":
                size = info.st_size
                kind = next((k for k, v in sizes.items() if v == size), None)
                found_text = f"{size} bytes"
            else:
                count = _element_count(path)
                kind = next((k for k, v in sizes.items() if v == count * 4), None) if count is not None else None
                found_text = "unreadable" if count is None else f"{count} values"
            if kind is None:
                nbytes = size if path.suffix == ".bin" else (count * 4 if count is not None else None)
                bad.append(f"{path}: {found_text}, expected {describe['scores']} or {describe['loc']} "
                           + _other_preset_hint(nbytes, cfg))
            else:
                by_kind[kind].append(path)
        if bad:
            problems.append(OutputProblem(stem, "; ".join(bad)))
            continue
        missing = [k for k in ("scores", "loc") if not by_kind[k]]
        extra = [k for k in ("scores", "loc") if len(by_kind[k]) > 1]
        if missing:
            present = ", ".join(str(p) for p in files)
            problems.append(OutputProblem(stem, f"{stem}: missing the {missing[0]} output file beside {present} "
                                                f"(expected a file of {describe[missing[0]]})"))
        elif extra:
            problems.append(OutputProblem(stem, f"{stem}: several {extra[0]} files: "
                                                + ", ".join(str(p) for p in by_kind[extra[0]])))
        else:
            pairs.append(OutputPair(stem, by_kind["scores"][0], by_kind["loc"][0]))
    return pairs, problems


def read_pair(pair: OutputPair, cfg: M2DetConfig) -> Tuple[np.ndarray, np.ndarray]:
    """(scores [P, C], loc [P, 4]) of one image, checking sizes again at read time."""
    sizes = expected_sizes(cfg)
    arrays = []
    for path, kind, shape in ((pair.scores_path, "scores", (cfg.num_priors, cfg.num_classes)),
                              (pair.loc_path, "loc", (cfg.num_priors, 4))):
        try:
            data = _read_values(path)
        except (OSError, ValueError) as exc:
            raise InputFileError(path, f"cannot read output file ({getattr(exc, 'strerror', None) or exc})") from None
        if data.nbytes != sizes[kind]:
            raise InputFileError(path, f"{data.nbytes} bytes, expected {_describe(cfg)[kind]}")
        arrays.append(data.reshape(shape))
    return arrays[0], arrays[1]


def _read_values(path: Path) -> np.ndarray:
    """The float32 values of one output file in any of ais_bench's formats, flattened."""
    if path.suffix == ".npy":
        return np.load(path, allow_pickle=False).astype(np.float32, copy=False).ravel()
    if path.suffix == ".txt":
        return np.loadtxt(path, dtype=np.float32, ndmin=1).ravel()
    return np.fromfile(path, dtype=np.float32)


def _element_count(path: Path) -> "int | None":
    """How many values an .npy (from its header) or .txt (whitespace-separated tokens, counted
    without parsing them: read_pair parses and checks again) output holds; None if unreadable."""
    try:
        if path.suffix == ".npy":
            return int(np.prod(np.load(path, mmap_mode="r", allow_pickle=False).shape))
        text = np.frombuffer(path.read_bytes(), dtype=np.uint8)
        blank = (text == 32) | (text == 10) | (text == 13) | (text == 9)
        if blank.size == 0:
            return 0
        return int(np.count_nonzero(blank[:-1] & ~blank[1:])) + int(not blank[0])
    except (OSError, ValueError):
        return None


#: The input files ais_bench takes from a folder.
INPUT_SUFFIXES = (".bin", ".BIN", ".npy", ".NPY")


def _natural_key(name: str) -> list:
    """ais_bench's order: digit runs compare as numbers, the rest case-folded (``2.bin`` before ``10.bin``)."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def natural_sorted(paths) -> List[Path]:
    """``paths`` in ais_bench's natural order of their full path (so ``filesinfo`` indices agree with its)."""
    return sorted((Path(p) for p in paths), key=lambda p: _natural_key(str(p)))


def check_output_dirname(output_dirname: Optional[str]) -> None:
    """A sub-folder name for ``--output-dirname``: relative to ``--output``, as ait and msit insist."""
    if output_dirname is not None and (not output_dirname or Path(output_dirname).is_absolute()):
        raise UsageError(f"--output-dirname {output_dirname!r}: give a folder name relative to --output, not an "
                         "absolute path (ait benchmark refuses absolute ones too)")


def ais_stem(input_path: PathLike) -> str:
    """ais_bench's output stem: the input file's name cut at its first dot."""
    return Path(input_path).name.split(".")[0]


def _write_values(path: Path, array: np.ndarray, outfmt: str) -> None:
    array = np.ascontiguousarray(array, dtype=np.float32)
    if outfmt == "BIN":
        atomic_write_bytes(path, array.tobytes())
    elif outfmt == "NPY":
        buffer = io.BytesIO()
        np.save(buffer, array)
        atomic_write_bytes(path, buffer.getvalue())
    else:  # TXT, as ais_bench: rows of the last axis, "%f" and a space after each value, then a newline
        buffer = io.BytesIO()
        np.savetxt(buffer, array.reshape(-1, array.shape[-1]), fmt="%f", delimiter=" ", newline=" \n")
        atomic_write_bytes(path, buffer.getvalue())


def _timing(values: List[float]) -> Dict[str, float]:
    """ais_bench's timing block: min, max, mean, median, percentile(99%), count (ms)."""
    if not values:
        return {"min": 0.0, "max": 0.0, "mean": 0.0, "median": 0.0, "percentile(99%)": 0.0, "count": 0}
    arr = np.asarray(values, dtype=np.float64)
    return {"min": float(arr.min()), "max": float(arr.max()), "mean": float(arr.mean()),
            "median": float(np.median(arr)), "percentile(99%)": float(np.percentile(arr, 99)), "count": int(arr.size)}


class AisOutputWriter:
    """Writes outputs in ais_bench's layout: ``<output>/<time stamp or output_dirname>/<stem>_<i>.<fmt>``
    and, on :meth:`finish`, ``<output>/<folder name>_summary.json`` beside that folder.

    ``flat_scores``: the model gives scores ``[B*P, C]`` (the guide's), whose
    per-input piece ais_bench writes as ``[P, C]``; otherwise ``[1, P, C]``."""

    def __init__(self, output: PathLike, output_dirname: Optional[str] = None, outfmt: str = "BIN",
                 flat_scores: bool = False):
        outfmt = outfmt.upper()
        if outfmt not in OUTPUT_FORMATS:
            raise UsageError(f"outfmt must be one of {', '.join(OUTPUT_FORMATS)}, got {outfmt!r}")
        check_output_dirname(output_dirname)
        self.output = Path(output)
        self.name = output_dirname or time.strftime("%Y_%m_%d-%H_%M_%S")
        self.folder = self.output / self.name
        self.folder.mkdir(parents=True, exist_ok=True)
        self.outfmt = outfmt
        self.flat_scores = flat_scores
        # input path -> its two output files, in the order they were added or adopted
        self._outfiles: Dict[str, List[str]] = {}

    @property
    def filesinfo(self) -> Dict[str, Dict[str, List[str]]]:
        """ais_bench's ``filesinfo``: per sample index (in the order the inputs were added) its ``infiles`` and
        ``outfiles``."""
        return {str(i): {"infiles": [name], "outfiles": list(outs)} for i, (name, outs) in
                enumerate(self._outfiles.items())}

    def output_paths(self, input_path: PathLike) -> Tuple[Path, Path]:
        """Where this writer puts one input's ``_0`` (scores) and ``_1`` (loc) files."""
        stem, ext = ais_stem(input_path), self.outfmt.lower()
        return self.folder / f"{stem}_0.{ext}", self.folder / f"{stem}_1.{ext}"

    def adopt(self, input_path: PathLike) -> Tuple[Path, Path]:
        """List an input whose outputs an earlier, interrupted run of the same job already wrote here (a
        resumed ``m2det infer``), without writing them again."""
        paths = self.output_paths(input_path)
        self._outfiles[str(input_path)] = [str(p) for p in paths]
        return paths

    def add(self, input_path: PathLike, scores: np.ndarray, loc: np.ndarray) -> Tuple[Path, Path]:
        """One sample's outputs (``[P, C]``, ``[P, 4]``), in .om output order: scores (``_0``), loc (``_1``),
        each shaped as ais_bench's ``np.array_split`` leaves it."""
        paths = self.output_paths(input_path)
        scores = np.asarray(scores)
        pieces = (scores if self.flat_scores else scores[None], np.asarray(loc)[None])
        for path, array in zip(paths, pieces):
            _write_values(path, array, self.outfmt)
        self._outfiles[str(input_path)] = [str(p) for p in paths]
        return paths

    def finish(self, batch_size: int, execute_times_ms: Sequence[float], clock: str = "", *,
               h2d_ms: Sequence[float] = (), d2h_ms: Sequence[float] = (), warmup_executes: int = 0,
               extra: Optional[Dict[str, object]] = None, order: Optional[Sequence[PathLike]] = None) -> Path:
        """Write the summary ais_bench writes; ``throughput`` is ``1000 * batch / mean(execute ms)``, ``batch``
        the batch each execute ran, or null when no execute was timed (a resumed job whose inputs were all
        done before: a throughput of 0.0 would be a figure nobody measured). ``args`` is this process's command
        line followed by ``--warmup_count=N`` (ais_bench's option): the untimed warm-up executes that preceded
        the timed ones. ``order``: the inputs in ais_bench's order, so that ``filesinfo`` numbers them as one
        uninterrupted run would, whatever order a resumed run added and adopted them in. What this tool adds
        (``clock``, ``extra``) goes to ``<name>_m2det.json`` beside the summary."""
        filesinfo = self.filesinfo
        if order is not None:
            missing = [str(p) for p in order if str(p) not in self._outfiles]
            if missing:
                raise ValueError(f"no outputs written or adopted for {len(missing)} input(s), e.g. {missing[0]}")
            filesinfo = {str(i): {"infiles": [str(p)], "outfiles": list(self._outfiles[str(p)])}
                         for i, p in enumerate(order)}
        times = [float(t) for t in execute_times_ms]
        compute = _timing(times)
        summary = {
            "filesinfo": filesinfo,
            "args": list(sys.argv) + [f"--warmup_count={int(warmup_executes)}"],
            "NPU_compute_time": compute,
            "H2D_latency": _timing([float(t) for t in h2d_ms]),
            "D2H_latency": _timing([float(t) for t in d2h_ms]),
            "throughput": (1000.0 * batch_size / compute["mean"]) if compute["mean"] > 0 else None,
            "npu_compute_time_list": times,
            "pid": os.getpid(),
        }
        ours = {"summary": f"{self.name}_summary.json", "execute_clock": clock, "batch_size": int(batch_size),
                "warmup_executes": int(warmup_executes), **(extra or {})}
        atomic_write_json(self.output / f"{self.name}_m2det.json", ours, indent=4)
        return atomic_write_json(self.output / f"{self.name}_summary.json", summary, indent=4)
