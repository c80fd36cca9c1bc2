"""The raw-output files an Ascend run leaves: one float32 file per output.

``ais_infer``/``ais_bench`` write ``<stem>_0.bin``, ``<stem>_1.bin`` (in .om
output order) into a time-stamped sub-folder; the older ``benchmark`` tool
numbered them ``_1``, ``_2``. Which file is which is decided by size alone
(scores hold P x C floats, loc P x 4), so either naming and either output order
read the same, and a missing or truncated file is named with the size it should
have (SPEC section 9).
"""

from __future__ import annotations

import re
import stat
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Tuple, Union

import numpy as np

from .config import M2DetConfig
from .errors import InputFileError
from .io_utils import atomic_write_bytes

__all__ = ["OutputPair", "OutputProblem", "expected_sizes", "write_outputs", "scan_outputs", "read_pair"]

PathLike = Union[str, Path]
# <stem>_<output index>.bin; the index is short, so a COCO stem's 12-digit id never matches.
_OUTPUT_NAME = re.compile(r"^(?P<stem>.+)_(?P<index>\d{1,3})\.bin$")


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


def scan_outputs(folder: PathLike, cfg: M2DetConfig) -> Tuple[List[OutputPair], List[OutputProblem]]:
    """Find every image's output pair under ``folder`` (recursively, since
    ais_infer writes into a time-stamped sub-folder). Returns the complete pairs
    sorted by stem and the problems found (missing, truncated, duplicated)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputFileError(folder, "outputs folder not found")
    groups: Dict[str, List[Path]] = defaultdict(list)
    try:
        found = sorted(folder.rglob("*.bin"))
    except OSError as exc:
        raise InputFileError(folder, f"cannot list the outputs folder ({exc.strerror or exc})") from None
    for path in found:
        match = _OUTPUT_NAME.match(path.name)
        if match:
            groups[match.group("stem")].append(path)
    if not groups:
        raise InputFileError(folder, "no output files named <stem>_<n>.bin here (ais_infer output folder?)")
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
            size = info.st_size
            kind = next((k for k, v in sizes.items() if v == size), None)
            if kind is None:
                bad.append(f"{path}: {size} bytes, expected {describe['scores']} or {describe['loc']} "
                           "(truncated or from another model?)")
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
            data = np.fromfile(path, dtype=np.float32)
        except OSError as exc:
            raise InputFileError(path, f"cannot read output file ({exc.strerror or exc})") from None
        if data.nbytes != sizes[kind]:
            raise InputFileError(path, f"{data.nbytes} bytes, expected {_describe(cfg)[kind]}")
        arrays.append(data.reshape(shape))
    return arrays[0], arrays[1]
