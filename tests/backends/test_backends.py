"""PyTorch and ONNX Runtime (CPU) on the golden weights and images.

Each run is held to ``golden/forward_m2det512.npz`` and to PyTorch, at batch 1
and batch 3, through the dynamic batch axis and through the static batch-1
export (on image 0). A static batch above 1 (a folded graph whose every shape
carries the batch, the padding of a partial batch, and more images than the
batch, fed in chunks) is held to PyTorch on the reduced network
(support.SMALL_CONFIG_FILE), whose export comes from the same code. Bounds
come from fixtures/tolerances.json.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from support import once_per_run

from m2det_impl.backends import Backend
from m2det_impl.backends.ort import OnnxRuntimeBackend
from m2det_impl.backends.pytorch import TorchBackend
from m2det_impl.errors import BackendUnavailableError, InputFileError, ModelOutputError, UsageError
from m2det_impl.evaluation.agreement import detection_agreement
from m2det_impl.evaluation.metrics import compare_runs
from m2det_impl.evaluation.tolerances import Tolerances

pytestmark = pytest.mark.cpu

WEIGHTS = "golden0"


@pytest.fixture(scope="session")
def tolerances() -> Tolerances:
    return Tolerances.load()


@pytest.fixture(scope="session")
def torch_runs(request, tmp_path_factory, golden_torch_forward, golden_images, run_store):
    """PyTorch at batch 3 (all golden images: the network's forward, shared with
    tests/network/test_model.py) and through the TorchBackend at batch 1 (image 0).
    Each computed once per run (support.once_per_run), whichever workers run the tests."""
    def b1():
        return dict(zip(("scores", "loc"), TorchBackend(request.getfixturevalue("golden_model")).infer(
            golden_images.batch[:1])))

    b3 = run_store.get("torch", golden_images, WEIGHTS, lambda: golden_torch_forward)
    return {"b3": b3, "b1": once_per_run(tmp_path_factory, "golden_torch_b1", b1)}


@pytest.fixture(scope="session")
def ort_runs(tmp_path_factory, golden_export, golden_images, run_store):
    """ONNX Runtime CPU: dynamic export at batch 3 and 1, static export 1 on image 0 (feeding a
    static model more images than its batch is held on the reduced network: ``small_static_runs``);
    computed once per run (support.once_per_run), whichever workers run the tests."""
    def compute():
        runs = {}
        with OnnxRuntimeBackend(golden_export(None).path) as dynamic:
            assert dynamic.static_batch is None
            runs["dynamic-b3"] = run_store.get("onnxruntime", golden_images, WEIGHTS,
                                               lambda: dynamic.infer(golden_images.batch))
            runs["dynamic-b1"] = dict(zip(("scores", "loc"), dynamic.infer(golden_images.batch[:1])))
        with OnnxRuntimeBackend(golden_export(1).path) as static:
            assert static.static_batch == 1 and static.batch_sizes == (1,)
            runs["static1-b1"] = dict(zip(("scores", "loc"), static.infer(golden_images.batch[:1])))
        return runs

    return once_per_run(tmp_path_factory, "golden_ort_runs", compute)


@pytest.fixture(scope="session")
def small_static_runs(tmp_path_factory, small_cfg, small_export):
    """The reduced network on bundled images: PyTorch on four, ONNX Runtime through its static
    batch-3 export at 3 images, at 2 (padded to the static batch, the padding dropped) and at 4
    (a full call, then one padded: more images than the model's batch)."""
    def compute():
        from m2det_impl.network.model import load_model
        from m2det_impl.pipeline.preprocess import load_and_preprocess
        from m2det_impl.resources import MINI_COCO

        files = sorted((MINI_COCO / "val2014").glob("*.jpg"))[:4]
        batch = np.stack([load_and_preprocess(f, small_cfg)[0] for f in files])
        torch_b4 = dict(zip(("scores", "loc"), TorchBackend(load_model(small_cfg, None, 0)).infer(batch)))
        with OnnxRuntimeBackend(small_export(3).path) as static:
            assert static.static_batch == 3 and static.batch_sizes == (3,)
            runs = {f"static3-b{n}": dict(zip(("scores", "loc"), static.infer(batch[:n]))) for n in (3, 2, 4)}
        return {"torch": torch_b4, **runs, "ids": [f.stem for f in files]}

    return once_per_run(tmp_path_factory, "small_static_runs", compute)


def _golden_view(run, golden_forward, n):
    """The golden file holds every 8th prior's scores."""
    gold = {"scores": np.stack([golden_forward[f"scores_{i}"] for i in range(n)]),
            "loc": np.stack([golden_forward[f"loc_{i}"] for i in range(n)])}
    return {"scores": run["scores"][:, ::8], "loc": run["loc"]}, gold


@pytest.mark.parametrize("run", ["b3", "b1"])
def test_torch_matches_golden(torch_runs, golden_forward, golden_images, tolerances, run):
    outputs = torch_runs[run]
    n = outputs["loc"].shape[0]
    mine, gold = _golden_view(outputs, golden_forward, n)
    tolerances.check("torch/golden", compare_runs(mine, gold, golden_images.ids[:n])).raise_if_failed()


@pytest.mark.parametrize("run", ["dynamic-b3", "dynamic-b1", "static1-b1"])
def test_onnxruntime_matches_golden(ort_runs, golden_forward, golden_images, tolerances, run):
    outputs = ort_runs[run]
    n = outputs["loc"].shape[0]
    mine, gold = _golden_view(outputs, golden_forward, n)
    tolerances.check("onnxruntime/golden", compare_runs(mine, gold, golden_images.ids[:n])).raise_if_failed()


@pytest.mark.parametrize("run,torch_run", [("dynamic-b3", "b3"), ("dynamic-b1", "b1"), ("static1-b1", "b1")])
def test_onnxruntime_matches_torch(ort_runs, torch_runs, golden_images, tolerances, run, torch_run):
    a, b = ort_runs[run], torch_runs[torch_run]
    n = a["loc"].shape[0]
    assert a["scores"].shape == (n, 32760, 81) and a["loc"].shape == (n, 32760, 4)
    assert a["scores"].dtype == np.float32 and a["loc"].dtype == np.float32
    tolerances.check("onnxruntime/torch", compare_runs(a, b, golden_images.ids[:n])).raise_if_failed()


@pytest.mark.parametrize("run", ["static3-b3", "static3-b2", "static3-b4"])
def test_static_batch_3_export_matches_torch(small_static_runs, small_cfg, tolerances, run):
    """A static batch above 1, full, padded, and fed more images than its batch, on the reduced
    network (module docstring)."""
    a, n = small_static_runs[run], small_static_runs[run]["loc"].shape[0]
    b = {k: v[:n] for k, v in small_static_runs["torch"].items()}
    assert a["scores"].shape == (n, small_cfg.num_priors, 81) and a["loc"].shape == (n, small_cfg.num_priors, 4)
    tolerances.check("onnxruntime/torch", compare_runs(a, b, small_static_runs["ids"][:n])).raise_if_failed()


def test_torch_batch_1_matches_batch_3(torch_runs, golden_images, tolerances):
    b3 = {k: v[:1] for k, v in torch_runs["b3"].items()}
    tolerances.check("torch/torch", compare_runs(torch_runs["b1"], b3, golden_images.ids[:1])).raise_if_failed()


def test_onnxruntime_detections_match_torch(ort_runs, torch_runs, golden_images, tolerances, cfg512):
    agreements = detection_agreement(ort_runs["dynamic-b3"], torch_runs["b3"], golden_images.sizes, cfg512,
                                     golden_images.ids)
    # golden weights give ~1600 detections per golden image: the check is not vacuous
    assert all(a.count_b > 100 for a in agreements)
    tolerances.check("onnxruntime/torch", agreements=agreements).raise_if_failed()


# ------------------------------------------------------------------ adapters
def _tiny_onnx(path, outputs):
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 8, 8])
    nodes = [helper.make_node("Identity", ["image"], [name]) for name in outputs]
    outs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, 3, 8, 8]) for name in outputs]
    model = helper.make_model(helper.make_graph(nodes, "tiny", [x], outs),
                              opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 7
    onnx.save(model, str(path))
    return path


def test_onnxruntime_rejects_outputs_not_named_scores_and_loc(tmp_path):
    path = _tiny_onnx(tmp_path / "guide.onnx", ["scores", "boxes"])
    with pytest.raises(ModelOutputError) as info:
        OnnxRuntimeBackend(path)
    assert str(path) in str(info.value) and "boxes" in str(info.value)


def test_onnxruntime_threads_come_from_the_argument_then_m2det_threads(tmp_path, monkeypatch):
    path = _tiny_onnx(tmp_path / "tiny.onnx", ["scores", "loc"])

    def threads(**kw) -> int:
        return OnnxRuntimeBackend(path, **kw).session.get_session_options().intra_op_num_threads

    monkeypatch.delenv("M2DET_THREADS", raising=False)
    assert threads() == 0  # ONNX Runtime's own choice
    monkeypatch.setenv("M2DET_THREADS", "3")
    assert threads() == 3 and threads(threads=2) == 2
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv("M2DET_THREADS", bad)
        with pytest.raises(UsageError, match=f"M2DET_THREADS={bad!r}: expected a positive number"):
            OnnxRuntimeBackend(path)


def test_onnxruntime_missing_file(tmp_path):
    with pytest.raises(InputFileError, match="not found"):
        OnnxRuntimeBackend(tmp_path / "none.onnx")


def test_onnxruntime_unavailable_provider_says_what_is_missing(tmp_path):
    path = _tiny_onnx(tmp_path / "m.onnx", ["scores", "loc"])
    with pytest.raises(BackendUnavailableError, match="NoSuchExecutionProvider"):
        OnnxRuntimeBackend(path, providers=["NoSuchExecutionProvider"])


def test_onnxruntime_cann_alias_names_the_package(tmp_path):
    import onnxruntime

    if "CANNExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has the CANN provider")
    path = _tiny_onnx(tmp_path / "m.onnx", ["scores", "loc"])
    with pytest.raises(BackendUnavailableError, match="onnxruntime-cann"):
        OnnxRuntimeBackend(path, providers=["cann"])


def test_backends_reject_bad_input(golden_model):
    backend = TorchBackend(golden_model)
    with pytest.raises(ValueError, match="float32"):
        backend.infer(np.zeros((1, 3, 512, 512), np.float64))
    with pytest.raises(ValueError, match="512x512"):
        backend.infer(np.zeros((1, 3, 320, 320), np.float32))
    with pytest.raises(ValueError, match=r"\[B, 3, S, S\]"):
        backend.infer(np.zeros((3, 512, 512), np.float32))


class _Echo(Backend):
    """A dynamic-batch toy: scores/loc carry each image's first pixel."""

    name = "echo"

    def __init__(self):
        self.calls = []

    def _run(self, chunk):
        self.calls.append(len(chunk))
        first = chunk[:, 0, 0, 0][:, None, None]
        n = len(chunk)
        return np.broadcast_to(first, (n, 2, 3)).copy(), np.broadcast_to(first, (n, 2, 4)).copy()


def test_max_batch_chunks_a_dynamic_backend_without_padding():
    images = np.arange(5, dtype=np.float32)[:, None, None, None] * np.ones((1, 3, 2, 2), np.float32)
    echo = _Echo()
    scores, loc = echo.infer(images, max_batch=2)
    assert echo.calls == [2, 2, 1]
    assert scores[:, 0, 0].tolist() == [0, 1, 2, 3, 4] and loc.shape == (5, 2, 4)
    assert echo.infer(images)[0].shape == (5, 2, 3) and echo.calls[-1] == 5
    with pytest.raises(ValueError, match="max_batch"):
        echo.infer(images, max_batch=0)
