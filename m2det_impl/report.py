"""Conformance reports: what was measured beside what the guide publishes.

Markdown for people, JSON for tools, and a PNG of one image's detections so a
reader can see at a glance whether the boxes land on objects.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import cv2
import numpy as np

from .config import M2DetConfig
from .errors import InputFileError
from .io_utils import atomic_write_bytes, atomic_write_json, atomic_write_text
from .published import PUBLISHED_AP, PUBLISHED_THROUGHPUT

__all__ = ["draw_detections", "write_run_report", "write_conformance_report"]


def draw_detections(image_bgr: np.ndarray, results: Sequence[dict], names: Dict[int, str],
                    min_score: float = 0.3, max_boxes: int = 30) -> np.ndarray:
    """Draw the highest-scoring COCO results of one image (bbox x, y, w, h)."""
    canvas = image_bgr.copy()
    chosen = sorted((r for r in results if r["score"] >= min_score), key=lambda r: -r["score"])[:max_boxes]
    for r in chosen:
        x, y, w, h = r["bbox"]
        colour = tuple(int(c) for c in np.random.RandomState(r["category_id"]).randint(64, 256, 3))
        p1, p2 = (int(round(x)), int(round(y))), (int(round(x + w)), int(round(y + h)))
        cv2.rectangle(canvas, p1, p2, colour, 2)
        label = f"{names.get(r['category_id'], r['category_id'])} {r['score']:.2f}"
        cv2.putText(canvas, label, (p1[0], max(p1[1] - 4, 10)), cv2.FONT_HERSHEY_SIMPLEX, 0.45, colour, 1,
                    cv2.LINE_AA)
    return canvas


def _category_names(annotations: Optional[Path]) -> Dict[int, str]:
    if annotations is None:
        return {}
    data = json.loads(Path(annotations).read_text(encoding="utf-8"))
    return {int(c["id"]): str(c.get("name", c["id"])) for c in data.get("categories", [])}


def _ap_rows(summaries: Sequence[dict]) -> List[str]:
    rows = ["| backend | batch | images | AP@[.50:.95] | published | delta | weights |", "|---|---|---|---|---|---|---|"]
    for s in summaries:
        ident = s.get("identity", {})
        golden = s.get("golden_weights", False)
        rows.append(
            f"| {ident.get('backend', '?')} | {s.get('batch_size', '?')} | {s.get('num_images', '?')} | "
            f"{s['ap']:.4f} | {PUBLISHED_AP:.3f} | {s['ap'] - PUBLISHED_AP:+.4f} | "
            f"{'golden (AP meaningless)' if golden else ident.get('weights', '?')} |"
        )
    return rows


def _report_markdown(summaries: Sequence[dict], bench: Optional[dict], png: Optional[str]) -> str:
    lines = ["# M2Det conformance report", "",
             "## Accuracy (COCO AP@[.50:.95])", "", *_ap_rows(summaries), ""]
    if any(s.get("golden_weights") for s in summaries):
        lines += ["> **Golden weights**: no trained checkpoint was given. The pipeline ran for real, "
                  "but the AP says nothing about accuracy. Pass `--weights m2det512_vgg.pth`.", ""]
    lines += ["## Throughput (images/s)", ""]
    if bench:
        from .bench import bench_markdown

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
        from .preprocess import load_image

        record = records[0]
        try:
            image = load_image(record.path)
        except InputFileError:
            image = None
        if image is not None:
            mine = [r for r in results if r["image_id"] == record.image_id]
            canvas = draw_detections(image, mine, _category_names(annotations))
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
    paths.insert(0, atomic_write_text(out / "report.md", _report_markdown([summary], bench, png_name)))
    return paths


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise InputFileError(path, f"{what} not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputFileError(path, f"not a readable {what} ({exc})") from None


def write_conformance_report(runs: Sequence[Path], output: Optional[Path] = None,
                             bench: Optional[Path] = None, compare: Sequence[Path] = ()) -> List[Path]:
    """One report over several run folders (e.g. one per backend or batch size),
    with the precision variants of ``m2det compare`` (its compare.json files)."""
    runs = [Path(r) for r in runs]
    summaries = [_read_json(r / "summary.json", "run summary (summary.json)") for r in runs]
    for r, s in zip(runs, summaries):
        if not (isinstance(s, dict) and isinstance(s.get("ap"), (int, float)) and not isinstance(s["ap"], bool)
                and isinstance(s.get("identity", {}), dict)):
            raise InputFileError(r / "summary.json", "not a run summary written by m2det run (needs a number 'ap')")
    bench_data = _read_json(bench, "bench file") if bench else None
    variants = [_read_json(Path(c), "comparison (compare.json)") for c in compare]
    out = Path(output) if output else runs[0]
    png = "detections.png" if (out / "detections.png").exists() else None
    text = _report_markdown(summaries, bench_data, png)
    if variants:
        from .variants import section_markdown

        text += "\n# Precision variants (m2det compare)\n\n" + "\n".join(section_markdown(v) for v in variants)
    return [
        atomic_write_text(out / "report.md", text),
        atomic_write_json(out / "report.json", {"runs": summaries, "bench": bench_data, "variants": variants,
                                                "published": {"ap": PUBLISHED_AP, "throughput": PUBLISHED_THROUGHPUT}},
                          indent=2),
    ]
