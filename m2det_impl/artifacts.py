"""Where a run's model comes from: weights, a cached ONNX export, a backend.

Exporting M2Det512 takes about 15 s and writes about 530 MB, so exports are
cached under a key of everything that changes the file (input size, batch
mode, opset, the weights' identity, torch and onnx versions) and shared by the
CLI and the test suite. A file lock lets parallel processes (pytest-xdist
workers, shards) wait for one exporter instead of all exporting.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import time
from pathlib import Path
from typing import Iterator, Optional, Union

from .config import M2DetConfig

__all__ = ["cache_dir", "weights_tag", "load_model", "cached_onnx", "make_backend", "BACKENDS"]

PathLike = Union[str, Path]
BACKENDS = ("onnxruntime", "torch", "om")


def cache_dir() -> Path:
    """``$M2DET_CACHE_DIR``, else ``$XDG_CACHE_HOME/m2det-conformance``, else ``~/.cache/...``."""
    env = os.environ.get("M2DET_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "m2det-conformance"


def weights_tag(weights: Optional[PathLike], salt: int = 0) -> str:
    """A short identity of the weights: golden weights by salt, a file by its
    resolved path, size and modification time (hashing 530 MB each run would
    cost more than the lookup saves)."""
    if weights is None:
        return f"golden-salt{salt}"
    path = Path(weights).resolve()
    stat = path.stat()
    digest = hashlib.sha256(f"{path}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    return f"{path.stem}-{digest}"


def load_model(cfg: M2DetConfig, weights: Optional[PathLike] = None, salt: int = 0):
    """The network with ``weights`` loaded, or golden weights when none are given."""
    from .model import build_model, golden_fill_, load_checkpoint

    model = build_model(cfg)
    if weights is None:
        return golden_fill_(model, salt=salt)
    return load_checkpoint(model, weights)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
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


def cached_onnx(cfg: M2DetConfig, weights: Optional[PathLike] = None, batch: Optional[int] = None,
                opset: int = 11, salt: int = 0, directory: Optional[PathLike] = None,
                log=None) -> Path:
    """Path of the ONNX export for these settings, exporting it once if needed."""
    import onnx
    import torch

    from .export import export_onnx

    directory = Path(directory) if directory is not None else cache_dir()
    batch_part = "dyn" if batch is None else f"b{batch}"
    key = f"m2det{cfg.size}-{weights_tag(weights, salt)}-{batch_part}-op{opset}-torch{torch.__version__}-onnx{onnx.__version__}"
    key = key.replace("+", "_")
    path = directory / f"{key}.onnx"
    with _file_lock(directory / f"{key}.lock"):
        if path.is_file():
            return path
        if log is not None:
            log(f"exporting ONNX ({key}) into {directory}: about 15 s and 530 MB, once")
        start = time.perf_counter()
        model = load_model(cfg, weights, salt)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            export_onnx(model, tmp, cfg, batch=batch, opset=opset)
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()
        if log is not None:
            log(f"exported in {time.perf_counter() - start:.1f} s: {path}")
    return path


def make_backend(kind: str, cfg: M2DetConfig, *, weights: Optional[PathLike] = None,
                 onnx_path: Optional[PathLike] = None, om_path: Optional[PathLike] = None,
                 device_id: int = 0, threads: Optional[int] = None, log=None):
    """Build the backend a run asked for. ``onnxruntime`` uses ``onnx_path`` or a
    cached export of ``weights``; ``om`` needs ``om_path`` and an Ascend runtime."""
    from . import backends

    if kind == "torch":
        import torch

        if threads:
            torch.set_num_threads(int(threads))
        return backends.TorchBackend(load_model(cfg, weights))
    if kind == "onnxruntime":
        path = Path(onnx_path) if onnx_path else cached_onnx(cfg, weights, log=log)
        return backends.OnnxRuntimeBackend(path, threads=threads)
    if kind == "om":
        if om_path is None:
            raise ValueError("the om backend needs an .om model: give --om PATH")
        return backends.OmBackend(om_path, device_id=device_id)
    raise ValueError(f"unknown backend {kind!r}; choose one of {', '.join(BACKENDS)}")


def stderr_log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
