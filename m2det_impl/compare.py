"""Cross-backend comparison: raw-output metrics, detection agreement, tolerances.

Two runs of M2Det (PyTorch, ONNX Runtime on CPU/CUDA/CANN, an ``.om`` on a
310P) never agree bit for bit; the question is whether they differ by what
their arithmetic explains. This module measures the difference per output and
per image, holds it to bounds kept as data (``fixtures/tolerances.json``, keyed
by backend pair and output name with a default, each bound with its reason),
and says, when a bound fails, which output, metric and image, by how much, and
the smallest bound that would have passed.

An fp16 ``.om`` differs in the raw outputs by more than float32 runtimes do
while its detections stay the same, so runs are also compared after the
post-processing: the fraction of detections matched one to one (same class,
IoU >= 0.99, score within 1e-3).

Runs can be saved (``save_run``) and compared later without the model
(``load_run``; ``m2det compare A.npz B.npz``), so a 310P run can
be checked against ONNX Runtime outputs frozen on a laptop.
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from .errors import InputFileError, M2DetError
from .io_utils import atomic_write_bytes, atomic_write_json

__all__ = [
    "DEFAULT_TOLERANCES_FILE",
    "OutputMetrics",
    "output_metrics",
    "compare_runs",
    "DetectionAgreement",
    "match_detections",
    "run_detections",
    "detection_agreement",
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

DEFAULT_TOLERANCES_FILE = Path(__file__).resolve().parents[1] / "fixtures" / "tolerances.json"
DETECTIONS = "detections"  # the output name under which detection bounds are kept
PathLike = Union[str, Path]


# ------------------------------------------------------------------ raw outputs
@dataclass(frozen=True)
class OutputMetrics:
    """How one output of one image differs between a candidate run ``a`` and a
    reference run ``b``.

    ``max_rel`` is elementwise ``|a-b| / |b|`` (infinite where ``b == 0`` and
    ``a != b``): near-zero scores make it large, so it is reported, not bounded
    by default. ``peak_rel`` is ``max|a-b| / max|b|``, the golden README's
    "relative to the largest magnitude". ``cosine`` is over the flattened
    output, in float64, the figure Ascend's comparison tools report; it is
    blind to scale (``2 * b`` has cosine 1 with ``b``), so ``rel_l2``,
    ``||a - b|| / ||b||`` (Ascend's "relative Euclidean distance"), comes with
    it. ``nonfinite`` counts elements where either run is NaN or infinite.
    """

    output: str
    image: int
    image_id: str
    max_abs: float
    mean_abs: float
    max_rel: float
    peak_rel: float
    cosine: float
    rel_l2: float
    worst_index: Tuple[int, ...]
    worst_a: float
    worst_b: float
    nonfinite: int = 0

    def value(self, metric: str) -> float:
        return float(getattr(self, metric))


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 and nb == 0.0:
        return 1.0
    if na == 0.0 or nb == 0.0:
        return 0.0
    return float(np.dot(a, b) / (na * nb))


def output_metrics(a: np.ndarray, b: np.ndarray, output: str, image: int = 0,
                   image_id: Optional[str] = None) -> OutputMetrics:
    """Metrics of candidate ``a`` against reference ``b`` (one image's output)."""
    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"output {output!r}, image {image}: shapes differ: {list(a.shape)} vs {list(b.shape)}")
    a64 = a.astype(np.float64).ravel()
    b64 = b.astype(np.float64).ravel()
    finite = np.isfinite(a64) & np.isfinite(b64)
    nonfinite = int(a64.size - np.count_nonzero(finite))
    diff = np.abs(a64 - b64)
    diff[~finite] = np.inf
    worst = int(np.argmax(diff)) if diff.size else 0
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(diff == 0, 0.0, diff / np.abs(b64))
    peak = float(np.max(np.abs(b64[finite]))) if np.any(finite) else 0.0
    max_abs = float(diff.max()) if diff.size else 0.0
    norm_b, norm_d = float(np.linalg.norm(b64[finite])), float(np.linalg.norm(diff))
    rel_l2 = norm_d / norm_b if norm_b > 0 else (0.0 if norm_d == 0 else float("inf"))
    return OutputMetrics(
        output=output,
        image=int(image),
        image_id=str(image if image_id is None else image_id),
        max_abs=max_abs,
        mean_abs=float(diff.mean()) if diff.size else 0.0,
        max_rel=float(rel.max()) if rel.size else 0.0,
        peak_rel=(max_abs / peak) if peak > 0 else (0.0 if max_abs == 0 else float("inf")),
        cosine=_cosine(a64[finite], b64[finite]) if nonfinite == 0 else float("nan"),
        rel_l2=rel_l2,
        worst_index=tuple(int(i) for i in np.unravel_index(worst, a.shape)) if a.size else (),
        worst_a=float(a64[worst]) if a64.size else 0.0,
        worst_b=float(b64[worst]) if b64.size else 0.0,
        nonfinite=nonfinite,
    )


def compare_runs(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray],
                 image_ids: Optional[Sequence[str]] = None,
                 outputs: Sequence[str] = ("scores", "loc")) -> List[OutputMetrics]:
    """Per-output, per-image metrics of run ``a`` against run ``b``.

    Each run maps an output name to a batch ``[N, ...]``; image ``i`` is row ``i``.
    """
    result = []
    for name in outputs:
        if name not in a or name not in b:
            raise ValueError(f"output {name!r} missing from a run (have {sorted(a)} and {sorted(b)})")
        xa, xb = np.asarray(a[name]), np.asarray(b[name])
        if xa.shape != xb.shape:
            raise ValueError(f"output {name!r}: shapes differ: {list(xa.shape)} vs {list(xb.shape)}")
        if image_ids is not None and len(image_ids) != xa.shape[0]:
            raise ValueError(f"{len(image_ids)} image ids for {xa.shape[0]} images")
        for i in range(xa.shape[0]):
            result.append(output_metrics(xa[i], xb[i], name, i, None if image_ids is None else image_ids[i]))
    return result


# ------------------------------------------------------------------ detections
@dataclass(frozen=True)
class DetectionAgreement:
    """One image's detections of run ``a`` matched one to one against ``b``.

    ``fraction`` is ``matched / max(count_a, count_b)`` (1.0 when both are empty):
    a detection missing from either side counts against it.
    """

    image: int
    image_id: str
    matched: int
    count_a: int
    count_b: int
    unmatched_a: Tuple[Tuple[float, ...], ...] = ()
    unmatched_b: Tuple[Tuple[float, ...], ...] = ()

    @property
    def fraction(self) -> float:
        most = max(self.count_a, self.count_b)
        return 1.0 if most == 0 else self.matched / most


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Plain (continuous) IoU of one box with many, in pixels."""
    x1 = np.maximum(box[0], boxes[:, 0])
    y1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[2], boxes[:, 2])
    y2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = lambda r: np.clip(r[..., 2] - r[..., 0], 0, None) * np.clip(r[..., 3] - r[..., 1], 0, None)  # noqa: E731
    union = area(box) + area(boxes) - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, inter / union, np.where(np.all(boxes == box, axis=1), 1.0, 0.0))
    return iou


def match_detections(a: np.ndarray, b: np.ndarray, iou: float = 0.99, score_tol: float = 1e-3,
                     image: int = 0, image_id: Optional[str] = None) -> DetectionAgreement:
    """Match rows ``(class, x1, y1, x2, y2, score)`` of ``a`` and ``b`` one to one.

    A pair qualifies with the same class, IoU >= ``iou`` and scores within
    ``score_tol``; pairs are taken greedily, best IoU first, then closest
    score (with IoU >= 0.99 two rows of one class rarely compete for a box).
    """
    a = np.asarray(a, dtype=np.float64).reshape(-1, 6)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 6)
    candidates = []
    for i, row in enumerate(a):
        same = np.flatnonzero(b[:, 0] == row[0])
        if same.size == 0:
            continue
        ious = _iou(row[1:5], b[same, 1:5])
        dscore = np.abs(b[same, 5] - row[5])
        for j, o, d in zip(same, ious, dscore):
            if o >= iou and d <= score_tol:
                candidates.append((-o, d, i, int(j)))
    candidates.sort()
    used_a, used_b = set(), set()
    for _, _, i, j in candidates:
        if i not in used_a and j not in used_b:
            used_a.add(i)
            used_b.add(j)
    rest_a = tuple(tuple(float(v) for v in a[i]) for i in range(len(a)) if i not in used_a)[:5]
    rest_b = tuple(tuple(float(v) for v in b[j]) for j in range(len(b)) if j not in used_b)[:5]
    return DetectionAgreement(int(image), str(image if image_id is None else image_id),
                              len(used_a), len(a), len(b), rest_a, rest_b)


def run_detections(scores: np.ndarray, loc: np.ndarray, sizes: Sequence[Tuple[int, int]],
                   cfg=None, priors: Optional[np.ndarray] = None) -> List[np.ndarray]:
    """The reference post-processing of a batch (``m2det_impl.postprocess.detect``)
    with the ORIGINAL image ``sizes`` ``[(width, height), ...]``."""
    from .postprocess import detect  # imported here: numba is not needed for raw metrics

    if len(sizes) != len(loc):
        raise ValueError(f"{len(sizes)} image sizes for {len(loc)} images")
    return [detect(scores[i], loc[i], priors, float(w), float(h), cfg) for i, (w, h) in enumerate(sizes)]


def detection_agreement(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray],
                        sizes: Sequence[Tuple[int, int]], cfg=None, image_ids: Optional[Sequence[str]] = None,
                        iou: float = 0.99, score_tol: float = 1e-3) -> List[DetectionAgreement]:
    """Post-process both runs and match their detections image by image."""
    det_a = run_detections(a["scores"], a["loc"], sizes, cfg)
    det_b = run_detections(b["scores"], b["loc"], sizes, cfg)
    ids = list(image_ids) if image_ids is not None else [str(i) for i in range(len(det_a))]
    return [match_detections(x, y, iou, score_tol, i, ids[i]) for i, (x, y) in enumerate(zip(det_a, det_b))]


# ------------------------------------------------------------------ tolerances
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
        try:
            for pair, outputs in _entries(data["pairs"]):
                self.pairs[pair] = {
                    out: {metric: self._bound(metric, spec) for metric, spec in _entries(bounds)}
                    for out, bounds in _entries(outputs)
                }
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise InputFileError(source, f"not a tolerance file ({type(exc).__name__}: {exc})") from None
        if "default" not in self.pairs:
            raise InputFileError(source, "tolerance file has no 'default' pair")

    @staticmethod
    def _bound(metric: str, spec: Mapping) -> Bound:
        kinds = [k for k in ("max", "min") if k in spec]
        if len(kinds) != 1 or not str(spec.get("reason", "")).strip():
            raise ValueError(f"bound {metric!r} needs exactly one of max/min and a reason, got {dict(spec)}")
        return Bound(metric, kinds[0], float(spec[kinds[0]]), str(spec["reason"]))

    @classmethod
    def load(cls, path: PathLike = DEFAULT_TOLERANCES_FILE) -> "Tolerances":
        path = Path(path)
        if not path.is_file():
            raise InputFileError(path, "tolerance file not found")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise InputFileError(path, f"not valid JSON ({exc})") from None
        return cls(data, str(path))

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
    from .environment import library_versions

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
    if not path.is_file():
        raise InputFileError(path, "saved run not found")
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in ("scores", "loc", "image_ids", "image_sizes") if k not in data.files]
            if missing:
                raise InputFileError(path, f"not a saved run: lacks {missing} (has {data.files})")
            scores, loc = data["scores"], data["loc"]
            ids, sizes = [str(i) for i in data["image_ids"]], data["image_sizes"]
    except (OSError, ValueError) as exc:
        raise InputFileError(path, f"not a readable .npz ({exc})") from None
    meta_path = path.with_suffix(".json")
    meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.is_file() else {}
    return SavedRun(path.stem, scores, loc, ids, sizes, meta)


def compare_saved(a: SavedRun, b: SavedRun, pair: Optional[str] = None, tolerances: Optional[Tolerances] = None,
                  detections: bool = True, cfg=None, verbose=None) -> ToleranceReport:
    """Compare two saved runs of the same images under their pair's bounds.

    ``pair`` defaults to the runs' ``backend`` metadata (``om/onnxruntime``);
    ``verbose`` (e.g. ``print``) receives one JSON line per measurement.
    """
    if a.image_ids != b.image_ids:
        raise ValueError(f"runs {a.name} and {b.name} hold different images: {a.image_ids[:3]}... vs {b.image_ids[:3]}...")
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
