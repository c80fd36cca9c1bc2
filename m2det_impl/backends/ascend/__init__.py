"""The Ascend runtime: an atc-built ``.om`` through ``aclruntime``/``ais_bench``
(:mod:`.om`), its build step, ``atc`` (:mod:`.atc`: the op census, the
command lines, the build script), and what the device writes when asked to
dump every layer (:mod:`.dump_format`, :mod:`.om_json`, :mod:`.acl_json`)."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Sequence

from m2det_impl.backends.registry import Runtime, register
from m2det_impl.errors import BackendUnavailableError, InputFileError

from .om import INSTALL_HINT, OmBackend, map_om_outputs

__all__ = ["OmBackend", "map_om_outputs", "INSTALL_HINT", "OM", "check_om_runtime"]

_OM_RUNTIMES = ("ais_bench.infer.interface", "aclruntime")


def check_om_runtime(modules: Sequence[str] = _OM_RUNTIMES) -> str:
    """The name of the first importable Ascend runtime, or
    :class:`BackendUnavailableError` saying what to install.

    Importing is what :class:`OmBackend` does later, so a runtime that imports
    here but is broken (no CANN libraries) fails there, still before any image
    is processed.
    """
    errors = []
    for name in modules:
        try:
            importlib.import_module(name)
            return name
        except Exception as exc:  # noqa: BLE001 - a half-installed SDK raises more than ImportError
            errors.append(f"{name}: {type(exc).__name__}: {exc}")
    raise BackendUnavailableError(f"{INSTALL_HINT} ({'; '.join(errors)})")


def _preflight(spec) -> None:
    if spec.om is None:
        raise InputFileError(None, f"the {OM.name} backend needs an .om model: give --om PATH")
    check_om_runtime()


def _after_export(files, out_dir, **options):
    from .atc import write_build_files

    return write_build_files(files, out_dir, **options)


def _read_dumps(folder):
    from .dump_format import find_dump_files, read_dumps

    files = find_dump_files(folder)
    return files, read_dumps(files)


def _read_fusion_map(path):
    from .om_json import read_fusion_map

    return read_fusion_map(path)


def _build(spec, cfg):
    if spec.om is None:
        raise InputFileError(None, f"the {OM.name} backend needs an .om model: give --om PATH")
    acl_json = None
    if spec.dump is not None:  # ais_bench --dump: acl.json beside the outputs, the dump under <output>/dump
        from .acl_json import write_acl_json

        acl_json = write_acl_json(spec.dump, spec.om)
    return OmBackend(Path(spec.om), device_id=spec.device_id, batch_size=spec.batch_size, acl_json=acl_json)


OM = register(Runtime(
    name="om", device="npu", description="an atc-built .om on an Ascend NPU through aclruntime / ais_bench",
    build=_build, install_hint=INSTALL_HINT, module="aclruntime", distributions=("aclruntime", "ais_bench"),
    model_files=frozenset({"om"}), options=frozenset({"device_id"}), preflight=_preflight, after_export=_after_export,
    precision="fp16",  # atc's default --precision_mode force_fp16
    read_dumps=_read_dumps, read_fusion_map=_read_fusion_map,
))
