"""The gpu layer: ONNX Runtime's CUDA and TensorRT providers against ONNX Runtime on the CPU.

Skips without the provider it needs (``onnxruntime-gpu`` on a CUDA host; TensorRT
10 for ``tensorrt``), saying what is missing. What each test holds:

- ``onnxruntime-cuda`` (float32, ``use_tf32`` 0) against the CPU, bounds
  ``onnxruntime-cuda/onnxruntime@<weights>`` in m2det_impl/data/tolerances.json;
- ``tensorrt`` (fp16 engine, ``trt_fp16_enable``) against the CPU, bounds
  ``tensorrt/onnxruntime@<weights>``: the NPU layer's cosine and, with a
  trained checkpoint, detection agreement (with golden weights the agreement
  is printed, not gated: the file's ``_note`` says why);
- the fp16 forecast (``m2det_impl.precision.forecast``) against the fp16
  engine, per output, as tests/hardware/test_npu.py holds it against the .om;
- the throughput gate: TensorRT pure inference per batch size (``--batch-sizes``)
  against the guide's T4 table minus ``throughput_gpu.relative_tolerance``
  (m2det_impl/data/gates.json); the GPU model, driver, CUDA and TensorRT
  versions are recorded beside every figure, and a figure that could not be
  measured fails.

``--device-id N`` picks the GPU. ``--save-outputs DIR`` keeps every run, the
forecast figures and ``gpu-throughput.json``. scripts/gpu_check.sh runs all of it.
"""

from __future__ import annotations

import os

import pytest
from support import forecast_drift, forecast_misses, record_forecast_drift

from m2det_impl.evaluation.agreement import detection_agreement
from m2det_impl.evaluation.metrics import compare_runs
from m2det_impl.evaluation.tolerances import Tolerances

pytestmark = pytest.mark.gpu

REFERENCE_CHUNK = 4  # images per call: the engines see batch sizes up to this


# ------------------------------------------------------------------ backends
@pytest.fixture(scope="session")
def tensorrt_provider(cuda_provider) -> str:
    import onnxruntime

    if "TensorrtExecutionProvider" not in onnxruntime.get_available_providers():
        pytest.skip("onnxruntime has no TensorrtExecutionProvider: install onnxruntime-gpu with TensorRT 10 "
                    "(pip install tensorrt-cu12) on a host with an NVIDIA GPU")
    return "TensorrtExecutionProvider"


@pytest.fixture(scope="session")
def cuda_session(cuda_provider, reference_export, device_id):
    from m2det_impl.backends.ort.gpu import cuda_backend

    with cuda_backend(reference_export.path, device_id=device_id) as backend:
        yield backend


@pytest.fixture(scope="session")
def tensorrt_session(tensorrt_provider, reference_export, device_id):
    """One session for the layer: each new batch size builds (or loads from the
    project cache) an engine, minutes for M2Det512, so it is made once."""
    from m2det_impl.backends.ort.gpu import tensorrt_backend

    with tensorrt_backend(reference_export.path, device_id=device_id) as backend:
        yield backend


def _checked(pair: str, run, reference, images, cfg) -> tuple:
    tolerances = Tolerances.load()
    gated = "agreement" in tolerances.bounds(pair, "detections")
    agreements = detection_agreement(run, reference, images.sizes, cfg, images.ids)
    if gated:
        assert sum(a.count_b for a in agreements) > 0, "the reference found no detection: the check is vacuous"
    return tolerances.check(pair, compare_runs(run, reference, images.ids), agreements), agreements


# ------------------------------------------------------------------ throughput (first: its batch sizes, largest
# first, fix the engine's profile once; the accuracy tests' smaller batches then fit it)
def test_tensorrt_throughput_meets_the_t4_table(tensorrt_session, golden_forward, pytestconfig, run_store,
                                                record_property):
    from m2det_impl._io import atomic_write_json
    from m2det_impl.environment import gpu_info
    from m2det_impl.gating.bench import measure_inference
    from m2det_impl.gating.gates import min_throughput_gate
    from m2det_impl.published import throughput_table
    from m2det_impl.resources import read_data_json

    gate = read_data_json("gates.json")["throughput_gpu"]
    published = throughput_table(gate["published"], gate["platform"])
    env = gpu_info(pytestconfig.getoption("--device-id"))
    batches = sorted({int(b) for b in str(pytestconfig.getoption("--batch-sizes")).split(",") if b.strip()},
                     reverse=True)
    tensors = [golden_forward[f"input_{i}"] for i in range(3)]
    figures, failed = [], []
    for batch in batches:
        if batch not in published:
            print(f"batch {batch}: the {gate['platform']} table has no figure; not gated")
            continue
        try:
            measured = measure_inference(tensorrt_session, tensors, batch, gate["warmup"], gate["repeats"])
            images_per_second, why = measured["images_per_second"], ""
        except Exception as exc:  # noqa: BLE001 - an unmeasured figure fails the gate below, with the reason
            images_per_second, why = None, f"not measured ({type(exc).__name__}: {exc})"
        verdict = min_throughput_gate(images_per_second, published[batch], gate["relative_tolerance"],
                                      f"tensorrt fp16 batch {batch} on {env.get('gpu', 'an unnamed GPU')}",
                                      why or "no figure was measured")
        figure = {"backend": "tensorrt", "batch_size": batch, "images_per_second": images_per_second,
                  "published": published[batch], "published_table": f"{gate['published']}/{gate['platform']}",
                  "relative_tolerance": gate["relative_tolerance"], "passed": verdict.passed,
                  "gpu": env.get("gpu"), "driver": env.get("driver"), "cuda": env.get("cuda"),
                  "onnxruntime_cuda": env.get("onnxruntime_cuda"), "tensorrt": env.get("tensorrt"),
                  "onnxruntime": env.get("onnxruntime")}
        figures.append(figure)
        for key in ("images_per_second", "gpu", "driver", "cuda", "tensorrt"):
            record_property(f"throughput_bs{batch}_{key}", figure[key])
        print(verdict.message + f" (driver {figure['driver']}, CUDA {figure['cuda']}, "
                                f"TensorRT {figure['tensorrt']}, onnxruntime {figure['onnxruntime']})")
        if not verdict.passed:
            failed.append(verdict.message)
    if run_store.save_dir is not None:  # this test runs first: the folder may not exist yet
        run_store.save_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run_store.save_dir / "gpu-throughput.json", {"figures": figures, "gate": gate}, indent=1)
    assert figures, f"no batch size of --batch-sizes {batches} has a {gate['platform']} figure: nothing was gated"
    assert not failed, "throughput gate failed:\n" + "\n".join(failed)


# ------------------------------------------------------------------ accuracy
@pytest.mark.parametrize("image_set", ["golden_images", "coco_images"])
def test_cuda_matches_cpu(request, image_set, cuda_session, onnxruntime_reference, run_store, reference_tag,
                          cfg512):
    images = request.getfixturevalue(image_set)
    reference = onnxruntime_reference(images)
    assert cuda_session.providers[0] == "CUDAExecutionProvider"
    run = run_store.get("onnxruntime-cuda", images, reference_tag,
                        lambda: cuda_session.infer(images.batch, max_batch=REFERENCE_CHUNK))
    report, agreements = _checked(f"onnxruntime-cuda/onnxruntime@{reference_tag}", run, reference, images, cfg512)
    print(f"onnxruntime-cuda on {images.name}: agreement {min(a.fraction for a in agreements):.4f}")
    report.raise_if_failed()


@pytest.mark.parametrize("image_set", ["golden_images", "coco_images"])
def test_tensorrt_matches_cpu(request, image_set, tensorrt_session, onnxruntime_reference, run_store,
                              reference_tag, cfg512):
    images = request.getfixturevalue(image_set)
    reference = onnxruntime_reference(images)
    assert tensorrt_session.providers[0] == "TensorrtExecutionProvider"
    run = run_store.get("tensorrt", images, reference_tag,
                        lambda: tensorrt_session.infer(images.batch, max_batch=REFERENCE_CHUNK))
    report, agreements = _checked(f"tensorrt/onnxruntime@{reference_tag}", run, reference, images, cfg512)
    worst = min(m.cosine for m in compare_runs(run, reference, images.ids))
    print(f"tensorrt on {images.name}: lowest cosine {worst:.6f}, agreement "
          f"{min(a.fraction for a in agreements):.4f}")
    report.raise_if_failed()


# ------------------------------------------------------------------ the fp16 forecast
@pytest.mark.parametrize("image_set", ["golden_images", "coco_images"])
def test_tensorrt_against_the_fp16_forecast(request, image_set, tensorrt_session, onnxruntime_reference,
                                            run_store, reference_tag, cfg512, record_property):
    """The laptop's fp16 forecast against real fp16 arithmetic, as
    test_npu.py's test_om_against_the_fp16_forecast holds it against the .om.

    Three drifts per output: the engine's from ONNX Runtime (actual), the
    forecast's from ONNX Runtime (predicted), the engine's from the forecast
    (the forecast's error); printed, recorded as junit properties and, with
    ``--save-outputs DIR``, written to
    ``DIR/fp16-forecast-accuracy__tensorrt__<images>__<weights>.json``. The
    forecast must be closer to the engine than float32 is. The mode is
    ``M2DET_TRT_PRECISION_MODE`` (default ``force_fp16``: TensorRT with
    fp16 enabled runs every layer with an fp16 kernel in fp16, as atc's
    default does; ``allow_mix_precision`` models layers it keeps in float32).
    """
    from m2det_impl._io import atomic_write_json
    images = request.getfixturevalue(image_set)
    reference = onnxruntime_reference(images)
    mode = (os.environ.get("M2DET_TRT_PRECISION_MODE") or "force_fp16").split()[0]
    forecast = request.getfixturevalue("fp16_forecast")(images, mode)
    run = run_store.get("tensorrt", images, reference_tag,
                        lambda: tensorrt_session.infer(images.batch, max_batch=REFERENCE_CHUNK))
    figures = {"backend": "tensorrt", "images": images.name, "weights": reference_tag, "precision_mode": mode}
    figures.update(forecast_drift(run, reference, forecast, images.sizes, cfg512, images.ids))
    summary = record_forecast_drift(figures, f"tensorrt_{images.name}", record_property)
    print(f"\ntensorrt on {images.name} ({mode}): {summary}")
    if run_store.save_dir is not None:
        run_store.save_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run_store.save_dir / f"fp16-forecast-accuracy__tensorrt__{images.name}__{reference_tag}.json",
                          figures, indent=1)
    failures = []
    for output, error, actual in forecast_misses(figures):  # NaN is a miss too
        failures.append(f"tensorrt, {images.name}, {output}: the forecast ({mode}) is further from the fp16 "
                        f"engine (rel_l2 {error:.3g}) than float32 is ({actual:.3g}): the emulation misses what "
                        "TensorRT does (layers it keeps in float32? try M2DET_TRT_PRECISION_MODE="
                        "allow_mix_precision; fp16 accumulation in its kernels?)")
    assert not failures, "\n".join(failures)
