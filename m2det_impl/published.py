"""The published figures a deployment is held to (reference sections 1 and 10).

Data, not code: ``data/published.json`` holds the AP, the guide's throughput
table and the model zoo's current one, each with its source. Throughput gates
choose a table by name (``--published``) and record the choice beside every
figure they judge.
"""

from __future__ import annotations

from typing import Dict, Mapping, Tuple

from m2det_impl.errors import M2DetError
from m2det_impl.resources import read_data_json

__all__ = ["PUBLISHED_AP", "PUBLISHED_THROUGHPUT", "PUBLISHED_SOURCES", "DEFAULT_PUBLISHED", "GUIDE_BATCH_SIZES",
           "HOST_SCRIPTS_IMAGES_PER_SECOND", "published_names", "throughput_table"]

_DATA = read_data_json("published.json")

#: COCO AP@[.50:.95] of M2Det512 (VGG16) on minival2014, every batch size.
PUBLISHED_AP: float = float(_DATA["ap"]["value"])

#: What the guide's own host scripts sustain (pre- and post-processing), images/s.
HOST_SCRIPTS_IMAGES_PER_SECOND: float = float(_DATA["host_scripts_images_per_second"]["value"])


def _tables(entry: Mapping) -> Dict[str, Dict[int, float]]:
    return {platform: {int(b): float(v) for b, v in rows.items()} for platform, rows in entry["tables"].items()}


#: name -> platform -> batch -> images/s, for every published table.
_ALL: Dict[str, Dict[str, Dict[int, float]]] = {name: _tables(e) for name, e in _DATA["throughput"].items()}
#: name -> where the table comes from.
PUBLISHED_SOURCES: Dict[str, str] = {name: e["source"] for name, e in _DATA["throughput"].items()}
DEFAULT_PUBLISHED: str = next(name for name, e in _DATA["throughput"].items() if e.get("default"))
#: The default table (the guide's), platform -> batch -> images/s.
PUBLISHED_THROUGHPUT: Dict[str, Dict[int, float]] = _ALL[DEFAULT_PUBLISHED]
#: The batch sizes the guide builds one .om for.
GUIDE_BATCH_SIZES: Tuple[int, ...] = tuple(sorted(PUBLISHED_THROUGHPUT["310P3"]))


def published_names() -> Tuple[str, ...]:
    """The names ``--published`` takes."""
    return tuple(_ALL)


def throughput_table(name: str = DEFAULT_PUBLISHED, platform: str = "310P3") -> Dict[int, float]:
    """batch -> images/s of one published table; an error names the choices."""
    if name not in _ALL:
        raise M2DetError(f"unknown published table {name!r}; choose one of {', '.join(_ALL)}")
    if platform not in _ALL[name]:
        raise M2DetError(f"published table {name!r} has no {platform} figures (it has {', '.join(_ALL[name])})")
    return dict(_ALL[name][platform])
