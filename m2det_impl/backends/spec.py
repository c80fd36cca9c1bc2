"""What a job runs: the runtime's name and the model files it needs, as one value.

The jobs layer builds a :class:`ModelSpec` from its options and hands it
here; the runtime's registered entry (:mod:`m2det_impl.backends.registry`)
turns it into a backend. Nothing above this module looks at the runtime's
name.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Optional, Sequence

from m2det_impl._io import PathLike
from m2det_impl.backends.registry import DEFAULT_RUNTIME, Runtime, runtime

if TYPE_CHECKING:
    from m2det_impl.backends.base import Backend
    from m2det_impl.network.config import M2DetConfig

__all__ = ["GOLDEN_WARNING", "ModelSpec", "warn_golden"]

logger = logging.getLogger(__name__)

GOLDEN_WARNING = (
    "WARNING: no --weights given: using the deterministic GOLDEN weights (random, salt 0).\n"
    "WARNING: the pipeline is real, the AP is MEANINGLESS. Pass --weights m2det512_vgg.pth for a real score."
)


def warn_golden() -> None:
    """Say loudly, once per job, that the numbers come from untrained weights."""
    logger.warning(GOLDEN_WARNING)


@dataclass(frozen=True)
class ModelSpec:
    """What a job runs: the backend's name and the files it needs."""

    backend: str = DEFAULT_RUNTIME
    weights: Optional[PathLike] = None
    onnx: Optional[PathLike] = None
    om: Optional[PathLike] = None
    device_id: int = 0
    #: The batch a dynamic-batch model runs at (``--batch-size``); a static-batch model's own batch is
    #: checked against it. ``None``: the model's own (static) batch.
    batch_size: Optional[int] = None
    threads: Optional[int] = None
    calib: Optional[PathLike] = None
    calib_images: Optional[int] = None
    sim_ms_per_image: Optional[float] = None  # simulated device time per image; None: the runtime's default
    dump: Optional[PathLike] = None  # folder for a layer-by-layer dump (the runtime's own, for m2det drift)

    @property
    def runtime(self) -> Runtime:
        """The registered entry of :attr:`backend`."""
        return runtime(self.backend)

    @property
    def golden(self) -> bool:
        """True when the run uses golden (untrained) weights: the runtime loads a
        checkpoint, none was given, and no ONNX file brings its own."""
        return self.weights is None and self.runtime.loads_weights and not self._reads("onnx")

    def weights_record(self) -> Dict[str, object]:
        """What produced the numbers, for every record (summary.json, report, bench.json):
        ``{"kind": "checkpoint", "path", "sha256"}`` for a loaded checkpoint, ``{"kind": "onnx"|"om",
        "path", "sha256"}`` for a model file that brings its own weights (hashed by content),
        ``{"kind": "golden"}`` for golden weights, ``{"kind": "none"}`` for a runtime that reads no
        model at all (the simulated NPU)."""
        from m2det_impl._io import sha256_file

        for kind in ("om", "onnx"):
            path = getattr(self, kind)
            if path is not None and kind in self.runtime.model_files:
                from m2det_impl.backends.cache import export_weights_tag

                record: Dict[str, object] = {"kind": kind, "path": str(Path(path).resolve()),
                                             "sha256": sha256_file(path)}
                tag = export_weights_tag(path)
                if tag is not None:  # a cached export: it says which weights it was made from
                    record["exported_from"] = tag
                return record
        if not self.runtime.loads_weights:
            return {"kind": "none"}
        if self.weights is None:
            return {"kind": "golden"}
        return {"kind": "checkpoint", "path": str(Path(self.weights).resolve()), "sha256": sha256_file(self.weights)}

    def batch_asked(self) -> object:
        """The batch a job asks for, as its journal or job record keeps it: :attr:`batch_size`, else the batch
        it runs without one (an ONNX file's static batch, read from its header; 1 for a dynamic model), so
        that leaving ``--batch-size`` out and giving that batch are one job. An ``.om``'s own batch is known
        only once it is opened: "the model's own"."""
        if self.batch_size is not None:
            return self.batch_size
        if self.om is not None:
            return "the model's own"
        if self.onnx is not None:
            from m2det_impl.network.onnx_header import image_input

            return image_input(self.onnx).static_batch or 1
        return 1

    def golden_numbers(self, record: Dict[str, object]) -> bool:
        """Whether golden weights produced the numbers that ``record`` (:meth:`weights_record`) describes: none
        given, or a cached export made from them (what the run summary's ``golden_weights`` says)."""
        return self.golden or golden_record(record)

    def _reads(self, kind: str) -> bool:
        """A model file of ``kind`` is given and the runtime reads it."""
        return getattr(self, kind) is not None and kind in self.runtime.model_files

    def preflight(self, cfg: Optional["M2DetConfig"] = None, device_ids: Sequence[int] = ()) -> None:
        """Fail in the first second on what would otherwise fail after hours (with ``cfg``:
        a model file of another input size too); a model file or option the runtime does not read
        (``device_ids``: those the job was given) is refused."""
        from m2det_impl.backends.preflight import check_model_inputs

        check_model_inputs(self, cfg, device_ids)

    def create(self, cfg: "M2DetConfig") -> "Backend":
        """The backend, exporting or quantizing (once, cached) when needed."""
        if self.golden:
            warn_golden()
        return self.runtime.build(self, cfg)

    def identity(self, cfg: "M2DetConfig") -> Dict[str, object]:
        """What decides a run's numbers, recorded with its results (a resumed run must match it)."""
        from m2det_impl.network.weights_identity import weights_tag

        model = next((getattr(self, kind) for kind in ("om", "onnx") if self._reads(kind)), None)
        ident: Dict[str, object] = {
            "size": cfg.size,
            "backend": self.backend,
            "model": str(Path(model).resolve()) if model else None,
            "weights": weights_tag(self.weights),
            "test": dict(vars(cfg.test)),
        }
        extra = self.runtime.identity
        if extra is not None:
            ident.update(extra(self))
        return ident


def golden_record(record: Dict[str, object]) -> bool:
    """Whether a weights record (:meth:`ModelSpec.weights_record`, as written into a summary) says golden
    weights produced the numbers: golden itself, or a cached export made from them."""
    return record.get("kind") == "golden" or str(record.get("exported_from", "")).startswith("golden")
