"""The throughput gate on a 310P: pure-inference images/s per batch size at
least the published table's figures minus the tolerance in m2det_impl/data/gates.json.

Measured as ais_bench measures it: ``1000 * batch / mean(execute ms)`` over
aclruntime's own execute times (``sumary().exec_time_list``, aclmdlExecute
alone), after warm-up; the wall-clock figure of ``backend.infer`` is printed
and recorded beside it, labelled, but not gated. The table is chosen with
``--published NAME`` (or M2DET_PUBLISHED; default the guide's); its name and
source are recorded beside every figure, with the CANN version and precision
mode, since all of them move it. The gate FAILS (never passes or skips) when a
batch size it was asked to gate has no published figure or when the figure
was not measured (m2det_impl.gating.gates.throughput_gate, held by
tests/gating/test_throughput_gate.py). Speed is never asserted in the cpu
layer: see m2det bench.
"""

import json
import os

import pytest

from m2det_impl.gating.bench import measure_inference, published_record
from m2det_impl.gating.gates import throughput_gate
from m2det_impl.resources import GATES_FILE

pytestmark = pytest.mark.npu

GATES = json.loads(GATES_FILE.read_text())["throughput"]


def test_om_throughput_meets_published(om_paths, npu_runtime, device_id, golden_forward, published_name,
                                       record_property):
    from m2det_impl.backends.ascend import OmBackend
    from m2det_impl.environment import npu_info

    published = published_record(published_name, GATES["platform"])
    env = npu_info()
    precision = os.environ.get("M2DET_PRECISION_MODE", "force_fp16 (atc default)")
    tensors = [golden_forward[f"input_{i}"] for i in range(3)]
    rows, failed = [], []
    for path in om_paths:
        with OmBackend(path, device_id=device_id) as backend:
            batch = backend.static_batch or 1
            figure = measure_inference(backend, tensors, batch, GATES["warmup"], GATES["repeats"])
        verdict = throughput_gate(figure, published, GATES["relative_tolerance"])
        line = f"{path.name}: {verdict.message}; CANN {env.get('cann', '?')}, precision {precision}"
        record_property(f"throughput_bs{batch}", {
            "images_per_second": figure["images_per_second"], "execute_clock": figure["execute_clock"],
            "wall_clock_images_per_second": figure["wall_clock_images_per_second"],
            "wall_clock": figure["wall_clock"], "published": published["name"],
            "published_source": published["source"], "published_figure": published["table"].get(str(batch)),
            "om": str(path), "cann": env.get("cann"), "precision_mode": precision, "passed": verdict.passed})
        rows.append(line)
        if not verdict.passed:
            failed.append(line)
    record_property("published", published["name"])
    record_property("published_source", published["source"])
    record_property("cann", env.get("cann"))
    record_property("precision_mode", precision)
    print("\n" + "\n".join(rows))
    assert not failed, "throughput gate failed:\n" + "\n".join(failed)


def test_om_throughput_on_every_device_at_once(om_paths, npu_runtime, device_ids, golden_forward, published_name,
                                               tmp_path, record_property):
    """``--device-id 0,1,...``: ``m2det infer`` on every device at once (one worker process each, as
    ais_bench's ``--device``), each device's throughput held to the published figure, their sum recorded."""
    import glob

    import numpy as np

    from m2det_impl.backends.spec import ModelSpec
    from m2det_impl.network.config import get_config
    from m2det_impl.workflows.files import infer

    if len(device_ids) < 2:
        pytest.skip("one device: give --device-id 0,1[,...] for the multi-device check")
    missing = [d for d in device_ids if not glob.glob(f"/dev/davinci{d}")]
    if missing:
        pytest.skip(f"no Ascend device /dev/davinci{missing[0]}")
    published = published_record(published_name, GATES["platform"])
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    failed = []
    for path in om_paths:
        for i in range(8 * len(device_ids) * 4):  # 8 batches of up to 4 per device
            golden_forward[f"input_{i % 3}"][None].astype(np.float32).tofile(inputs / f"img{i}.bin")
        result = infer(inputs, get_config(512), ModelSpec(backend="om", om=path), tmp_path / path.stem,
                       output_dirname="run", device_ids=device_ids, progress=False)
        total = json.loads(result.summary.read_text())
        for device in total["devices"]:
            figure = {"images_per_second": device["throughput"]}
            batch = device["batch"]
            verdict = throughput_gate({**figure, "batch_size": batch, "runtime_timed": True}, published,
                                      GATES["relative_tolerance"])
            if not verdict.passed:
                failed.append(f"{path.name}, device {device['device']}: {verdict.message}")
        record_property(f"throughput_all_devices_{path.stem}", total["throughput"])
    assert not failed, "throughput gate failed:\n" + "\n".join(failed)
