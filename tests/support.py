"""Test-side helpers: raw outputs of a *perfect* network for known boxes, and counts derived from the model.

The expected values of tests built on these come from the ground truth: the
boxes are encoded into the raw outputs a perfect network would emit, and the
pipeline must give them back. One qualification: the encoding uses the
package's own ``encode`` (the inverse of the ``decode`` under test), so these
round trips hold the pipeline's bookkeeping (priors, thresholds, categories,
box convention, scoring) to the ground truth, not ``decode`` itself; that is
held to the reference's golden outputs (tests/pipeline/test_postprocess.py) and
to an independent formula (tests/pipeline/test_nms_properties.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

#: The reduced network the plumbing tests run (docs/testing.md, "Suite time"): M2Det at the
#: 320 preset with 64 planes and 2 levels instead of 256 and 8, the same VGG16 backbone, TUMs,
#: FFMs, heads and export code, golden weights; a config file as ``m2det --config`` reads.
SMALL_CONFIG_FILE = Path(__file__).resolve().parents[1] / "fixtures" / "m2det320_small_vgg.py"


def run_shared_dir(tmp_path_factory) -> Path:
    """This test run's own temporary folder, shared by its pytest-xdist workers (each worker's
    basetemp is a sub-folder of it): where what is computed once per run is kept."""
    import os

    root = tmp_path_factory.getbasetemp()
    return root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root


def once_per_run(tmp_path_factory, name: str, compute):
    """``compute()``, computed once per test run: the first pytest-xdist worker to ask computes it while
    the others wait on a file lock, then read its pickle from the run's folder (session fixtures are per
    worker, so without this each worker that gets one of the tests computes its own copy). A new run
    computes afresh: nothing is kept between runs."""
    import os
    import pickle

    from m2det_impl.backends.cache import file_lock

    root = run_shared_dir(tmp_path_factory)
    path = root / f"{name}.pickle"
    with file_lock(root / f"{name}.lock"):
        if not path.is_file():
            value = compute()
            partial = root / f"{name}.pickle.partial"
            partial.write_bytes(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))
            os.replace(partial, path)
            return value
    return pickle.loads(path.read_bytes())


def _iou_with_priors(box: np.ndarray, priors_xyxy: np.ndarray) -> np.ndarray:
    ix1 = np.maximum(box[0], priors_xyxy[:, 0])
    iy1 = np.maximum(box[1], priors_xyxy[:, 1])
    ix2 = np.minimum(box[2], priors_xyxy[:, 2])
    iy2 = np.minimum(box[3], priors_xyxy[:, 3])
    inter = np.clip(ix2 - ix1, 0, None) * np.clip(iy2 - iy1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (priors_xyxy[:, 2] - priors_xyxy[:, 0]) * (priors_xyxy[:, 3] - priors_xyxy[:, 1])
    return inter / (area + areas - inter)


def perfect_outputs(annotation_file: Path, cfg, score: float = 0.9) -> Dict[str, Tuple[np.ndarray, np.ndarray, dict]]:
    """{file stem: (scores [P, C], loc [P, 4], image entry)} whose decoding gives
    back every ground-truth box of the annotation file with ``score``."""
    from m2det_impl.network.priors import make_priors
    from m2det_impl.pipeline.postprocess import encode

    data = json.loads(Path(annotation_file).read_text())
    cat_index = {c["id"]: j + 1 for j, c in enumerate(sorted(data["categories"], key=lambda c: c["id"]))}
    priors = make_priors(cfg).astype(np.float64)
    priors_xyxy = np.concatenate([priors[:, :2] - priors[:, 2:] / 2, priors[:, :2] + priors[:, 2:] / 2], 1)
    by_image: Dict[int, List[dict]] = {}
    for ann in data["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    out = {}
    for image in data["images"]:
        w, h = image["width"], image["height"]
        scores = np.zeros((cfg.num_priors, cfg.num_classes), np.float32)
        scores[:, 0] = 1.0
        loc = np.zeros((cfg.num_priors, 4), np.float32)
        used = set()
        for ann in by_image.get(image["id"], []):
            x, y, bw, bh = ann["bbox"]
            # the reference reports width x2 - x1 + 1: encode x2 = x + w - 1
            box = np.array([x / w, y / h, (x + bw - 1) / w, (y + bh - 1) / h])
            order = np.argsort(-_iou_with_priors(box, priors_xyxy))
            prior = next(int(p) for p in order if int(p) not in used)
            used.add(prior)
            loc[prior] = encode(box[None].astype(np.float32), priors[prior][None].astype(np.float32), cfg.test.variances)[0]
            scores[prior, 0] = 1.0 - score
            scores[prior, cat_index[ann["category_id"]]] = score
        out[Path(image["file_name"]).stem] = (scores, loc, image)
    return out


def conv_layers(model) -> int:
    """Convolutions of the network, counted on the module tree (a module shared
    by several levels, as ``leach`` is, counts once: the export has one Conv)."""
    import torch.nn as nn

    return sum(isinstance(m, nn.Conv2d) for m in model.modules())


def shaped_state(cfg, **replaced):
    """A checkpoint's state dict with every name and shape of the network for ``cfg`` and no
    values: each entry a zero broadcast to its shape (stride 0), so ``torch.save`` writes a few
    kilobytes where M2Det512's weights take 530 MB. Enough for every check a checkpoint that does
    not fit is refused on (names, then shapes), which happens before any value is read.
    ``replaced`` swaps entries by name (dots as ``__``), e.g. ``conf__0__weight=torch.zeros(...)``."""
    from collections import OrderedDict

    import torch

    from m2det_impl.network.model import build_model

    with torch.device("meta"):
        names = [(name, tuple(t.shape)) for name, t in build_model(cfg).state_dict().items()]
    state = OrderedDict((name, torch.zeros(()).expand(shape)) for name, shape in names)
    for key, value in replaced.items():
        name = key.replace("__", ".")
        assert name in state, f"{name} is not an entry of the network"
        state[name] = value
    return state


def decoder_sums(cfg) -> int:
    """Element-wise sums of the TUM decoders: each of the ``num_levels`` TUMs adds
    a lateral branch at every scale but the smallest (docs/reference.md section 2)."""
    return cfg.network.num_levels * (cfg.network.num_scales - 1)


def fake_backend_factory(cfg):
    """A stand-in for ``ModelSpec.create`` in tests of orchestration (resume, skip, messages) that
    need no model: every image gets all-background outputs, so it has no detections. It never
    counts as a test of any runtime."""
    from m2det_impl.backends.base import Backend

    class AllBackground(Backend):
        name = "all-background"
        input_size = cfg.size

        def _run(self, chunk):
            n = chunk.shape[0]
            scores = np.zeros((n, cfg.num_priors, cfg.num_classes), np.float32)
            scores[:, :, 0] = 1.0
            return scores, np.zeros((n, cfg.num_priors, 4), np.float32)

    def create(self, cfg_):
        return AllBackground()

    return create


def decode_or_crash(path, cfg):
    """A decode function for host worker processes that dies by SIGKILL on a
    file whose name starts with ``crash`` (a decoder crashing on an image), and
    decodes every other file as the pipeline does."""
    import os
    import signal

    from m2det_impl.pipeline.preprocess import load_and_preprocess

    if Path(path).name.startswith("crash"):
        os.kill(os.getpid(), signal.SIGKILL)
    return load_and_preprocess(path, cfg)


def forecast_drift(run, reference, forecast, sizes, cfg, ids) -> Dict[str, dict]:
    """How a device run drifts from float32 ("actual"), how the laptop's fp16
    forecast said it would ("predicted"), and how far the two differ
    ("forecast_error"): per output the worst metrics over the images (a
    non-finite output reported as such), and the lowest detection agreement."""
    from m2det_impl.evaluation.agreement import detection_agreement
    from m2det_impl.evaluation.metrics import compare_runs, worst_per_output

    figures: Dict[str, dict] = {}
    for label, (a, b) in {"actual": (run, reference), "predicted": (forecast, reference),
                          "forecast_error": (run, forecast)}.items():
        agreements = detection_agreement(a, b, sizes, cfg, ids)
        figures[label] = {"outputs": worst_per_output(compare_runs(a, b, ids)),
                          "agreement": min(d.fraction for d in agreements)}
    return figures


def record_forecast_drift(figures: Dict[str, dict], prefix: str, record_property) -> str:
    """Record :func:`forecast_drift`'s three drifts as junit properties
    ``<prefix>_<label>_<output>_{rel_l2,cosine}`` and ``<prefix>_<label>_agreement``;
    returns the one-line summary the npu and gpu layers print."""
    for label in ("actual", "predicted", "forecast_error"):
        for output, w in figures[label]["outputs"].items():
            record_property(f"{prefix}_{label}_{output}_rel_l2", w["rel_l2"])
            record_property(f"{prefix}_{label}_{output}_cosine", w["cosine"])
        record_property(f"{prefix}_{label}_agreement", figures[label]["agreement"])
    return "; ".join(
        f"{output} rel_l2 actual {figures['actual']['outputs'][output]['rel_l2']:.3g}, predicted "
        f"{figures['predicted']['outputs'][output]['rel_l2']:.3g}, forecast error "
        f"{figures['forecast_error']['outputs'][output]['rel_l2']:.3g}" for output in ("scores", "loc")
    ) + (f"; agreement actual {figures['actual']['agreement']:.4f}, predicted "
         f"{figures['predicted']['agreement']:.4f}")


def forecast_misses(figures: Dict[str, dict]) -> List[Tuple[str, float, float]]:
    """``(output, forecast error, actual drift)`` for each output where the
    forecast is not closer to the device than float32 is. A NaN (an fp16
    overflow) counts as a miss: an unmeasurable drift never passes."""
    misses = []
    for output in ("scores", "loc"):
        error = figures["forecast_error"]["outputs"][output]["rel_l2"]
        actual = figures["actual"]["outputs"][output]["rel_l2"]
        if not error <= actual:
            misses.append((output, error, actual))
    return misses

