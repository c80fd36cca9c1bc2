"""Tolerances as data: bounds per backend pair and output, held against measured metrics; saved runs.

Bounds live in the package's data/tolerances.json, keyed by backend pair and
output name with a default, each with its reason. When a bound fails, the
report says which output, metric and image, by how much, and the smallest bound
that would have passed. Runs can be saved (save_run) and compared later without
the model (load_run; m2det compare A.npz B.npz), so a 310P run can be checked
against ONNX Runtime outputs frozen on a laptop.
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from m2det_impl._io import PathLike, atomic_write_bytes, atomic_write_json, read_json_object, read_npz, reading_fields
from m2det_impl.errors import InputFileError, M2DetError, UsageError
from m2det_impl.evaluation.agreement import DetectionAgreement, detection_agreement
from m2det_impl.evaluation.metrics import OutputMetrics, compare_runs
from m2det_impl.resources import TOLERANCES_FILE as DEFAULT_TOLERANCES_FILE

DETECTIONS = "detections"  # the output name under which detection bounds are kept

__all__ = [
    "Bound",
    "Violation",
    "ToleranceReport",
    "ToleranceError",
    "Tolerances",
    "SavedRun",
    "save_run",
    "load_run",
    "compare_saved",
]


@dataclass(frozen=True)
class Bound:
    """One bound: ``metric`` must be <= ``value`` (``kind='max'``) or >= it (``'min'``)."""

    metric: str
    kind: str
    value: float
    reason: str

    def passes(self, measured: float) -> bool:
        if not np.isfinite(measured):
            return False
        return measured <= self.value if self.kind == "max" else measured >= self.value

    def describe(self) -> str:
        return f"{self.metric} {'<=' if self.kind == 'max' else '>='} {self.value:.6g}"


@dataclass(frozen=True)
class Violation:
    """A bound that failed, with everything needed to judge it."""

    pair: str
    output: str
    image: int
    image_id: str
    bound: Bound
    measured: float
    worst: str = ""

    def message(self) -> str:
        b = self.bound
        if np.isfinite(self.measured):
            gap = abs(self.measured - b.value)
            by = f"{'over' if b.kind == 'max' else 'under'} by {gap:.3g}"
        else:
            by = "not finite"
        text = (f"{self.pair}: output {self.output!r}, image {self.image} ({self.image_id}): "
                f"{b.metric} = {self.measured:.6g}, bound {b.describe()} ({by})")
        if self.worst:
            text += f"; {self.worst}"
        return text + f"; bound's reason: {b.reason}"


@dataclass
class ToleranceReport:
    """All checks of one pair of runs; :meth:`raise_if_failed` for tests."""

    pair: str
    checked: int = 0
    violations: List[Violation] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def passing_bounds(self) -> Dict[Tuple[str, str], float]:
        """The smallest bound per (output, metric) that would have passed every image."""
        best: Dict[Tuple[str, str], float] = {}
        for v in self.violations:
            key = (v.output, v.bound.metric)
            pick = max if v.bound.kind == "max" else min
            best[key] = pick(best.get(key, v.measured), v.measured)
        return best

    def message(self) -> str:
        if self.ok:
            return f"{self.pair}: {self.checked} checks passed"
        lines = [f"{self.pair}: {len(self.violations)} of {self.checked} checks failed"]
        lines += ["  " + v.message() for v in self.violations]
        kinds = {(v.output, v.bound.metric): v.bound.kind for v in self.violations}
        for (output, metric), value in sorted(self.passing_bounds().items()):
            op = "<=" if kinds[(output, metric)] == "max" else ">="
            lines.append(f"  smallest bound that passes every image: {output} {metric} {op} {value:.6g}")
        return "\n".join(lines)

    def raise_if_failed(self) -> None:
        if self.violations:
            raise ToleranceError(self.message())


class ToleranceError(M2DetError, AssertionError):
    """Two runs differ by more than their tolerances allow (fails a test)."""


def _rows(rows: Sequence[Sequence[float]], limit: int = 3) -> str:
    shown = [f"({r[0]:.0f}, {r[1]:.1f}, {r[2]:.1f}, {r[3]:.1f}, {r[4]:.1f}, {r[5]:.4f})" for r in rows[:limit]]
    return "[" + ", ".join(shown) + "]"


def _entries(mapping: Mapping):
    """Items of a tolerance-file level; keys starting with ``_`` are comments."""
    return [(k, v) for k, v in mapping.items() if not str(k).startswith("_")]


class Tolerances:
    """Bounds keyed by backend pair and output name, read from JSON.

    Lookup for ``pair`` ``"a/b"`` (candidate / reference) and an output: the
    pair's entry (or ``"b/a"``'s, or the top-level ``"default"`` pair), its
    ``"default"`` bounds overlaid with the output's own. The way Polygraphy
    keys per-output tolerances, with one default. Keys starting with ``_``
    are comments (say why a bound is absent).
    """

    def __init__(self, data: Mapping, source: str = "<dict>"):
        self.source = source
        self.pairs: Dict[str, Dict[str, Dict[str, Bound]]] = {}
        with reading_fields(source, "a tolerance file", "'pairs': {pair: {output: {metric: {max or min, "
                                                        "reason}}}} with a 'default' pair"):
            for pair, outputs in _entries(data["pairs"]):
                self.pairs[pair] = {
                    out: {metric: self._bound(metric, spec, source) for metric, spec in _entries(bounds)}
                    for out, bounds in _entries(outputs)
                }
        if "default" not in self.pairs:
            raise InputFileError(source, "tolerance file has no 'default' pair")

    @staticmethod
    def _bound(metric: str, spec: Mapping, source: str) -> Bound:
        kinds = [k for k in ("max", "min") if k in spec]
        if len(kinds) != 1 or not str(spec.get("reason", "")).strip():
            raise InputFileError(source, f"bound {metric!r} needs exactly one of max/min and a reason, got {dict(spec)}")
        return Bound(metric, kinds[0], float(spec[kinds[0]]), str(spec["reason"]))

    @classmethod
    def load(cls, path: PathLike = DEFAULT_TOLERANCES_FILE) -> "Tolerances":
        path = Path(path)
        return cls(read_json_object(path, "tolerance file"), str(path))

    def entry(self, pair: str) -> Tuple[str, Dict[str, Dict[str, Bound]]]:
        """The key actually used for ``pair`` and its entry.

        ``"a/b@tag"`` (a weights tag, e.g. ``om/onnxruntime@golden0``) is looked
        up as written, then without the tag; each in both orders.
        """
        base, _, tag = pair.partition("@")
        a, _, b = base.partition("/")
        candidates = [f"{a}/{b}@{tag}", f"{b}/{a}@{tag}"] if tag else []
        for key in candidates + [f"{a}/{b}", f"{b}/{a}"]:
            if key in self.pairs:
                return key, self.pairs[key]
        return "default", self.pairs["default"]

    def bounds(self, pair: str, output: str) -> Dict[str, Bound]:
        _, entry = self.entry(pair)
        merged = dict(entry.get("default", {}))
        merged.update(entry.get(output, {}))
        return merged

    def check(self, pair: str, metrics: Iterable[OutputMetrics] = (),
              agreements: Iterable[DetectionAgreement] = ()) -> ToleranceReport:
        """Hold ``metrics`` and detection ``agreements`` of ``pair`` to their bounds."""
        report = ToleranceReport(pair)
        for m in metrics:
            for bound in self.bounds(pair, m.output).values():
                if bound.metric == "agreement":
                    continue
                report.checked += 1
                measured = m.value(bound.metric)
                if m.nonfinite or not bound.passes(measured):
                    worst = (f"worst element {list(m.worst_index)}: {m.worst_a:.7g} vs {m.worst_b:.7g}"
                             + (f"; {m.nonfinite} non-finite elements" if m.nonfinite else ""))
                    report.violations.append(Violation(pair, m.output, m.image, m.image_id, bound, measured, worst))
        for d in agreements:
            bound = self.bounds(pair, DETECTIONS).get("agreement")
            if bound is None:
                continue
            report.checked += 1
            if not bound.passes(d.fraction):
                detail = (f"{d.matched} of {d.count_a} (a) / {d.count_b} (b) detections matched; "
                          f"first unmatched (class, x1, y1, x2, y2, score) in a: {_rows(d.unmatched_a)}; "
                          f"in b: {_rows(d.unmatched_b)}")
                report.violations.append(Violation(pair, DETECTIONS, d.image, d.image_id, bound, d.fraction, detail))
        return report


# ------------------------------------------------------------------ saved runs
@dataclass
class SavedRun:
    """One backend's outputs on a list of images, as saved by :func:`save_run`."""

    name: str
    scores: np.ndarray
    loc: np.ndarray
    image_ids: List[str]
    image_sizes: np.ndarray  # [N, 2] (width, height) of the original images
    meta: Dict

    def outputs(self) -> Dict[str, np.ndarray]:
        return {"scores": self.scores, "loc": self.loc}


def save_run(folder: PathLike, name: str, scores: np.ndarray, loc: np.ndarray, image_ids: Sequence[str],
             image_sizes: Sequence[Tuple[int, int]], meta: Optional[Mapping] = None) -> Path:
    """Write ``<folder>/<name>.npz`` (outputs, image ids and sizes) and
    ``<folder>/<name>.json`` (``meta`` plus the library versions), atomically."""
    from m2det_impl.environment import library_versions

    scores, loc = np.asarray(scores, np.float32), np.asarray(loc, np.float32)
    ids = [str(i) for i in image_ids]
    sizes = np.asarray(image_sizes, dtype=np.int64).reshape(-1, 2)
    if not (len(ids) == len(sizes) == scores.shape[0] == loc.shape[0]):
        raise ValueError(f"{len(ids)} ids, {len(sizes)} sizes, {scores.shape[0]} scores and {loc.shape[0]} loc rows")
    buffer = io.BytesIO()
    np.savez(buffer, scores=scores, loc=loc, image_ids=np.asarray(ids), image_sizes=sizes)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)  # --save-outputs DIR may be new
    path = atomic_write_bytes(folder / f"{name}.npz", buffer.getvalue())
    atomic_write_json(folder / f"{name}.json", {"name": name, "images": len(ids), **dict(meta or {}),
                                                "versions": library_versions()}, indent=1)
    return path


def load_run(path: PathLike) -> SavedRun:
    """Read a run written by :func:`save_run` (the ``.npz``; the ``.json`` is optional)."""
    path = Path(path)
    data = read_npz(path, "saved run", ("scores", "loc", "image_ids", "image_sizes"))
    scores, loc, sizes = data["scores"], data["loc"], data["image_sizes"]
    count = len(data["image_ids"]) if data["image_ids"].ndim == 1 else -1
    # the shapes compare_runs and the detection decoder index: one row per image, 81 scores and 4 loc per prior
    if not (scores.dtype.kind == "f" and loc.dtype.kind == "f" and scores.ndim == 3 and loc.ndim == 3
            and loc.shape[2] == 4 and scores.shape[:2] == loc.shape[:2] and scores.shape[0] == count
            and sizes.shape == (count, 2) and sizes.dtype.kind in "iuf"):
        raise InputFileError(path, f"not a saved run: expected float scores [N, P, C], loc [N, P, 4], N image_ids and "
                                   f"image_sizes [N, 2]; got scores {scores.dtype} {list(scores.shape)}, loc "
                                   f"{loc.dtype} {list(loc.shape)}, {data['image_ids'].size} image_ids, image_sizes "
                                   f"{list(sizes.shape)}")
    ids = [str(i) for i in data["image_ids"]]
    meta_path = path.with_suffix(".json")
    meta = read_json_object(meta_path, "saved run description") if meta_path.is_file() else {}
    return SavedRun(path.stem, scores, loc, ids, sizes, meta)


def compare_saved(a: SavedRun, b: SavedRun, pair: Optional[str] = None, tolerances: Optional[Tolerances] = None,
                  detections: bool = True, cfg=None, verbose=None) -> ToleranceReport:
    """Compare two saved runs of the same images under their pair's bounds.

    ``pair`` defaults to the runs' ``backend`` metadata (``om/onnxruntime``);
    ``verbose`` (e.g. ``print``) receives one JSON line per measurement.
    """
    if a.image_ids != b.image_ids:
        raise UsageError(f"runs {a.name} and {b.name} hold different images: {a.image_ids[:3]}... vs {b.image_ids[:3]}...")
    if a.scores.shape != b.scores.shape or a.loc.shape != b.loc.shape:
        raise UsageError(f"runs {a.name} and {b.name} hold outputs of different shapes (scores {list(a.scores.shape)} "
                         f"vs {list(b.scores.shape)}, loc {list(a.loc.shape)} vs {list(b.loc.shape)}): runs of "
                         f"another model or input size")
    tolerances = tolerances or Tolerances.load()
    pair = pair or f"{a.meta.get('backend', a.name)}/{b.meta.get('backend', b.name)}"
    metrics = compare_runs(a.outputs(), b.outputs(), a.image_ids)
    agreements = []
    if detections:
        agreements = detection_agreement(a.outputs(), b.outputs(), [tuple(s) for s in a.image_sizes], cfg, a.image_ids)
    if verbose is not None:
        for m in metrics:
            verbose(json.dumps(asdict(m)))
        for d in agreements:
            verbose(json.dumps({"image_id": d.image_id, "matched": d.matched, "count_a": d.count_a,
                                "count_b": d.count_b, "fraction": d.fraction}))
    return tolerances.check(pair, metrics, agreements)
