"""An ONNX file in ONNX Runtime, on whichever execution provider an entry of
this package asks for (CPU here; CUDA, TensorRT and CANN in ``gpu`` and ``cann``).

ONNX Runtime silently falls back to the CPU when a requested provider fails
to load (a missing CUDA library, say); a comparison that believes it ran on
the GPU would then compare the CPU with itself. So the session's providers
are checked after it is created.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np

from m2det_impl.backends.base import Backend, Outputs, default_threads
from m2det_impl.errors import BackendUnavailableError, InputFileError, ModelOutputError

__all__ = [
    "OnnxRuntimeBackend",
    "PROVIDER_ALIASES",
    "INSTALL_HINTS",
    "require_providers",
]

PROVIDER_ALIASES: Dict[str, str] = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cann": "CANNExecutionProvider",
}
#: What to install for each execution provider: the one place this package says it.
INSTALL_HINTS: Dict[str, str] = {
    "CPUExecutionProvider": "pip install onnxruntime",
    "CUDAExecutionProvider": "pip install onnxruntime-gpu (instead of onnxruntime) on a host with an NVIDIA GPU, "
                             "its driver, CUDA 12 and cuDNN 9",
    "TensorrtExecutionProvider": "pip install onnxruntime-gpu and TensorRT 10 (pip install tensorrt-cu12, or "
                                 "NVIDIA's TensorRT libraries on LD_LIBRARY_PATH) on a host with an NVIDIA GPU",
    "CANNExecutionProvider": "pip install onnxruntime-cann (instead of onnxruntime) on an Ascend host with the "
                             "CANN toolkit (source set_env.sh first)",
}
_SHORT_NAME = {v: k for k, v in PROVIDER_ALIASES.items()}

ProviderSpec = Union[str, tuple]


def _provider_name(spec: ProviderSpec) -> str:
    name = spec[0] if isinstance(spec, tuple) else spec
    return PROVIDER_ALIASES.get(str(name).lower(), str(name))


class OnnxRuntimeBackend(Backend):
    """An ONNX file in ONNX Runtime.

    ``providers``: execution providers in priority order, full names or the
    aliases ``cpu``, ``cuda``, ``cann`` (a ``(name, options)`` tuple passes
    provider options); default CPU only. ``threads`` sets the intra-op thread
    count (default: ``$M2DET_THREADS``, else ONNX Runtime's choice). The file's outputs must be named
    ``scores`` and ``loc``; they are returned in that order whatever their
    position in the file.
    """

    def __init__(self, path: Union[str, Path], providers: Optional[Sequence[ProviderSpec]] = None,
                 threads: Optional[int] = None):
        try:
            import onnxruntime as ort
        except ImportError:
            raise BackendUnavailableError(f"onnxruntime is not installed: {INSTALL_HINTS['CPUExecutionProvider']}") from None
        path = Path(path)
        if not path.is_file():
            raise InputFileError(path, "ONNX file not found")
        specs = list(providers) if providers else ["CPUExecutionProvider"]
        wanted = [_provider_name(s) for s in specs]
        available = ort.get_available_providers()
        missing = [w for w in wanted if w not in available]
        if missing:
            hints = "; ".join(INSTALL_HINTS.get(m, f"{m} is not part of this onnxruntime build") for m in missing)
            raise BackendUnavailableError(
                f"onnxruntime {ort.__version__} lacks {', '.join(missing)} (available: "
                f"{', '.join(available)}): {hints}"
            )
        options = ort.SessionOptions()
        threads = default_threads() if threads is None else threads
        if threads is not None:
            options.intra_op_num_threads = int(threads)
        resolved: List[ProviderSpec] = [
            (_provider_name(s), s[1]) if isinstance(s, tuple) else _provider_name(s) for s in specs
        ]
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options, providers=resolved)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types
            raise InputFileError(path, f"ONNX Runtime cannot load it ({type(exc).__name__}: {exc})") from None
        active = self.session.get_providers()
        dropped = [w for w in wanted if w not in active]
        if dropped:
            raise BackendUnavailableError(
                f"{path}: onnxruntime fell back to {', '.join(active)} instead of {', '.join(dropped)} "
                "(its libraries failed to load; see onnxruntime's log)"
            )
        self.providers = active
        self.source = str(path)
        primary = _SHORT_NAME.get(wanted[0], wanted[0])
        self.name = "onnxruntime" if primary == "cpu" else f"onnxruntime-{primary}"
        self._bind_io(path)

    def _bind_io(self, path: Path) -> None:
        inputs = self.session.get_inputs()
        outputs = self.session.get_outputs()
        found = ", ".join(f"{o.name}{list(o.shape)}" for o in outputs)
        names = [o.name for o in outputs]
        if sorted(names) != ["loc", "scores"]:
            raise ModelOutputError(
                f"{path}: outputs are [{found}]; expected exactly 'scores' [B,P,C] and 'loc' [B,P,4] "
                "(re-export with m2det export; the guide's exporter swaps these names)"
            )
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            raise ModelOutputError(
                f"{path}: inputs are {[(i.name, i.shape) for i in inputs]}; expected one image [B,3,S,S]"
            )
        self.input_name = inputs[0].name
        batch, _, side, _ = inputs[0].shape
        self.static_batch = batch if isinstance(batch, int) and batch > 0 else None
        self.input_size = side if isinstance(side, int) and side > 0 else None
        self.output_names = ["scores", "loc"]

    def _run(self, chunk: np.ndarray) -> Outputs:
        scores, loc = self.session.run(self.output_names, {self.input_name: chunk})
        return scores, loc

    def close(self) -> None:
        self.session = None


def require_providers(wanted: Sequence[str]) -> None:
    """:class:`BackendUnavailableError` naming what to install when the installed
    onnxruntime lacks one of ``wanted``, before a session (and an export) is tried."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise BackendUnavailableError(f"onnxruntime is not installed: {INSTALL_HINTS[wanted[0]]}") from None
    available = list(ort.get_available_providers())
    missing = [w for w in wanted if w not in available]
    if missing:
        raise BackendUnavailableError(
            f"onnxruntime {getattr(ort, '__version__', '?')} lacks {', '.join(missing)} (available: "
            f"{', '.join(available) or 'none'}): " + "; ".join(INSTALL_HINTS[m] for m in missing))
