"""PyTorch eager execution: the reference the exported graphs are held to."""

from __future__ import annotations

import numpy as np

from m2det_impl.backends.base import Backend, Outputs

__all__ = [
    "TorchBackend",
]


class TorchBackend(Backend):
    """Runs an M2Det ``nn.Module`` (``forward(image) -> (scores, loc)``) on CPU.

    The model is switched to eval mode; gradients are never recorded.
    """

    def __init__(self, model, name: str = "torch"):
        self.model = model.eval()
        self.name = name
        cfg = getattr(model, "cfg", None)
        self.input_size = getattr(cfg, "size", None)
        self.source = type(model).__name__

    def _run(self, chunk: np.ndarray) -> Outputs:
        import torch

        with torch.inference_mode():
            scores, loc = self.model(torch.from_numpy(chunk))
        return scores.numpy(), loc.numpy()

    def close(self) -> None:
        self.model = None
