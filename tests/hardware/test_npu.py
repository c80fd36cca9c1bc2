"""The NPU routes against ONNX Runtime (npu layer): the ``.om`` (atc +
aclruntime / ais_bench) and ``onnxruntime-cann`` (ONNX Runtime's
CANNExecutionProvider on the same ONNX export), under the same checks.

The routes are the registry's ``npu`` backends. The ``.om`` route skips
without an Ascend device, without ``aclruntime``/``ais_bench`` or without an
``.om`` (``--om PATH``, repeatable, or ``M2DET_OM``); the ``onnxruntime-cann``
route skips without an Ascend device or without onnxruntime-cann with
CANNExecutionProvider, and runs the reference's own ONNX export. The ``.om``
must be built (``m2det_impl.backends.ascend.atc.atc_command``) from the weights the
reference uses: golden weights (salt 0) by default, or the checkpoint given by
``--weights``. The ONNX Runtime reference is computed here, or read from
``--load-outputs DIR`` (frozen elsewhere with ``--save-outputs DIR``), so the
NPU host needs neither the model nor much CPU. Bounds:
m2det_impl/data/tolerances.json, ``<route>/onnxruntime@<weights>``: cosine >=
0.999 per output and image, and with a trained checkpoint detection agreement
>= 0.99. With golden weights the agreement is printed, not gated (the file's
``_note`` says why).
"""

from __future__ import annotations

import glob
import os

import pytest
from support import forecast_drift, forecast_misses, record_forecast_drift

from m2det_impl.backends.ascend import OmBackend
from m2det_impl.backends.registry import availability, runtime_names
from m2det_impl.evaluation.agreement import detection_agreement
from m2det_impl.evaluation.metrics import compare_runs
from m2det_impl.evaluation.tolerances import Tolerances

pytestmark = pytest.mark.npu

NPU_ROUTES = runtime_names("npu")
REFERENCE_CHUNK = 4  # images per call of a dynamic-batch route: bounds the activations' memory


@pytest.fixture(scope="session")
def davinci(device_id) -> int:
    if not glob.glob(f"/dev/davinci{device_id}"):
        pytest.skip(f"no Ascend device /dev/davinci{device_id} (the driver exposes one per NPU)")
    return device_id


@pytest.fixture(scope="session")
def ascend_device(npu_runtime, davinci) -> int:
    return davinci


@pytest.fixture(scope="session")
def cann_provider() -> str:
    ok, why = availability("onnxruntime-cann")
    if not ok:
        pytest.skip(f"no onnxruntime-cann with CANNExecutionProvider ({why}): pip install onnxruntime-cann "
                    "(instead of onnxruntime) on an Ascend host with the CANN toolkit")
    return "CANNExecutionProvider"


def _route_models(request, route: str, cfg512):
    """``[(label, run name, open backend), ...]`` of one NPU route, or skip naming what is missing."""
    if route == "om":
        device = request.getfixturevalue("ascend_device")
        return [(path.name, path,
                 lambda p=path: OmBackend(p, device_id=device, num_classes=cfg512.num_classes))
                for path in request.getfixturevalue("om_paths")]
    if route == "onnxruntime-cann":
        from m2det_impl.backends.ort.cann import onnxruntime_cann_backend

        request.getfixturevalue("cann_provider")
        device = request.getfixturevalue("davinci")
        export = request.getfixturevalue("reference_export")
        return [(f"onnxruntime-cann ({export.path.name})", export.path,
                 lambda: onnxruntime_cann_backend(export.path, device_id=device))]
    raise AssertionError(f"npu route {route!r} has no models here: add it to _route_models")


def _run_name(route: str, backend) -> str:
    return f"om-bs{backend.static_batch}" if route == "om" else route


@pytest.mark.parametrize("route", NPU_ROUTES)
@pytest.mark.parametrize("image_set", ["golden_images", "coco_images"])
def test_npu_matches_onnxruntime(request, route, image_set, onnxruntime_reference, run_store, reference_tag,
                                 cfg512):
    models = _route_models(request, route, cfg512)
    images = request.getfixturevalue(image_set)
    reference = onnxruntime_reference(images)
    tolerances = Tolerances.load()
    pair = f"{route}/onnxruntime@{reference_tag}"
    gated = "agreement" in tolerances.bounds(pair, "detections")
    failures = []
    for label, path, open_backend in models:
        with open_backend() as backend:
            run = run_store.get(_run_name(route, backend), images, reference_tag,
                                lambda: backend.infer(images.batch, max_batch=REFERENCE_CHUNK))
        metrics = compare_runs(run, reference, images.ids)
        agreements = detection_agreement(run, reference, images.sizes, cfg512, images.ids)
        if gated:
            assert sum(a.count_b for a in agreements) > 0, "the reference found no detection: the check is vacuous"
        report = tolerances.check(pair, metrics, agreements)
        worst = min(m.cosine for m in metrics)
        print(f"{label} on {images.name}: lowest cosine {worst:.6f}, "
              f"agreement {min(a.fraction for a in agreements):.4f}")
        if not report.ok:
            failures.append(f"{path} ({route}):\n{report.message()}")
    assert not failures, "\n".join(failures)


# ------------------------------------------------------------------ the fp16 forecast
@pytest.mark.parametrize("image_set", ["golden_images", "coco_images"])
def test_om_against_the_fp16_forecast(request, image_set, om_paths, ascend_device, onnxruntime_reference,
                                      run_store, reference_tag, cfg512, record_property):
    """The laptop's fp16 forecast (m2det_impl.precision, ``m2det compare
    --emulate fp16``) against the device it forecasts, so the forecast's own
    accuracy is a tracked figure.

    Three drifts per output: the .om's from ONNX Runtime (actual), the
    forecast's from ONNX Runtime (predicted) and the .om's from the forecast
    (the forecast's error); all three are printed, recorded as junit
    properties and, with ``--save-outputs DIR``, written to
    ``DIR/fp16-forecast-accuracy__<om>__<images>__<weights>.json``. The
    forecast must be closer to the device than float32 is (its error below the
    actual drift): otherwise it does not model what the device does. The mode
    is ``M2DET_PRECISION_MODE`` (default force_fp16, atc's default; the first
    word counts). The forecast is computed here or read with
    ``--load-outputs DIR`` (run ``--save-outputs DIR`` on a laptop: its run is
    ``fp16forecast-<mode>__<images>__<weights>.npz``).
    """
    from m2det_impl._io import atomic_write_json
    images = request.getfixturevalue(image_set)
    reference = onnxruntime_reference(images)
    mode = (os.environ.get("M2DET_PRECISION_MODE") or "force_fp16").split()[0]
    forecast = request.getfixturevalue("fp16_forecast")(images, mode)
    failures = []
    for path in om_paths:
        with OmBackend(path, device_id=ascend_device, num_classes=cfg512.num_classes) as backend:
            run = run_store.get(f"om-bs{backend.static_batch}", images, reference_tag,
                                lambda: backend.infer(images.batch))
        figures = {"om": str(path), "images": images.name, "weights": reference_tag, "precision_mode": mode}
        figures.update(forecast_drift(run, reference, forecast, images.sizes, cfg512, images.ids))
        summary = record_forecast_drift(figures, f"{path.stem}_{images.name}", record_property)
        print(f"\n{path.name} on {images.name} ({mode}): {summary}")
        if run_store.save_dir is not None:
            atomic_write_json(run_store.save_dir / f"fp16-forecast-accuracy__{path.stem}__{images.name}__"
                                                   f"{reference_tag}.json", figures, indent=1)
        for output, error, actual in forecast_misses(figures):  # NaN is a miss too
            failures.append(f"{path.name}, {images.name}, {output}: the forecast ({mode}) is further from the "
                            f".om (rel_l2 {error:.3g}) than float32 is ({actual:.3g}): the emulation misses what "
                            "the device does (another precision mode? set M2DET_PRECISION_MODE; fp16 arithmetic "
                            "inside vector operators?)")
    assert not failures, "\n".join(failures)


# ------------------------------------------------------------------ where it drifts: the device's own dump
def test_om_layer_dump_names_the_first_divergent_layer(om_paths, ascend_device, reference_export, golden_forward,
                                                        cfg512, tmp_path, pytestconfig, record_property):
    """The whole drift chain on each batch-1 ``.om`` under test (issue 22, docs/drift.md): ``m2det infer
    --dump`` in a fresh process (ACL reads acl.json once, at aclInit, so the dump cannot share this process's
    ACL), then ``m2det drift`` against ONNX Runtime on the same input. Fails naming the first layer in graph
    order whose drift is outside its fp16-forecast bound, which is where an output tolerance failure began."""
    import subprocess
    import sys

    from m2det_impl.pipeline.preprocess import preprocess_image, write_bin
    from m2det_impl.workflows.drift import drift

    batch_one = []
    for path in om_paths:
        with OmBackend(path, device_id=ascend_device, num_classes=cfg512.num_classes) as backend:
            if backend.static_batch == 1:
                batch_one.append(path)
    if not batch_one:
        pytest.skip("no batch-1 .om among --om: a layer dump is one inference of one image (build one with "
                    "m2det export --batch 1 and atc)")
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    image = write_bin(inputs / "golden_0.bin", preprocess_image(golden_forward["image_0"], cfg512)[None])
    om_json = pytestconfig.getoption("--om-json")
    failures = []
    for path in batch_one:
        out = tmp_path / path.stem
        done = subprocess.run([sys.executable, "-m", "m2det_impl.cli", "infer", "--backend", "om", "--om", str(path),
                               "--inputs", str(inputs), "--output", str(out), "--output-dirname", "run", "--dump",
                               "--device-id", str(ascend_device), "--quiet"], capture_output=True, text=True,
                              timeout=1800)
        assert done.returncode == 0, f"{path}: m2det infer --dump failed: {done.stderr.strip()}"
        outcome = drift(reference_export.path, image, out / "dump", out / "drift", om_json=om_json)
        report = outcome.report
        record_property(f"drift_{path.stem}", str(outcome.json_path))
        print(f"{path.name}: {len(report.nodes)} layers compared, {len(report.unmatched)} dumped outputs "
              f"unmatched; {outcome.markdown_path}")
        if outcome.exit_code != 0:
            first = report.first_divergent
            where = (f"first divergent layer {first.match.node} (depth {first.depth}, dumped as "
                     f"{first.match.dump_op}): rel_l2 {first.rel_l2:.4g} > bound {first.bound.value:.4g}"
                     if first is not None else "no dumped layer could be aligned with the ONNX model "
                                                "(give --om-json X.json from atc --mode=1)")
            failures.append(f"{path}: {where}; table {outcome.markdown_path}")
    assert not failures, "\n".join(failures)
