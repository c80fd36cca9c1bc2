"""The data the package ships (``m2det_impl/data``), found with ``importlib.resources``.

Tolerances, gates, the published figures, the atc op list, the regression
baselines, reference-shaped raw outputs for host timing and the bundled mini
COCO set travel inside the wheel, so ``pip install .`` works outside a
checkout. Test-only fixtures (the golden files, known failures) stay in the
repository's ``fixtures/``.
"""

from __future__ import annotations

import json
import site
import sysconfig
from importlib import resources
from pathlib import Path
from typing import Any, Optional

__all__ = ["data_path", "read_data_json", "BUNDLED", "MINI_COCO_ANNOTATIONS", "resolve_annotations", "resolve_baseline", "MINI_COCO", "TOLERANCES_FILE", "GATES_FILE",
           "ATC_OPS_FILE", "BASELINES_DIR", "POSTPROCESS_CASES_FILE", "DOCS_INSTALLED_AS", "docs_folder"]


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

MINI_COCO_ANNOTATIONS = MINI_COCO / "annotations" / "instances_minival2014.json"

#: The word ``--annotations`` takes for the bundled mini COCO set's annotation file.
BUNDLED = "bundled"


def resolve_annotations(value):
    """``bundled`` -> the bundled mini COCO annotation file (inside the installed package);
    any other value is a path, returned as given."""
    if value is not None and str(value) == BUNDLED:
        return MINI_COCO_ANNOTATIONS
    return value


def resolve_baseline(value):
    """A baseline given by path, or by its bare name (``cpu-x86_64-2core``) or a path that does not
    exist here but names a baseline the package ships (the README's ``m2det_impl/data/baselines/...``
    outside a checkout): the shipped file. Anything else is returned as given."""
    path = Path(value)
    if path.exists():
        return path
    name = path.name if path.suffix == ".json" else path.name + ".json"
    shipped = BASELINES_DIR / name
    if shipped.is_file() and (path.parent == Path(".") or path.parent.parts[-2:] == ("data", "baselines")):
        return shipped
    return path


#: Where a wheel installs the project's docs (``[tool.setuptools.data-files]``), under the
#: environment's prefix: the code cites them ("docs/reference.md, section 7"), so they travel too.
DOCS_INSTALLED_AS = ("share", "doc", "m2det-conformance")


def docs_folder() -> Optional[Path]:
    """The project's ``docs/``: the checkout's, beside the package (a clone, an editable install), else
    the copy a wheel installed under the environment's prefix, else under the user's base (``pip install
    --user``); ``None`` when none is there. Each candidate must hold ``reference.md``, so another
    project's ``docs/`` in site-packages is not taken."""
    candidates = [Path(__file__).resolve().parents[1] / "docs",
                  Path(sysconfig.get_paths()["data"]).joinpath(*DOCS_INSTALLED_AS),
                  Path(site.getuserbase()).joinpath(*DOCS_INSTALLED_AS)]
    return next((c for c in candidates if (c / "reference.md").is_file()), None)
