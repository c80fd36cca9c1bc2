"""The identity of a model's weights, without torch: a run's record and the model cache's key
name the weights by it, and neither should pay for importing torch to do so."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Optional

from m2det_impl._io import PathLike

__all__ = ["weights_tag"]


def weights_tag(weights: Optional[PathLike], salt: int = 0) -> str:
    """A short identity of the weights: ``golden<salt>`` for golden weights, or
    ``ckpt-<digest>`` of a file's resolved path, size and modification time
    (hashing 530 MB on every run would cost more than the lookup saves)."""
    if weights is None:
        return f"golden{salt}"
    path = Path(weights).resolve()
    stat = path.stat()
    return "ckpt-" + hashlib.sha256(f"{path}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
