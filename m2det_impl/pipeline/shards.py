"""Shards: one evaluation spread over machines (m2det run --shard I/N), merged and checked (m2det merge).

Every shard file records which shard it is, which images it covered and which
it skipped; merging refuses overlapping, missing or foreign shards, naming the
file and the problem.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Set, Tuple

from m2det_impl._io import PathLike, is_int
from m2det_impl.errors import InputFileError, M2DetError, UsageError
from m2det_impl.pipeline.dataset import ImageRecord
from m2det_impl.pipeline.stream import RunOutcome

__all__ = [
    "parse_shard",
    "select_shard",
    "shard_results_name",
    "write_shard_file",
    "merge_shard_files",
]


def shard_results_name(index: int, count: int) -> str:
    return f"results.shard-{index}-of-{count}.json"


def write_shard_file(path: PathLike, index: int, count: int, outcome: RunOutcome,
                     identity: Dict[str, object], record: Optional[Dict[str, object]] = None) -> Path:
    """A shard's partial results, with what it covered, for ``m2det merge``; ``record``: what else the
    merged summary should say of the run (its batch and weights record)."""
    from m2det_impl._io import atomic_write_json

    return atomic_write_json(path, {
        "shard": {"index": index, "count": count},
        "identity": identity,
        **(record or {}),
        "image_ids": outcome.image_ids,
        "skipped": {str(k): v for k, v in outcome.skipped.items()},
        "results": outcome.results,
    })


def _shard_numbers(data) -> Tuple[int, int]:
    index, count = data["shard"]["index"], data["shard"]["count"]
    if not (is_int(index) and is_int(count)):
        raise TypeError
    return index, count


def _shard_problem(data: dict, index: int, count: int) -> Optional[str]:
    """What is wrong with a parsed shard file, or None."""
    if not (count >= 1 and 0 <= index < count):
        return f"shard {index}/{count} is not I/N with 0 <= I < N"
    ids = data.get("image_ids")
    if not isinstance(ids, list) or not all(is_int(i) for i in ids):
        return "'image_ids' is not a list of integers"
    if len(set(ids)) != len(ids):
        return "'image_ids' lists an image twice"
    results = data.get("results")
    if not isinstance(results, list) or not all(isinstance(r, dict) and is_int(r.get("image_id")) for r in results):
        return "'results' is not a list of results with integer image ids"
    stray = {r["image_id"] for r in results} - set(ids)
    if stray:
        return f"results for image(s) the shard does not cover, e.g. {sorted(stray)[0]}"
    skipped = data.get("skipped", {})
    if not isinstance(skipped, dict) or not all(isinstance(v, str) for v in skipped.values()):
        return "'skipped' is not a map of image id to reason"
    try:
        if {int(k) for k in skipped} - set(ids):
            return "'skipped' names images the shard does not cover"
    except ValueError:
        return "'skipped' has a key that is not an image id"
    return None


def merge_shard_files(paths: Sequence[PathLike], expected_ids: Optional[Iterable[int]] = None
                      ) -> Tuple[List[dict], List[int], Dict[int, str]]:
    """Combine shard files -> (results, image ids, skipped). Refuses shards of
    different runs, duplicated or missing shard indices, overlapping image ids,
    and (given ``expected_ids``) images no shard covered."""
    shards = []
    for path in paths:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            index, count = _shard_numbers(data)
        except FileNotFoundError:
            raise InputFileError(path, "shard file not found") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError, RecursionError):
            raise InputFileError(path, "not a shard results file written by m2det run --shard") from None
        problem = _shard_problem(data, index, count)
        if problem:
            raise InputFileError(path, f"damaged shard results file: {problem}")
        shards.append((path, index, count, data))
    if not shards:
        raise M2DetError("no shard files to merge")
    counts = {count for _, _, count, _ in shards}
    if len(counts) != 1:
        raise M2DetError("shards of different splits: " + ", ".join(f"{p.name} is ?/{c}" for p, _, c, _ in shards))
    count = counts.pop()
    identities = {json.dumps(d.get("identity"), sort_keys=True) for *_, d in shards}
    if len(identities) != 1:
        raise M2DetError("shards come from different runs (model, weights or settings differ)")
    seen: Dict[int, Path] = {}
    for path, index, _, _ in shards:
        if index in seen:
            raise M2DetError(f"shard {index}/{count} given twice: {seen[index]} and {path}")
        seen[index] = path
    missing = sorted(set(range(count)) - set(seen))
    if missing:
        raise M2DetError(f"missing shard(s) {', '.join(f'{i}/{count}' for i in missing)}: "
                         "run them or pass their files")
    owner: Dict[int, Path] = {}
    results: List[dict] = []
    skipped: Dict[int, str] = {}
    for path, _, _, data in sorted(shards, key=lambda s: s[1]):
        for image_id in data["image_ids"]:
            if image_id in owner:
                raise M2DetError(f"image {image_id} is in two shards: {owner[image_id]} and {path}")
            owner[image_id] = path
        results.extend(data["results"])
        skipped.update({int(k): v for k, v in data.get("skipped", {}).items()})
    if expected_ids is not None:
        expected = sorted(set(expected_ids))
        uncovered = sorted(set(expected) - set(owner))
        if uncovered:
            raise M2DetError(f"{len(uncovered)} image(s) covered by no shard, e.g. {uncovered[:5]}"
                             + _limit_hint(expected, set(owner)))
    ids = sorted(owner)
    results.sort(key=lambda r: r["image_id"])  # stable: keeps each image's own order
    return results, ids, skipped


def _limit_hint(expected: Sequence[int], covered: Set[int]) -> str:
    """Shards run with ``--limit K`` cover exactly the first K images of the set: say so, since a
    merge without the same ``--limit`` expects them all (the re-trial's merge gave no clue)."""
    if covered and covered == set(expected[: len(covered)]):
        return (f": the shards cover exactly the first {len(covered)} images, as a run with --limit "
                f"{len(covered)} does: give merge the same --limit {len(covered)}")
    return ""


def parse_shard(text: str) -> Tuple[int, int]:
    """``"I/N"`` -> (I, N) with 0 <= I < N."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not match:
        raise UsageError(f"shard must look like I/N (e.g. 0/4), got {text!r}")
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1 or not 0 <= index < count:
        raise UsageError(f"shard {text!r}: need 0 <= I < N")
    return index, count


def select_shard(records: Sequence[ImageRecord], index: int, count: int) -> List[ImageRecord]:
    """Every ``count``-th record starting at ``index`` (shards interleave, so each
    gets a fair mix of image sizes)."""
    return list(records[index::count])
