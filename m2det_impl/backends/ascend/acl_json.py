"""The ``acl.json`` that ``ais_bench --dump`` writes, so one command on a 310P makes a dump ``m2det drift`` reads.

Why a copy of ais_bench's file and not our own: ACL reads it at
``aclInit``; keeping ais_bench's keys and layout (checked against Ascend/tools'
``ais_bench/infer/miscellaneous.py``: ``dump_path`` = ``<output>/dump``,
``dump_mode`` ``all``, ``dump_list`` with the model's file name cut at its
first dot, ``<output>/acl.json``, 4-space indent, sorted keys) means a dump
made by ``m2det infer --dump`` and one made by ais_bench itself are laid out
the same, and an engineer can diff the two files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict

from m2det_impl._io import PathLike, atomic_write_text, ensure_output_folder

__all__ = ["ACL_JSON", "DUMP_FOLDER", "acl_dump_config", "write_acl_json"]

ACL_JSON = "acl.json"
DUMP_FOLDER = "dump"


def acl_dump_config(model: PathLike, dump_path: PathLike) -> Dict[str, dict]:
    """The ``acl.json`` content that dumps every input and output of every op of ``model``.

    ACL matches ``model_name`` against the name the .om was built with, which
    is its file name up to the first dot (``m2det_bs1.om`` -> ``m2det_bs1``).
    """
    name = Path(model).name.split(".")[0]
    return {"dump": {"dump_path": str(dump_path), "dump_mode": "all", "dump_list": [{"model_name": name}]}}


def write_acl_json(output: PathLike, model: PathLike) -> Path:
    """Write ``<output>/acl.json`` dumping into ``<output>/dump`` (created), as ais_bench does; returns its path."""
    folder = ensure_output_folder(output)
    dump = ensure_output_folder(folder / DUMP_FOLDER)
    text = json.dumps(acl_dump_config(model, dump), indent=4, separators=(", ", ": "), sort_keys=True)
    return atomic_write_text(folder / ACL_JSON, text)
