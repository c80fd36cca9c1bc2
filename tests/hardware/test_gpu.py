"""ONNX Runtime's CUDA provider against its CPU provider (gpu layer).

Skips without ``CUDAExecutionProvider`` (``onnxruntime-gpu`` on a CUDA host).
Same bounds as the NPU layer (fixtures/tolerances.json,
``onnxruntime-cuda/onnxruntime``): cosine >= 0.999 per output and image,
detection agreement >= 0.99. TF32 is turned off (``use_tf32=0``): the test
checks that the graph computes the same thing on CUDA, in float32; TF32's
10-bit mantissa is a precision choice, like the .om's fp16, and would need the
NPU layer's golden-weight caveat.
"""

from __future__ import annotations

import pytest

from m2det_impl.backends import OnnxRuntimeBackend
from m2det_impl.evaluation.agreement import detection_agreement
from m2det_impl.evaluation.metrics import compare_runs
from m2det_impl.evaluation.tolerances import Tolerances

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("image_set", ["golden_images", "coco_images"])
def test_cuda_matches_cpu(request, image_set, cuda_provider, reference_export, onnxruntime_reference,
                          run_store, reference_tag, cfg512):
    images = request.getfixturevalue(image_set)
    reference = onnxruntime_reference(images)
    with OnnxRuntimeBackend(reference_export.path, providers=[(cuda_provider, {"use_tf32": "0"})]) as backend:
        assert backend.providers[0] == "CUDAExecutionProvider"
        run = run_store.get(backend.name, images, reference_tag, lambda: backend.infer(images.batch, max_batch=4))
    agreements = detection_agreement(run, reference, images.sizes, cfg512, images.ids)
    assert sum(a.count_b for a in agreements) > 0, "the reference found no detection: the check is vacuous"
    report = Tolerances.load().check("onnxruntime-cuda/onnxruntime", compare_runs(run, reference, images.ids),
                                     agreements)
    report.raise_if_failed()
