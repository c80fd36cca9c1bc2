"""The accuracy gate: COCO AP@[.50:.95] on minival2014 >= the published 37.8%.

One-sided, the published figure minus the tolerance in fixtures/gates.json
(zero); the measured AP is printed whether the gate passes or not. Runs are
journaled under the cache folder, so an interrupted CPU run (about 4 hours on
2 cores) resumes where it stopped.
"""

import json
from pathlib import Path

import pytest

from m2det_impl.backends.cache import cache_dir
from m2det_impl.network.config import get_config
from m2det_impl.pipeline.dataset import coco_records, find_annotation_file
from m2det_impl.published import PUBLISHED_AP
from m2det_impl.resources import GATES_FILE

pytestmark = [pytest.mark.coco]

GATES = json.loads(GATES_FILE.read_text())
AP_FLOOR = PUBLISHED_AP - GATES["accuracy"]["absolute_tolerance"]


def _score(backend, coco_root: Path, batch_size: int, tag: str):
    from m2det_impl.pipeline.coco import category_ids, evaluate, load_annotations
    from m2det_impl.pipeline.journal import PartialStore
    from m2det_impl.pipeline.stream import run_pipeline

    cfg = get_config(512)
    annotations = find_annotation_file(coco_root)
    images = coco_root / "val2014"
    records = coco_records(annotations, images)
    gt = load_annotations(annotations)
    store = PartialStore(cache_dir() / "accuracy-runs" / f"{tag}-bs{batch_size}.jsonl",
                         {"tag": tag, "batch_size": batch_size, "annotations": str(annotations)})
    outcome = run_pipeline(records, backend, cfg, category_ids(gt), batch_size=batch_size, store=store)
    summary = evaluate(gt, outcome.results, image_ids=outcome.image_ids)
    return summary, len(records)


def _gate(rows):
    lines = [f"{name}: AP {ap:.4f} over {n} images (published {PUBLISHED_AP:.3f}, floor {AP_FLOOR:.4f}) "
             f"{'ok' if ap >= AP_FLOOR else 'BELOW'}" for name, ap, n in rows]
    print("\n" + "\n".join(lines))
    failed = [line for (name, ap, n), line in zip(rows, lines) if ap < AP_FLOOR]
    assert not failed, "accuracy gate failed:\n" + "\n".join(failed)


@pytest.mark.npu
def test_om_ap_meets_published(om_paths, npu_runtime, device_id, coco_root):
    from m2det_impl.backends.ascend import OmBackend

    rows = []
    for path in om_paths:
        with OmBackend(path, device_id=device_id) as backend:
            batch = backend.static_batch or 1
            summary, n = _score(backend, coco_root, batch, f"om-{path.stem}")
        rows.append((f"{path.name} (batch {batch})", summary.ap, n))
    _gate(rows)


@pytest.mark.cpu
@pytest.mark.slow
@pytest.mark.weights
def test_onnxruntime_ap_meets_published(weights_path, coco_root, pytestconfig):
    from m2det_impl.backends.cache import cached_onnx
    from m2det_impl.backends.ort import OnnxRuntimeBackend
    from m2det_impl.network.weights_identity import weights_tag

    cfg = get_config(512)
    onnx_path = cached_onnx(cfg, weights_path)
    rows = []
    for batch in [int(b) for b in pytestconfig.getoption("--batch-sizes").split(",")]:
        with OnnxRuntimeBackend(onnx_path) as backend:
            summary, n = _score(backend, coco_root, batch, f"onnxruntime-{weights_tag(weights_path)}")
        rows.append((f"onnxruntime (batch {batch})", summary.ap, n))
    _gate(rows)
