"""Exported models and saved-run options for the backend tests.

Exporting M2Det512 takes about 15 s and writes about 530 MB, so each ONNX file
comes from the project's export cache (``m2det_impl.backends.cache``: keyed by
everything that decides its bytes, file-locked, shared with the CLI) and is
reused across tests, sessions and pytest-xdist workers. The cache lives outside
the repository: ``$M2DET_CACHE_DIR`` or ``~/.cache/m2det-conformance``.

``--save-outputs DIR`` writes every run that the cross-backend tests compute;
``--load-outputs DIR`` reads reference runs from DIR instead of computing them,
so a 310P host can check its ``.om`` against ONNX Runtime outputs frozen
elsewhere, and ``tests/evaluation/test_compare.py`` compares saved runs with no model.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("m2det-backends", "M2Det cross-backend comparisons")
    group.addoption("--save-outputs", default=os.environ.get("M2DET_SAVE_OUTPUTS"), metavar="DIR",
                    help="save every compared run's outputs to DIR (env M2DET_SAVE_OUTPUTS)")
    group.addoption("--load-outputs", default=os.environ.get("M2DET_LOAD_OUTPUTS"), metavar="DIR",
                    help="read reference runs (ONNX Runtime) from DIR instead of computing them, and "
                         "compare the saved runs found there (env M2DET_LOAD_OUTPUTS)")
    group.addoption("--npu-coco-images", type=int, default=int(os.environ.get("M2DET_NPU_COCO_IMAGES", "16")),
                    help="COCO minival images for the npu/gpu comparisons (env M2DET_NPU_COCO_IMAGES, default 16)")


# ------------------------------------------------------------------ export cache
# One cache for the CLI and the suite: m2det_impl.backends.cache (keyed, file-locked).
# Imported where used: importing them loads torch (2 s and more on a loaded 2-core machine), which every
# pytest process would pay at start-up, the nested ones of tests/gating/test_known_failures.py included.
if TYPE_CHECKING:
    from m2det_impl.backends.cache import ExportRecord


def cached_export(*args, **kwargs) -> "ExportRecord":
    from m2det_impl.backends.cache import cached_export as export

    return export(*args, **kwargs)


def weights_tag(weights) -> str:
    from m2det_impl.network.weights_identity import weights_tag as tag

    return tag(weights)


@pytest.fixture(scope="session")
def golden_export(request, cfg512) -> Callable[[Optional[int]], ExportRecord]:
    """``golden_export(batch)``: the golden-weight M2Det512 as ONNX (None: dynamic)."""
    records: Dict[Optional[int], ExportRecord] = {}

    def get(batch: Optional[int]) -> ExportRecord:
        if batch not in records:
            records[batch] = cached_export(cfg512, None, batch,
                                           model_factory=lambda: request.getfixturevalue("golden_model"))
        return records[batch]

    return get


# ------------------------------------------------------------------ the reduced network
from support import SMALL_CONFIG_FILE  # noqa: E402  the reduced network (docs/testing.md, "Suite time")


@pytest.fixture(scope="session")
def small_config_file() -> Path:
    """The reduced network's config file, as ``m2det ... --config`` takes it."""
    return SMALL_CONFIG_FILE


@pytest.fixture(scope="session")
def small_cfg():
    """The reduced network's config, read from its file as the CLI reads it."""
    from m2det_impl.network.config_file import resolve_config

    return resolve_config(None, SMALL_CONFIG_FILE)


@pytest.fixture(scope="session")
def small_export(small_cfg) -> Callable[[Optional[int]], ExportRecord]:
    """``small_export(batch)``: the reduced network, golden weights, as ONNX (None: dynamic).
    The same cache entry ``m2det run --config SMALL_CONFIG_FILE`` exports into and reuses."""
    records: Dict[Optional[int], ExportRecord] = {}

    def get(batch: Optional[int]) -> ExportRecord:
        if batch not in records:
            records[batch] = cached_export(small_cfg, None, batch)
        return records[batch]

    return get


@pytest.fixture(scope="session")
def reference_weights(pytestconfig) -> Optional[Path]:
    """The checkpoint the .om was built from (--weights), or None for golden weights."""
    value = pytestconfig.getoption("--weights")
    if not value:
        return None
    path = Path(value).expanduser()
    if not path.is_file():
        pytest.skip(f"--weights {path} not found")
    return path


@pytest.fixture(scope="session")
def reference_export(request, cfg512, reference_weights) -> ExportRecord:
    """Dynamic-batch ONNX of the weights the .om is compared with."""
    def factory():
        if reference_weights is None:
            return request.getfixturevalue("golden_model")
        from m2det_impl.network.model import build_model, load_checkpoint

        return load_checkpoint(build_model(cfg512), reference_weights)

    return cached_export(cfg512, reference_weights, None, model_factory=factory)


# ------------------------------------------------------------------ saved runs
@dataclass(frozen=True)
class ImageSet:
    """Preprocessed images with their ids and ORIGINAL sizes (width, height)."""

    name: str
    batch: np.ndarray
    ids: List[str]
    sizes: List[Tuple[int, int]]


class RunStore:
    """Computes, loads and saves runs named ``<backend>__<images>__<weights>``."""

    def __init__(self, save_dir: Optional[str], load_dir: Optional[str]):
        self.save_dir = Path(save_dir).expanduser() if save_dir else None
        self.load_dir = Path(load_dir).expanduser() if load_dir else None

    def get(self, backend: str, images: ImageSet, weights: str,
            compute: Callable[[], Tuple[np.ndarray, np.ndarray]], loadable: bool = False) -> Dict[str, np.ndarray]:
        """Outputs ``{"scores", "loc"}`` of ``backend`` on ``images``.

        With ``loadable`` (reference runs) and ``--load-outputs``, a saved run
        of the same name is read instead of computed; its image ids must match.
        """
        from m2det_impl.evaluation.tolerances import load_run, save_run

        name = f"{backend}__{images.name}__{weights}"
        if loadable and self.load_dir is not None and (self.load_dir / f"{name}.npz").is_file():
            run = load_run(self.load_dir / f"{name}.npz")
            if run.image_ids != images.ids:
                pytest.fail(f"{self.load_dir / name}.npz holds images {run.image_ids[:3]}..., "
                            f"this session has {images.ids[:3]}...")
            return run.outputs()
        scores, loc = compute()
        if self.save_dir is not None:
            save_run(self.save_dir, name, scores, loc, images.ids, images.sizes,
                     {"backend": backend, "images": images.name, "weights": weights})
        return {"scores": scores, "loc": loc}


@pytest.fixture(scope="session")
def run_store(pytestconfig) -> RunStore:
    return RunStore(pytestconfig.getoption("--save-outputs"), pytestconfig.getoption("--load-outputs"))


@pytest.fixture(scope="session")
def golden_torch_forward(request, tmp_path_factory, golden_batch) -> Tuple[np.ndarray, np.ndarray]:
    """(scores, loc) of the golden M2Det512 in PyTorch on the three golden images (``model(batch)``
    under ``no_grad``), computed once per test run (support.once_per_run): read by
    tests/network/test_model.py and tests/backends/test_backends.py, whichever workers run them."""
    from support import once_per_run

    def compute() -> Tuple[np.ndarray, np.ndarray]:
        import torch

        with torch.no_grad():
            scores, loc = request.getfixturevalue("golden_model")(torch.from_numpy(golden_batch))
        return scores.numpy(), loc.numpy()

    return once_per_run(tmp_path_factory, "golden_torch_forward", compute)


@pytest.fixture(scope="session")
def golden_images(golden_forward, golden_batch) -> ImageSet:
    sizes = [(int(golden_forward[f"image_{i}"].shape[1]), int(golden_forward[f"image_{i}"].shape[0]))
             for i in range(3)]
    return ImageSet("golden", golden_batch, [f"golden_{i}" for i in range(3)], sizes)


@pytest.fixture(scope="session")
def coco_images(request, pytestconfig, cfg512) -> ImageSet:
    """The first N val2014 images by file name (--npu-coco-images), or skip without COCO."""
    folder = request.getfixturevalue("coco_root") / "val2014"
    files: Sequence[Path] = sorted(folder.glob("COCO_val2014_*.jpg"))[: max(1, pytestconfig.getoption("--npu-coco-images"))]
    if not files:
        pytest.skip(f"no COCO_val2014_*.jpg images under {folder}")
    from m2det_impl.pipeline.preprocess import load_and_preprocess

    tensors, sizes = zip(*(load_and_preprocess(f, cfg512) for f in files))
    return ImageSet(f"coco{len(files)}", np.stack(tensors), [f.stem for f in files], list(sizes))


REFERENCE_CHUNK = 4  # images per ONNX Runtime call: bounds the activations' memory


@pytest.fixture(scope="session")
def reference_tag(reference_weights) -> str:
    """Weights tag of the reference runs: ``golden0`` or ``ckpt-<digest>``."""
    return weights_tag(reference_weights)


@pytest.fixture(scope="session")
def onnxruntime_reference(request, run_store, reference_weights) -> Callable[[ImageSet], Dict[str, np.ndarray]]:
    """``onnxruntime_reference(images)``: ONNX Runtime CPU outputs of the
    reference weights, computed once per session or read with --load-outputs."""
    runs: Dict[str, Dict[str, np.ndarray]] = {}

    def get(images: ImageSet) -> Dict[str, np.ndarray]:
        if images.name not in runs:
            def compute() -> Tuple[np.ndarray, np.ndarray]:
                from m2det_impl.backends.ort import OnnxRuntimeBackend

                record = request.getfixturevalue("reference_export")
                with OnnxRuntimeBackend(record.path) as backend:
                    return backend.infer(images.batch, max_batch=REFERENCE_CHUNK)

            runs[images.name] = run_store.get("onnxruntime", images, weights_tag(reference_weights),
                                              compute, loadable=True)
        return runs[images.name]

    return get


@pytest.fixture(scope="session")
def fp16_forecast(request, run_store, reference_tag, cfg512) -> Callable[[ImageSet, str], Dict[str, np.ndarray]]:
    """``fp16_forecast(images, mode)``: the laptop's fp16 forecast of the reference export's
    outputs (``m2det compare --emulate fp16``), computed once or read with --load-outputs.
    The npu and gpu layers hold real fp16 drift against it."""

    def get(images: ImageSet, mode: str) -> Dict[str, np.ndarray]:
        def compute() -> Tuple[np.ndarray, np.ndarray]:
            from m2det_impl.precision.forecast import forecast_fp16

            export = request.getfixturevalue("reference_export")
            f = forecast_fp16(export.path, images.batch, images.sizes, cfg512, mode=mode, layers=False,
                              image_ids=images.ids)
            return f.candidate["scores"], f.candidate["loc"]

        return run_store.get(f"fp16forecast-{mode}", images, reference_tag, compute, loadable=True)

    return get


@pytest.fixture
def console():
    """The library's log records on the console as ``m2det`` shows them (results on stdout, the rest on
    stderr), for tests of library calls that read what a user would see through ``capsys``."""
    from m2det_impl.cli.app import _console_logging

    with _console_logging(verbose=False):
        yield
