"""Gather one night's figures into the results file ``m2det regress`` reads.

Inputs are what the other commands already wrote, so nothing is measured
twice: ``summary.json`` of each ``m2det run`` folder (AP per backend and batch
size), ``bench.json`` of ``m2det bench`` (pure-inference and end-to-end
images/s per batch size, host-side images/s), and the runs the test suite
saved with ``--save-outputs DIR`` (per-output tolerance statistics between
runtimes, and against the reference's golden outputs).

The results file (format ``m2det-results/1``)::

    {"format", "platform", "created", "notes": [...],
     "machine": {cpu, cores, arch, soc, cann, driver, gpu},
     "workload": {size, weights, dataset, images, precision},
     "environment": {library versions, precision mode},
     "figures": {"ap": {"onnxruntime/bs1": ...}, "throughput": {...},
                 "end_to_end": {...}, "host_throughput": {"host": ...},
                 "tolerance": {"onnxruntime-vs-torch/scores/max_abs": ...}},
     "sources": {...}}

Every tolerance statistic is lower-is-better (cosine is stored as
``cosine_distance = 1 - cosine``, detection agreement as ``disagreement``), so
one rule, "may not grow", covers them all.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

from m2det_impl._io import PathLike, atomic_write_json, output_files, read_json_object, read_npz, reading_fields
from m2det_impl.backends.registry import DEFAULT_RUNTIME, runtimes
from m2det_impl.errors import InputFileError, UsageError
from m2det_impl.gating.machine import machine_identity, platform_name
from m2det_impl.gating.regress import RESULTS_FORMAT

__all__ = [
    "dataset_identity",
    "tolerance_figures",
    "collect_results",
    "collect_results_to",
]

GOLDEN_WEIGHTS_TAG = "golden0"  # the weights of fixtures/golden (salt 0)
REFERENCE_BACKEND = DEFAULT_RUNTIME
_STATISTICS = ("max_abs", "mean_abs", "peak_rel", "rel_l2", "cosine_distance", "nonfinite")


def dataset_identity(annotation_file: PathLike) -> str:
    """``<file name>#sha256:<12 hex>``: the same file on any machine, any checkout."""
    from m2det_impl.pipeline.dataset import coco_records

    path = Path(annotation_file)
    if not path.is_file():
        raise InputFileError(path, "annotation file not found")
    coco_records(path, Path("."))  # read as a COCO annotation file: a damaged one never names a workload
    return f"{path.name}#sha256:{hashlib.sha256(path.read_bytes()).hexdigest()[:12]}"


class _Figures:
    """figures[kind][name] = value, refusing the same figure from two sources."""

    def __init__(self) -> None:
        self.values: Dict[str, Dict[str, float]] = {}
        self.origin: Dict[str, str] = {}

    def add(self, kind: str, name: str, value: float, source: str) -> None:
        key = f"{kind}/{name}"
        if key in self.origin:
            raise InputFileError(source, f"figure {key} is also given by {self.origin[key]}")
        if not np.isfinite(value):
            raise InputFileError(source, f"figure {key} is not finite: {value}")
        self.values.setdefault(kind, {})[name] = float(value)
        self.origin[key] = source


def _weights_label(tag: object, golden: object) -> str:
    tag = str(tag or "")
    if golden is True or tag.startswith("golden"):
        return tag or GOLDEN_WEIGHTS_TAG
    return "trained"


# ------------------------------------------------------------------ runs
def _add_run(folder: Path, figures: _Figures, workloads: Dict[str, dict]) -> None:
    path = folder / "summary.json" if folder.is_dir() else folder
    summary = read_json_object(path, "run summary (m2det run's summary.json)")
    with reading_fields(path, "a summary.json of m2det run", "'identity' with 'backend' and 'size', 'batch_size', "
                                                             "'ap' and 'num_images'"):
        identity = summary["identity"]
        backend, batch, ap = identity["backend"], int(summary["batch_size"]), float(summary["ap"])
        workload = {"size": int(identity["size"]),
                    "weights": _weights_label(identity.get("weights"), summary.get("golden_weights")),
                    "images": int(summary["num_images"])}
        skipped = len(summary.get("skipped") or ())
    if skipped:
        raise InputFileError(path, f"{skipped} image(s) were skipped: its AP is not comparable")
    figures.add("ap", f"{backend}/bs{batch}", ap, str(path))
    workloads[str(path)] = workload


def _add_scored(name: str, path: Path, figures: _Figures) -> int:
    """``ap/<name>`` from any summary with ``ap`` and ``num_images`` (``m2det
    evaluate``'s, e.g. of a perfect network's outputs: weights play no part)."""
    summary = read_json_object(path, "summary (m2det evaluate's --summary)")
    with reading_fields(path, "an evaluation summary", "'ap' and 'num_images'"):
        ap, images = float(summary["ap"]), int(summary["num_images"])
        skipped = len(summary.get("skipped") or ())
    if skipped:
        raise InputFileError(path, f"{skipped} image(s) were skipped: its AP is not comparable")
    figures.add("ap", name, ap, str(path))
    return images


# ------------------------------------------------------------------ bench
def _rate(row: Mapping[str, object], path: Path) -> float:
    """A row's ``images_per_second``; bench writes null for a figure it could not measure (an execute
    time of zero), which is no figure to gate on: said so, rather than as a damaged file."""
    value = row["images_per_second"]
    if value is None:
        raise InputFileError(path, f"batch {row.get('batch_size')}: images_per_second was not measured (null), so "
                                   f"there is no figure to collect: bench again")
    return float(value)  # type: ignore[arg-type]


def _add_bench(path: Path, figures: _Figures, machine: Mapping[str, object]) -> dict:
    data = read_json_object(path, "bench file (m2det bench's bench.json)")
    with reading_fields(path, "a bench.json of m2det bench", "'backend', 'inference' rows with 'batch_size' and "
                                                             "'images_per_second', and 'machine'"):
        backend = str(data["backend"])
        for row in data["inference"]:
            figures.add("throughput", f"{backend}/bs{int(row['batch_size'])}", _rate(row, path), str(path))
        for row in data.get("end_to_end") or []:
            figures.add("end_to_end", f"{backend}/bs{int(row['batch_size'])}", _rate(row, path), str(path))
        versus = data.get("versus")  # a second backend measured side by side (m2det bench --versus)
        if versus:
            for row in versus["inference"]:
                figures.add("throughput", f"{versus['backend']}/bs{int(row['batch_size'])}", _rate(row, path),
                            str(path))
        if data.get("host"):
            # one figure of the host, however many bench files measured it (one per static-batch .om): the best
            value = float(data["host"]["images_per_second"])
            previous = figures.values.get("host_throughput", {}).get("host")
            if previous is None:
                figures.add("host_throughput", "host", value, str(path))
            else:
                figures.values["host_throughput"]["host"] = max(previous, value)
        measured_on = dict(data.get("machine", {}))
    for key, bench_key in (("cpu", "cpu"), ("cores", "cores"), ("arch", "machine")):
        if bench_key in measured_on and measured_on[bench_key] != machine.get(key):
            raise InputFileError(path, f"measured on another machine ({bench_key} {measured_on[bench_key]!r}, "
                                       f"here {machine.get(key)!r}): collect on the machine that measured")
    return measured_on


# ------------------------------------------------------------------ tolerances
NONFINITE = float(np.finfo(np.float64).max)  # JSON has no infinity: a NaN/Inf statistic is stored as this


def _worst(values: Sequence[float], statistic: str) -> float:
    values = [1.0 - float(v) if statistic == "cosine_distance" else float(v) for v in values]
    return max(v if np.isfinite(v) else NONFINITE for v in values)


def _pair_statistics(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray], ids: Sequence[str]) -> Dict[str, float]:
    from m2det_impl.evaluation.metrics import compare_runs

    metrics = compare_runs(a, b, list(ids))
    out: Dict[str, float] = {}
    for output in ("scores", "loc"):
        mine = [m for m in metrics if m.output == output]
        for statistic in _STATISTICS:
            source = "cosine" if statistic == "cosine_distance" else statistic
            out[f"{output}/{statistic}"] = _worst([m.value(source) for m in mine], statistic)
    return out


def _golden_reference(count: int, golden_forward: Optional[PathLike]) -> Dict[str, np.ndarray]:
    """The reference's own outputs for the golden images (the repository's
    fixtures/golden/forward_m2det512.npz: a test fixture, not package data)."""
    if golden_forward is None:
        raise UsageError("saved runs of the golden images need the reference's outputs to compare with: give "
                         "--golden-forward fixtures/golden/forward_m2det512.npz (in a source checkout)")
    path = Path(golden_forward)
    keys = [f"{kind}_{i}" for i in range(count) for kind in ("scores", "loc")]
    data = read_npz(path, "golden forward file", keys)
    with reading_fields(path, "the reference's golden forward file", "scores_I and loc_I arrays of one shape each"):
        return {"scores": np.stack([data[f"scores_{i}"] for i in range(count)]),
                "loc": np.stack([data[f"loc_{i}"] for i in range(count)])}


def _config_for(scores: np.ndarray):
    from m2det_impl.network.config import get_config

    for size in (512, 320, 704, 800):
        cfg = get_config(size)
        if cfg.num_priors == scores.shape[1]:
            return cfg
    raise UsageError(f"no M2Det preset has {scores.shape[1]} priors")


def tolerance_figures(folder: PathLike, detections: bool = True,
                      golden_forward: Optional[PathLike] = None) -> Dict[str, float]:
    """Tolerance statistics of the runs saved in ``folder`` (``--save-outputs``).

    Runs are named ``<backend>__<images>__<weights>.npz``. Within each
    (images, weights) group every backend is compared with ONNX Runtime on the
    CPU (``<backend>-vs-onnxruntime``), and, for the golden images with golden
    weights, every backend with the reference's own outputs
    (``<backend>-vs-golden``; the golden file holds every 8th prior's scores).
    Names: ``<pair>[@<images>]/<output>/<statistic>``, the worst over images.
    """
    from m2det_impl.evaluation.agreement import detection_agreement
    from m2det_impl.evaluation.tolerances import load_run

    folder = Path(folder)
    if not folder.is_dir():
        raise InputFileError(folder, "saved-runs folder not found (pytest --save-outputs DIR writes it)")
    groups: Dict[tuple, Dict[str, object]] = {}
    for path in sorted(folder.glob("*.npz")):
        parts = path.stem.split("__")
        if len(parts) != 3 or not all(parts):
            continue
        backend, images, weights = parts
        groups.setdefault((images, weights), {})[backend] = path
    out: Dict[str, float] = {}
    for (images, weights), runs in sorted(groups.items()):
        loaded = {backend: load_run(path) for backend, path in sorted(runs.items())}
        suffix = "" if images == "golden" else f"@{images}"
        reference = loaded.get(REFERENCE_BACKEND)
        for backend, run in loaded.items():
            if reference is not None and backend != REFERENCE_BACKEND:
                if run.image_ids != reference.image_ids:
                    raise InputFileError(runs[backend], f"holds images {run.image_ids[:3]}..., "
                                                        f"{runs[REFERENCE_BACKEND]} holds {reference.image_ids[:3]}...")
                pair = f"{backend}-vs-{REFERENCE_BACKEND}{suffix}"
                for key, value in _pair_statistics(run.outputs(), reference.outputs(), run.image_ids).items():
                    out[f"{pair}/{key}"] = value
                if detections:
                    agreements = detection_agreement(run.outputs(), reference.outputs(),
                                                     [tuple(int(v) for v in s) for s in run.image_sizes],
                                                     _config_for(run.scores),
                                                     run.image_ids)
                    out[f"{pair}/detections/disagreement"] = max(1.0 - a.fraction for a in agreements)
            if images == "golden" and weights == GOLDEN_WEIGHTS_TAG:
                n = len(run.image_ids)
                mine = {"scores": run.scores[:, ::8], "loc": run.loc}
                for key, value in _pair_statistics(mine, _golden_reference(n, golden_forward), run.image_ids).items():
                    out[f"{backend}-vs-golden/{key}"] = value
    if not out:
        raise InputFileError(folder, "no saved runs named <backend>__<images>__<weights>.npz to compare")
    return out


# ------------------------------------------------------------------ all
def collect_results(runs: Sequence[PathLike] = (), bench: Sequence[PathLike] = (),
                    saved_runs: Optional[PathLike] = None, annotations: Optional[PathLike] = None,
                    scored: Sequence[Tuple[str, PathLike]] = (),
                    precision: Optional[str] = None, platform: Optional[str] = None,
                    notes: Sequence[str] = (), detections: bool = True,
                    machine: Optional[Mapping[str, object]] = None,
                    golden_forward: Optional[PathLike] = None) -> dict:
    """The results file's content (see the module docstring).

    ``runs``: ``m2det run`` folders; ``scored``: ``(name, summary.json)`` pairs
    of other evaluations on the same images (``ap/<name>``); ``bench``:
    ``bench.json`` files; ``saved_runs``: a ``--save-outputs`` folder.
    """
    from m2det_impl.environment import library_versions

    if not runs and not bench and saved_runs is None and not scored:
        raise UsageError("nothing to collect: give run folders, bench files, summaries or a saved-runs folder")
    machine = dict(machine) if machine is not None else machine_identity()
    figures = _Figures()
    workloads: Dict[str, dict] = {}
    for run in runs:
        _add_run(Path(run), figures, workloads)
    distinct = {json.dumps(w, sort_keys=True) for w in workloads.values()}
    if len(distinct) > 1:
        listing = "; ".join(f"{p}: {w}" for p, w in workloads.items())
        raise InputFileError(None, f"the runs are of different workloads, their AP cannot share a baseline: {listing}")
    workload: Dict[str, object] = dict(next(iter(workloads.values()))) if workloads else {}
    for name, path in scored:
        images = _add_scored(name, Path(path), figures)
        if workload.setdefault("images", images) != images:
            raise InputFileError(path, f"scores {images} images, the other runs {workload['images']}: "
                                       "not the same workload")
    for path in bench:
        _add_bench(Path(path), figures, machine)
    if saved_runs is not None:
        for name, value in tolerance_figures(saved_runs, detections, golden_forward).items():
            figures.add("tolerance", name, value, str(saved_runs))
    backends = {name.split("/")[0] for kind in ("ap", "throughput") for name in figures.values.get(kind, {})}
    known = runtimes()
    fp16 = any(known[b].precision == "fp16" for b in backends if b in known)
    workload["precision"] = precision or ("fp16" if fp16 else "fp32")
    if annotations is not None:
        workload["dataset"] = dataset_identity(annotations)
    versions = library_versions()
    versions.pop("npu", None)  # the NPU's versions are machine keys
    versions["precision_mode"] = workload["precision"]
    return {
        "format": RESULTS_FORMAT,
        "platform": platform or platform_name(machine, str(workload["precision"])),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "notes": list(notes),
        "machine": machine,
        "workload": workload,
        "environment": versions,
        "figures": figures.values,
        "sources": {"runs": [str(r) for r in runs], "scored": {n: str(p) for n, p in scored},
                    "bench": [str(b) for b in bench], "saved_runs": None if saved_runs is None else str(saved_runs)},
    }


def collect_results_to(output: PathLike, **kwargs) -> Tuple[Path, dict]:
    """:func:`collect_results` (``kwargs``), written atomically to ``output``: ``(path, content)``.
    The output is checked writable (and not a folder) before anything is read, and a collect that
    fails leaves no new empty folder behind."""
    with output_files(output) as (out,):
        data = collect_results(**kwargs)
        return atomic_write_json(out, data, indent=2), data
