"""Conformance reports: what was measured beside what the guide publishes.

Markdown for people, JSON for tools, and a PNG of one image's detections so a
reader can see at a glance whether the boxes land on objects.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import cv2
import numpy as np

from m2det_impl._io import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    ensure_output_folder,
    read_json,
    read_json_object,
    reading_fields,
)
from m2det_impl.errors import InputFileError, UsageError
from m2det_impl.network.config import M2DetConfig
from m2det_impl.published import PUBLISHED_AP, PUBLISHED_THROUGHPUT

__all__ = [
    "draw_detections",
    "write_run_report",
    "write_conformance_report",
    "weights_label",
]


GT_COLOUR = (60, 200, 60)  # BGR: green, ground truth
DET_COLOUR = (0, 140, 255)  # BGR: orange, detections
BANNER_COLOUR = (40, 40, 200)  # BGR: red, the golden-weights warning


def _text_box(text: str, origin, scale: float = 0.45):
    """(x1, y1, x2, y2) the text would cover at ``origin`` (its baseline's left end)."""
    (w, h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    x, y = int(origin[0]), int(origin[1])
    return x, y - h - base, x + w + 2, y + base


def _text(canvas: np.ndarray, text: str, origin, colour, scale: float = 0.45, background=(0, 0, 0)) -> None:
    """Text on a filled box, so it stays readable on any picture."""
    x1, y1, x2, y2 = _text_box(text, origin, scale)
    cv2.rectangle(canvas, (x1, y1), (x2, y2), background, -1)
    cv2.putText(canvas, text, (x1 + 1, int(origin[1])), cv2.FONT_HERSHEY_SIMPLEX, scale, colour, 1, cv2.LINE_AA)


def _overlaps(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def draw_detections(image_bgr: np.ndarray, results: Sequence[dict], names: Dict[int, str],
                    ground_truth: Sequence[dict] = (), title: str = "", golden: bool = False,
                    min_score: float = 0.3, max_boxes: int = 20, max_labels: int = 6,
                    banner: Optional[str] = None) -> np.ndarray:
    """One image's detections (orange) over its ground truth (green), with a title bar and a legend.

    Only the ``max_boxes`` highest-scoring detections at or above
    ``min_score`` are drawn and only the ``max_labels`` best are labelled, so
    the labels stay readable. ``golden`` adds a banner saying that the weights
    are untrained and the boxes mean nothing; ``banner`` puts another such warning there instead
    (the simulated NPU's: no model at all).
    """
    if golden and banner is None:
        banner = "GOLDEN (UNTRAINED) WEIGHTS: the boxes mean nothing; pass --weights for a real model"
    golden = banner is not None
    bar = 22
    height, width = image_bgr.shape[:2]
    rows = 3 if golden else 2
    canvas = np.full((height + bar * rows, max(width, 420), 3), 255, np.uint8)
    top = bar * (2 if golden else 1)
    canvas[top:top + height, :width] = image_bgr
    for g in ground_truth:
        x, y, w, h = g["bbox"]
        cv2.rectangle(canvas, (int(round(x)), int(round(y)) + top), (int(round(x + w)), int(round(y + h)) + top),
                      GT_COLOUR, 3)
    chosen = sorted((r for r in results if r["score"] >= min_score), key=lambda r: -r["score"])[:max_boxes]
    placed: List[tuple] = []
    for r in chosen:
        x, y, w, h = r["bbox"]
        p1 = (int(round(x)), int(round(y)) + top)
        cv2.rectangle(canvas, p1, (int(round(x + w)), int(round(y + h)) + top), DET_COLOUR, 1)
    for r in chosen:  # labels after all boxes, best first, never over another label
        if len(placed) == max_labels:
            break
        x, y = r["bbox"][:2]
        origin = (max(int(round(x)), 0), max(int(round(y)) + top - 3, top + 12))
        label = f"{names.get(r['category_id'], r['category_id'])} {r['score']:.2f}"
        box = _text_box(label, origin)
        if any(_overlaps(box, other) for other in placed):
            continue
        placed.append(box)
        _text(canvas, label, origin, (255, 255, 255), background=DET_COLOUR)
    _text(canvas, title[:90], (4, 15), (255, 255, 255), background=(60, 60, 60))
    if golden:
        _text(canvas, banner, (4, bar + 15), (255, 255, 255), scale=0.42, background=BANNER_COLOUR)
    legend = (f"green: ground truth ({len(ground_truth)})   orange: detections, score >= {min_score:.2f} "
              f"(top {len(chosen)} of {len(results)}, {len(placed)} labelled)")
    _text(canvas, legend, (4, top + height + 15), (0, 0, 0), scale=0.4, background=(255, 255, 255))
    return canvas


def _category_names(annotations: Optional[Path]) -> Dict[int, str]:
    if annotations is None:
        return {}
    data = read_json(annotations, "COCO annotation file")
    return {int(c["id"]): str(c.get("name", c["id"])) for c in data.get("categories", [])}


def _ground_truth(annotations: Optional[Path], image_id: int) -> List[dict]:
    if annotations is None:
        return []
    data = read_json(annotations, "COCO annotation file")
    return [a for a in data.get("annotations", []) if a.get("image_id") == image_id and "bbox" in a]


NO_MODEL_BANNER = "SIMULATED NPU, NO MODEL: the boxes are recorded reference cases, not detections"


def weights_label(summary: dict) -> str:
    """What produced a run's numbers, in a few words, from its summary's ``weights`` record
    (older summaries: the identity's tag and ``golden_weights``)."""
    record = summary.get("weights")
    if isinstance(record, dict):
        kind = record.get("kind")
        short = str(record.get("sha256", ""))[:12]
        name = Path(str(record.get("path", "?"))).name
        if kind == "golden":
            return "golden (AP meaningless)"
        if kind == "none":
            return "none: simulated NPU, outputs are reference cases (AP meaningless)"
        if kind == "unknown":
            return "unknown: scored from output files that do not record their model"
        if kind == "checkpoint":
            return f"checkpoint {name} (sha256 {short})"
        if record.get("path"):  # a model file that brings its own weights
            source = str(record.get("exported_from") or "")
            made = " (a cached export of golden weights: AP meaningless)" if source.startswith("golden") else ""
            return f"{kind} file {name}, its own weights (sha256 {short}){made}"
    if summary.get("golden_weights"):
        return "golden (AP meaningless)"
    return str((summary.get("identity") or {}).get("weights", "?"))


def _weights_kind(summary: dict) -> str:
    record = summary.get("weights")
    if isinstance(record, dict) and str(record.get("exported_from", "")).startswith("golden"):
        return "golden"
    if isinstance(record, dict) and record.get("kind"):
        return str(record["kind"])
    return "golden" if summary.get("golden_weights") else "unknown"


def _cell(text: object) -> str:
    """A table cell's text: a ``|`` in it would split the cell."""
    return str(text).replace("|", "\\|")


def _ap_rows(summaries: Sequence[dict], runs: Sequence[str]) -> List[str]:
    """One row per run, told apart by its folder (two runs of one backend and batch size differ in it)."""
    rows = ["| run | backend | batch | images | dataset | AP@[.50:.95] | published (minival2014) | delta | weights |",
            "|---|---|---|---|---|---|---|---|---|"]
    for s, run in zip(summaries, runs):
        ident = s.get("identity", {})
        kind = _weights_kind(s)  # golden weights or no model: a delta to the published AP would mean nothing
        delta = {"golden": "n/a (golden weights)", "none": "n/a (no model)"}.get(kind, f"{s['ap'] - PUBLISHED_AP:+.4f}")
        rows.append(
            f"| {_cell(run)} | {ident.get('backend', '?')} | {s.get('batch_size', '?')} | {s.get('num_images', '?')} | "
            f"{s.get('dataset', '?')} | {s['ap']:.4f} | {PUBLISHED_AP:.3f} | {delta} | {_cell(weights_label(s))} |"
        )
    return rows


def _report_markdown(summaries: Sequence[dict], bench: Optional[dict], png: Optional[str],
                     runs: Sequence[str]) -> str:
    lines = ["# M2Det conformance report", "",
             "## Accuracy (COCO AP@[.50:.95])", "", *_ap_rows(summaries, runs), ""]
    if any(s.get("golden_weights") for s in summaries):
        lines += ["> **Golden weights**: no trained checkpoint was given. The pipeline ran for real, "
                  "but the AP says nothing about accuracy. Pass `--weights m2det512_vgg.pth`.", ""]
    if any(_weights_kind(s) == "none" for s in summaries):
        lines += ["> **No model**: the simulated NPU returns the reference's recorded output cases for every "
                  "image, whatever the image. Its boxes and AP measure nothing but the host pipeline.", ""]
    lines += ["## Throughput (images/s)", ""]
    if bench:
        from m2det_impl.gating.bench_report import bench_markdown

        lines += bench_markdown(bench).splitlines()[2:]
    else:
        lines += ["Not measured in this report: run `m2det bench` and pass `--bench bench.json`.", "",
                  "| batch | 310P3 published | T4 published |", "|---|---|---|"]
        lines += [f"| {b} | {v} | {PUBLISHED_THROUGHPUT['T4'][b]} |" for b, v in PUBLISHED_THROUGHPUT["310P3"].items()]
    for s in summaries:
        tol = s.get("tolerances")
        if tol:
            lines += ["", "## Output tolerances", "", "```", json.dumps(tol, indent=2), "```"]
    if png:
        lines += ["", "## Detections on one image", "", f"![detections]({png})"]
    return "\n".join(lines) + "\n"


def write_run_report(out: Path, summary: dict, cfg: M2DetConfig, records, results: Sequence[dict],
                     annotations: Optional[Path], bench: Optional[dict] = None) -> List[Path]:
    """report.md, report.json and detections.png for one run folder."""
    out = Path(out)
    png_name = None
    paths: List[Path] = []
    if records:
        from m2det_impl.pipeline.preprocess import load_image

        record = records[0]
        try:
            image = load_image(record.path)
        except InputFileError:
            image = None
        if image is not None:
            mine = [r for r in results if r["image_id"] == record.image_id]
            kind = _weights_kind(summary)
            golden = kind == "golden"
            backend = (summary.get("identity") or {}).get("backend", "?")
            title = f"{record.path.name} (image {record.image_id}), {backend}"
            canvas = draw_detections(image, mine, _category_names(annotations),
                                     ground_truth=_ground_truth(annotations, record.image_id), title=title,
                                     golden=golden, banner=NO_MODEL_BANNER if kind == "none" else None)
            ok, encoded = cv2.imencode(".png", canvas)
            if ok:
                png_name = "detections.png"
                paths.append(atomic_write_bytes(out / png_name, encoded.tobytes()))
    summary = dict(summary)
    summary.setdefault("size", cfg.size)
    paths.insert(0, atomic_write_json(out / "report.json", {"runs": [summary], "bench": bench,
                                                            "published": {"ap": PUBLISHED_AP,
                                                                          "throughput": PUBLISHED_THROUGHPUT}},
                                      indent=2))
    paths.insert(0, atomic_write_text(out / "report.md", _report_markdown([summary], bench, png_name, [out.name])))
    return paths


def _read_rendered(path: Path, what: str, render, expected: str) -> dict:
    """A JSON object the report renders (``render(data)``) and copies into report.json, checked by doing
    both at reading: a field missing or of the wrong type, an unknown kind or a NaN is an
    :class:`InputFileError` naming the file, before any folder is made."""
    data = read_json_object(path, what)
    try:
        with reading_fields(path, f"a {what}", expected):
            render(data)
            json.dumps(data, allow_nan=False)  # report.json is strict JSON
    except UsageError as exc:  # the renderer's own refusal (an unknown kind) names no file
        raise InputFileError(path, str(exc)) from None
    return data


def _read_bench(path: Path) -> dict:
    """A bench.json of ``m2det bench`` (every field the report shows is there)."""
    from m2det_impl.gating.bench_report import bench_markdown

    return _read_rendered(path, "bench.json written by m2det bench", bench_markdown,
                          "'backend', 'size', 'machine' and 'inference' rows with 'batch_size'")


def _read_comparison(path: Path) -> dict:
    """A compare.json of ``m2det compare`` (every field its section shows is there)."""
    from m2det_impl.evaluation.variants import section_markdown

    return _read_rendered(path, "compare.json written by m2det compare", section_markdown,
                          "'kind' and the fields m2det compare writes for it")


def write_conformance_report(runs: Sequence[Path], output: Optional[Path] = None,
                             bench: Optional[Path] = None, compare: Sequence[Path] = ()) -> List[Path]:
    """One report over several run folders (e.g. one per backend or batch size),
    with the precision variants of ``m2det compare`` (its compare.json files)."""
    runs = [Path(r) for r in runs]
    summaries = [read_json(r / "summary.json", "run summary (summary.json)") for r in runs]
    for r, s in zip(runs, summaries):
        if not (isinstance(s, dict) and isinstance(s.get("ap"), (int, float)) and not isinstance(s["ap"], bool)
                and math.isfinite(s["ap"]) and isinstance(s.get("identity", {}), dict)):
            raise InputFileError(r / "summary.json", "not a run summary written by m2det run (needs a number 'ap')")
        with reading_fields(r / "summary.json", "a run summary written by m2det run"):
            json.dumps(s, allow_nan=False)  # report.json is strict JSON
    bench_data = _read_bench(Path(bench)) if bench else None
    variants = [_read_comparison(Path(c)) for c in compare]
    out = ensure_output_folder(output if output else runs[0])  # after the (cheap) reading: a bad input leaves no folder
    png = "detections.png" if (out / "detections.png").exists() else None
    text = _report_markdown(summaries, bench_data, png, [str(r) for r in runs])
    if variants:
        from m2det_impl.evaluation.variants import section_markdown

        text += "\n# Precision variants (m2det compare)\n\n" + "\n".join(section_markdown(v) for v in variants)
    return [
        atomic_write_text(out / "report.md", text),
        atomic_write_json(out / "report.json", {"runs": summaries, "bench": bench_data, "variants": variants,
                                                "published": {"ap": PUBLISHED_AP, "throughput": PUBLISHED_THROUGHPUT}},
                          indent=2),
    ]
