"""The .om on an Ascend NPU against ONNX Runtime (npu layer).

Skips without an Ascend device, without ``aclruntime``/``ais_bench`` or without
an ``.om`` (``--om PATH``, repeatable, or ``M2DET_OM``). The ``.om`` must be
built (``m2det_impl.export.atc_command``) from the weights the reference uses:
golden weights (salt 0) by default, or the checkpoint given by ``--weights``.
The ONNX Runtime reference is computed here, or read from ``--load-outputs
DIR`` (frozen elsewhere with ``--save-outputs DIR``), so the NPU host needs
neither the model nor much CPU. Bounds: fixtures/tolerances.json,
``om/onnxruntime@<weights>``: cosine >= 0.999 per output and image, and with
a trained checkpoint detection agreement >= 0.99. With golden weights the
agreement is printed, not gated (the file's ``_note`` says why).
"""

from __future__ import annotations

import glob

import pytest

from m2det_impl.backends import OmBackend
from m2det_impl.compare import Tolerances, compare_runs, detection_agreement

pytestmark = pytest.mark.npu


@pytest.fixture(scope="session")
def ascend_device(npu_runtime, device_id) -> int:
    if not glob.glob(f"/dev/davinci{device_id}"):
        pytest.skip(f"no Ascend device /dev/davinci{device_id} (the driver exposes one per NPU)")
    return device_id


@pytest.mark.parametrize("image_set", ["golden_images", "coco_images"])
def test_om_matches_onnxruntime(request, image_set, om_paths, ascend_device, onnxruntime_reference,
                                run_store, reference_tag, cfg512):
    images = request.getfixturevalue(image_set)
    reference = onnxruntime_reference(images)
    tolerances = Tolerances.load()
    pair = f"om/onnxruntime@{reference_tag}"
    gated = "agreement" in tolerances.bounds(pair, "detections")
    failures = []
    for path in om_paths:
        with OmBackend(path, device_id=ascend_device, num_classes=cfg512.num_classes) as backend:
            run = run_store.get(f"om-bs{backend.static_batch}", images, reference_tag,
                                lambda: backend.infer(images.batch))
        metrics = compare_runs(run, reference, images.ids)
        agreements = detection_agreement(run, reference, images.sizes, cfg512, images.ids)
        if gated:
            assert sum(a.count_b for a in agreements) > 0, "the reference found no detection: the check is vacuous"
        report = tolerances.check(pair, metrics, agreements)
        worst = min(m.cosine for m in metrics)
        print(f"{path.name} on {images.name}: lowest cosine {worst:.6f}, "
              f"agreement {min(a.fraction for a in agreements):.4f}")
        if not report.ok:
            failures.append(f"{path}:\n{report.message()}")
    assert not failures, "\n".join(failures)
