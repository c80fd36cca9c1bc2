"""The runtimes this project knows, each one registered entry: the one extension point.

A runtime package under ``backends/`` (``pytorch``, ``ort``, ``ascend``,
``simulated``) registers a :class:`Runtime` for each backend name it
provides: how to build the backend from a :class:`~m2det_impl.backends.spec.ModelSpec`,
whether it can run here and why not, its version, its preflight checks and
what to install. Every other layer asks here by name (the CLI's choices, the
jobs, the test suite's capability probes, report headers) and never names a
runtime itself, so adding one touches only ``backends/`` (docs/architecture.md,
"Adding a runtime").

Probes import nothing heavy until asked, and never raise: an absent runtime
is a reason string, not an exception.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Dict, FrozenSet, List, Mapping, Optional, Tuple

from m2det_impl.environment import distribution_version
from m2det_impl.errors import BackendUnavailableError, UsageError

if TYPE_CHECKING:  # the spec and the backend are what entries take and give; imported for types only
    from m2det_impl.backends.base import Backend
    from m2det_impl.backends.spec import ModelSpec
    from m2det_impl.network.config import M2DetConfig

__all__ = [
    "Runtime",
    "register",
    "runtime",
    "runtimes",
    "runtime_names",
    "runtime_for_precision",
    "runtime_with_dumps",
    "availability",
    "DEFAULT_RUNTIME",
]

#: The runtime a job uses when none is named: float32 ONNX Runtime on the CPU.
DEFAULT_RUNTIME = "onnxruntime"

#: The packages that register runtimes, imported on the first look-up.
_RUNTIME_PACKAGES = ("ort", "pytorch", "ascend", "simulated")

#: Model files a spec may carry: a checkpoint, an ONNX file, an Ascend offline model.
MODEL_FILES = frozenset({"weights", "onnx", "om"})

#: Runtime options a spec may carry besides its model files: a device id, intra-op threads, int8
#: calibration images, the simulated device time. A runtime declares those it reads (``Runtime.options``);
#: one it does not read is refused, as a model file is.
RUNTIME_OPTIONS = frozenset({"device_id", "threads", "calib", "sim_ms_per_image"})


@dataclass(frozen=True)
class Runtime:
    """One backend name and everything the rest of the project needs to know of it.

    ``build(spec, cfg)`` returns a :class:`~m2det_impl.backends.base.Backend`;
    ``model_files`` says which of ``weights``/``onnx``/``om`` it reads (a file
    it does not read is refused, so a record never credits weights that were
    never loaded); ``options`` which runtime options of :data:`RUNTIME_OPTIONS`
    it reads (one it does not read is refused too); ``preflight(spec)`` fails in the first second what would
    fail after hours; ``identity(spec)`` adds what decides its numbers to a
    run's record; ``precision``/``reference`` name a precision variant and the
    float32 runtime it is compared against; ``describe_model(path)`` says what
    such a variant's model file is. Two build steps hook into ``m2det export``:
    ``after_export(files, out_dir, **options)`` writes what the runtime needs
    beside the exported ONNX files (the Ascend entry: the atc census and
    ``atc_build.sh``) and returns lines for the user; a precision variant's
    ``export_model(cfg, out_dir, **options)`` writes its own model file
    (int8: the quantized model) and returns its path and lines. A device
    runtime that can dump every layer's output says how to read such a dump
    (``read_dumps(folder)`` -> the files and their tensors) and the fusion map
    of its compiled model (``read_fusion_map(path)``), for ``m2det drift``.
    """

    name: str
    device: str  # cpu, npu, gpu, sim (simulated)
    description: str
    build: Callable[["ModelSpec", "M2DetConfig"], "Backend"]
    install_hint: str
    module: str  # import name of the runtime, probed by availability()
    distributions: Tuple[str, ...] = ()  # pip distributions that may carry it, first found wins
    provider: Optional[str] = None  # ONNX Runtime execution provider it needs
    model_files: FrozenSet[str] = frozenset({"weights", "onnx"})
    options: FrozenSet[str] = frozenset()
    preflight: Optional[Callable[["ModelSpec"], None]] = None
    identity: Optional[Callable[["ModelSpec"], Mapping[str, object]]] = None
    precision: str = "float32"
    reference: Optional[str] = None
    describe_model: Optional[Callable[[str], Mapping[str, object]]] = None
    after_export: Optional[Callable[..., List[str]]] = None
    export_model: Optional[Callable[..., Tuple[Path, List[str]]]] = None
    read_dumps: Optional[Callable[[Path], Tuple[List[Path], list]]] = None
    read_fusion_map: Optional[Callable[[Path], Mapping[str, object]]] = None

    @property
    def loads_weights(self) -> bool:
        """True when the runtime's numbers come from a checkpoint (golden weights when none is given)."""
        return "weights" in self.model_files

    def availability(self, importer: Callable[[str], object] = importlib.import_module) -> Tuple[bool, str]:
        """(can it run here, why not). Imports the runtime; never raises."""
        try:
            module = importer(self.module)
        except Exception as exc:  # noqa: BLE001 - absent or broken runtimes are the same to a probe
            return False, f"{self.module} is not importable ({type(exc).__name__}: {exc})"
        if self.provider is not None:
            try:
                providers = list(module.get_available_providers())
            except Exception as exc:  # noqa: BLE001
                return False, f"{self.module} cannot list its execution providers ({exc})"
            if self.provider not in providers:
                return False, f"{self.module} has no {self.provider} (it offers {', '.join(providers) or 'none'})"
        return True, ""

    def require(self) -> None:
        """:class:`BackendUnavailableError` naming the runtime, why not and what to install, unless it can run here."""
        ok, why = self.availability()
        if not ok:
            raise BackendUnavailableError(f"backend {self.name}: {why}; {self.install_hint}")

    def version(self) -> Optional[str]:
        """The installed version of the runtime (package metadata), or ``None``."""
        return distribution_version(self.module, *self.distributions)


_RUNTIMES: Dict[str, Runtime] = {}
_loaded = False


def register(entry: Runtime) -> Runtime:
    """Add ``entry`` (called by each runtime package when it is imported)."""
    if entry.name in _RUNTIMES and _RUNTIMES[entry.name] != entry:
        raise ValueError(f"runtime {entry.name!r} is registered twice")
    unknown = set(entry.model_files) - MODEL_FILES
    if unknown:
        raise ValueError(f"runtime {entry.name!r}: unknown model files {sorted(unknown)}")
    unknown = set(entry.options) - RUNTIME_OPTIONS
    if unknown:
        raise ValueError(f"runtime {entry.name!r}: unknown options {sorted(unknown)}")
    _RUNTIMES[entry.name] = entry
    return entry


def runtimes() -> Mapping[str, Runtime]:
    """Every registered runtime by name, in registration order."""
    global _loaded
    if not _loaded:
        for package in _RUNTIME_PACKAGES:
            importlib.import_module(f"m2det_impl.backends.{package}")
        _loaded = True
    return dict(_RUNTIMES)


def runtime(name: str) -> Runtime:
    """The entry called ``name``, or a :class:`UsageError` listing the known names."""
    known = runtimes()
    if name not in known:
        raise UsageError(f"unknown backend {name!r}; choose one of {', '.join(known)}")
    return known[name]


def runtime_names(device: Optional[str] = None) -> Tuple[str, ...]:
    """Names of the known runtimes, optionally only those of one device kind."""
    return tuple(n for n, e in runtimes().items() if device is None or e.device == device)


def runtime_for_precision(precision: str) -> Runtime:
    """The runtime of a precision variant (``int8``), compared against its ``reference`` runtime."""
    found = [e for e in runtimes().values() if e.precision == precision and e.reference]
    if len(found) != 1:
        raise UsageError(f"no single precision variant {precision!r} among the runtimes "
                         f"({', '.join(e.name for e in found) or 'none'})")
    return found[0]


def runtime_with_dumps(name: Optional[str] = None) -> Runtime:
    """The runtime whose layer dumps ``m2det drift`` reads: ``name``, or the one registered runtime that reads dumps."""
    if name is not None:
        entry = runtime(name)
        if entry.read_dumps is None:
            raise UsageError(f"backend {name!r} has no layer dump to read")
        return entry
    found = [e for e in runtimes().values() if e.read_dumps is not None]
    if len(found) != 1:
        raise UsageError(f"name the runtime whose dump this is; these read dumps: {', '.join(e.name for e in found)}")
    return found[0]


def availability(name: str, importer: Callable[[str], object] = importlib.import_module) -> Tuple[bool, str]:
    """(can ``name`` run here, why not); see :meth:`Runtime.availability`."""
    return runtime(name).availability(importer)
