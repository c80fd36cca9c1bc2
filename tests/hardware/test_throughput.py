"""The throughput gate on a 310P: pure-inference images/s per batch size at
least the guide's figures minus the tolerance in fixtures/gates.json.

Measured like ais_infer (backend.infer alone, after warm-up, median of
repeats); the CANN version and precision mode are recorded beside each figure,
since both move it. Speed is never asserted in the cpu layer: see m2det bench.
"""

import json
import os

import pytest

from m2det_impl.gating.bench import measure_inference
from m2det_impl.published import PUBLISHED_THROUGHPUT
from m2det_impl.resources import GATES_FILE

pytestmark = pytest.mark.npu

GATES = json.loads(GATES_FILE.read_text())["throughput"]


def test_om_throughput_meets_published(om_paths, npu_runtime, device_id, golden_forward, record_property):
    from m2det_impl.backends import OmBackend
    from m2det_impl.environment import npu_info

    published = PUBLISHED_THROUGHPUT[GATES["platform"]]
    env = npu_info()
    precision = os.environ.get("M2DET_PRECISION_MODE", "force_fp16 (atc default)")
    tensors = [golden_forward[f"input_{i}"] for i in range(3)]
    rows, failed = [], []
    for path in om_paths:
        with OmBackend(path, device_id=device_id) as backend:
            batch = backend.static_batch or 1
            if batch not in published:
                rows.append(f"{path.name}: batch {batch} has no published figure; not gated")
                continue
            figure = measure_inference(backend, tensors, batch, GATES["warmup"], GATES["repeats"])
        floor = published[batch] * (1 - GATES["relative_tolerance"])
        line = (f"{path.name} batch {batch}: {figure['images_per_second']:.3f} img/s "
                f"(published {published[batch]}, floor {floor:.3f}; CANN {env.get('cann', '?')}, "
                f"precision {precision})")
        record_property(f"throughput_bs{batch}", figure["images_per_second"])
        rows.append(line)
        if figure["images_per_second"] < floor:
            failed.append(line)
    record_property("cann", env.get("cann"))
    record_property("precision_mode", precision)
    print("\n" + "\n".join(rows))
    assert not failed, "throughput gate failed:\n" + "\n".join(failed)
