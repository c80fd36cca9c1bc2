"""Where a run's model comes from: weights, a cached ONNX export, a backend.

Exporting M2Det512 takes about 15 s and writes about 530 MB, so exports are
cached under a key of everything that decides the file's bytes (the config,
the weights' identity, batch mode, opset, torch and onnx versions, and the
source of the model and the exporter) and shared by the CLI and the test
suite. A file lock lets parallel processes (pytest-xdist workers, shards) wait
for one exporter instead of all exporting; entries unused for 14 days are
pruned.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, Optional, Tuple, Union

from .config import M2DetConfig

__all__ = ["cache_dir", "weights_tag", "load_model", "ExportRecord", "cached_export", "cached_onnx",
           "make_backend", "BACKENDS"]

PathLike = Union[str, Path]
BACKENDS = ("onnxruntime", "onnxruntime-int8", "torch", "om")
PRUNE_AFTER_S = 14 * 24 * 3600  # cache entries unused this long are removed
_PACKAGE_DIR = Path(__file__).resolve().parent


def cache_dir() -> Path:
    """``$M2DET_CACHE_DIR``, else ``$XDG_CACHE_HOME/m2det-conformance``, else ``~/.cache/...``."""
    env = os.environ.get("M2DET_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "m2det-conformance"


def weights_tag(weights: Optional[PathLike], salt: int = 0) -> str:
    """A short identity of the weights: ``golden<salt>`` for golden weights, or
    ``ckpt-<digest>`` of a file's resolved path, size and modification time
    (hashing 530 MB on every run would cost more than the lookup saves)."""
    if weights is None:
        return f"golden{salt}"
    path = Path(weights).resolve()
    stat = path.stat()
    return "ckpt-" + hashlib.sha256(f"{path}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]


def load_model(cfg: M2DetConfig, weights: Optional[PathLike] = None, salt: int = 0):
    """The network with ``weights`` loaded, or golden weights when none are given."""
    from .model import build_model, golden_fill_, load_checkpoint

    model = build_model(cfg)
    if weights is None:
        return golden_fill_(model, salt=salt)
    return load_checkpoint(model, weights)


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` for the duration of the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: no lock, exports still atomic
            yield
            return
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


@dataclass(frozen=True)
class ExportRecord:
    """A cached export: its file, how long the export took when it was made,
    its size, and whether this call reused it."""

    path: Path
    seconds: float
    bytes: int
    reused: bool


def _source_digest() -> str:
    """The code that decides the graph's bytes: a change re-exports."""
    h = hashlib.sha256()
    for name in ("model.py", "export.py", "config.py"):
        h.update((_PACKAGE_DIR / name).read_bytes())
    return h.hexdigest()[:16]


def export_key(cfg: M2DetConfig, weights: str, batch: Optional[int], opset: int) -> Tuple[str, Dict[str, str]]:
    """(cache key, what it was made of) for one export."""
    import onnx
    import torch

    parts = {
        "config": repr(cfg),
        "weights": weights,
        "batch": "dynamic" if batch is None else str(batch),
        "opset": str(opset),
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "sources": _source_digest(),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20], parts


def _prune(root: Path, keep: Path) -> None:
    """Remove cache entries unused for PRUNE_AFTER_S, skipping any in use."""
    now = time.time()
    for entry in root.glob("*/export.json"):
        folder = entry.parent
        if folder == keep or now - entry.stat().st_mtime < PRUNE_AFTER_S:
            continue
        try:
            import fcntl
        except ImportError:  # pragma: no cover
            return
        with open(folder / ".lock", "a+") as handle:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue
            shutil.rmtree(folder, ignore_errors=True)


def cached_export(cfg: M2DetConfig, weights: Optional[PathLike] = None, batch: Optional[int] = None,
                  opset: int = 11, salt: int = 0, model_factory: Optional[Callable[[], object]] = None,
                  log: Optional[Callable[[str], None]] = None) -> ExportRecord:
    """The ONNX export for these settings, made at most once across processes.

    ``model_factory`` supplies the model when an export is needed (default:
    :func:`load_model`), so a caller holding the model already can lend it.
    """
    from .export import export_onnx

    key, parts = export_key(cfg, weights_tag(weights, salt), batch, opset)
    root = cache_dir() / "onnx"
    folder = root / key
    path = folder / f"m2det{cfg.size}_{parts['batch']}.onnx"
    meta = folder / "export.json"
    with file_lock(folder / ".lock"):
        if meta.is_file() and path.is_file():
            info = json.loads(meta.read_text())
            os.utime(meta)  # last use, for pruning
            return ExportRecord(path, float(info["seconds"]), path.stat().st_size, True)
        if log is not None:
            log(f"exporting ONNX once into {folder} (about 15 s and 530 MB; cached for later runs)")
        model = model_factory() if model_factory is not None else load_model(cfg, weights, salt)
        start = time.perf_counter()
        export_onnx(model, path, cfg, batch=batch, opset=opset)
        seconds = time.perf_counter() - start
        meta.write_text(json.dumps({**parts, "seconds": seconds, "bytes": path.stat().st_size}, indent=1))
    _prune(root, folder)
    if log is not None:
        log(f"exported in {seconds:.1f} s: {path}")
    return ExportRecord(path, seconds, path.stat().st_size, False)


def cached_onnx(cfg: M2DetConfig, weights: Optional[PathLike] = None, batch: Optional[int] = None,
                opset: int = 11, salt: int = 0, log: Optional[Callable[[str], None]] = None) -> Path:
    """Path of the cached ONNX export for these settings (see :func:`cached_export`)."""
    return cached_export(cfg, weights, batch, opset, salt, log=log).path


def make_backend(kind: str, cfg: M2DetConfig, *, weights: Optional[PathLike] = None,
                 onnx_path: Optional[PathLike] = None, om_path: Optional[PathLike] = None,
                 device_id: int = 0, threads: Optional[int] = None, log=None,
                 calib: Optional[PathLike] = None, calib_images: Optional[int] = None):
    """Build the backend a run asked for. ``onnxruntime`` uses ``onnx_path`` or a
    cached export of ``weights``; ``onnxruntime-int8`` uses ``onnx_path`` (a QDQ
    model) or the cached int8 model of ``weights`` calibrated on ``calib_images``
    images of ``calib`` (:func:`m2det_impl.quantize.cached_int8`); ``om`` needs
    ``om_path`` and an Ascend runtime."""
    from . import backends

    if kind == "torch":
        import torch

        if threads:
            torch.set_num_threads(int(threads))
        return backends.TorchBackend(load_model(cfg, weights))
    if kind == "onnxruntime":
        path = Path(onnx_path) if onnx_path else cached_onnx(cfg, weights, log=log)
        return backends.OnnxRuntimeBackend(path, threads=threads)
    if kind == "onnxruntime-int8":
        from .quantize import DEFAULT_CALIBRATION_IMAGES, cached_int8, check_int8_model

        if onnx_path:
            path = check_int8_model(onnx_path)
        else:
            path = cached_int8(cfg, weights, calib, calib_images or DEFAULT_CALIBRATION_IMAGES, log=log).path
        backend = backends.OnnxRuntimeBackend(path, threads=threads)
        backend.name = "onnxruntime-int8"
        return backend
    if kind == "om":
        if om_path is None:
            raise ValueError("the om backend needs an .om model: give --om PATH")
        return backends.OmBackend(om_path, device_id=device_id)
    raise ValueError(f"unknown backend {kind!r}; choose one of {', '.join(BACKENDS)}")
