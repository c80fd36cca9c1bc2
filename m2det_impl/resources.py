"""The data the package ships (``m2det_impl/data``), found with ``importlib.resources``.

Tolerances, gates, the published figures, the atc op list, the regression
baselines, reference-shaped raw outputs for host timing and the bundled mini
COCO set travel inside the wheel, so ``pip install .`` works outside a
checkout. Test-only fixtures (the golden files, known failures) stay in the
repository's ``fixtures/``.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

__all__ = ["data_path", "read_data_json", "MINI_COCO", "TOLERANCES_FILE", "GATES_FILE",
           "ATC_OPS_FILE", "BASELINES_DIR", "POSTPROCESS_CASES_FILE"]


def data_path(*parts: str) -> Path:
    """A file or folder under the package's ``data/``.

    The package is installed as plain files (setuptools, no zip), so the
    resource is a real path that lasts as long as the installation.
    """
    return Path(str(resources.files("m2det_impl").joinpath("data", *parts)))


def read_data_json(*parts: str) -> Any:
    """A JSON file of the package's data, parsed."""
    return json.loads(data_path(*parts).read_text(encoding="utf-8"))


MINI_COCO = data_path("mini_coco")
TOLERANCES_FILE = data_path("tolerances.json")
GATES_FILE = data_path("gates.json")
ATC_OPS_FILE = data_path("atc_opset11_ops.json")
BASELINES_DIR = data_path("baselines")
POSTPROCESS_CASES_FILE = data_path("postprocess_cases.npz")
