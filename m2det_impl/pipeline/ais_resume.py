"""Resuming an interrupted ``m2det infer``: which output folder to continue, and which inputs it already holds.

ais_bench starts a new time-stamped folder on every run, so a job interrupted
after hours and run again wrote every input a second time into a second
folder, and ``m2det evaluate`` then refused outputs found in several folders.
Here a job writes a small record of itself (:data:`JOB_FILE`: the model's
identity and content hash, the inputs, the batch asked for, the format) into
its folder when it starts, and removes it once the summary is written; a
folder without a summary beside it is unfinished. Run again, the same job
finds the newest unfinished folder that records the same job and continues
there, skipping each input whose two output files are present and of the
right size: every output is written atomically (temporary file, then rename),
so an output present is an output complete, and the temporary file a kill
leaves is removed. A folder of another job is left as it is, and why is
logged in one line. A job holds a lock on its folder (``flock`` on the
folder itself) while it writes there, so two runs of one job never write one
folder at once.

The record is compared as a whole; the first part that differs is named
(:func:`job_difference`), so "another job" always says which part.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, FrozenSet, List, Optional, Sequence

from m2det_impl._io import PathLike, atomic_write_json, to_jsonable
from m2det_impl.errors import InputFileError, M2DetError, UsageError
from m2det_impl.logs import get_logger
from m2det_impl.network.config import M2DetConfig
from m2det_impl.pipeline.ais_files import ais_stem, scan_outputs

__all__ = ["JOB_FILE", "FolderPlan", "job_record", "job_difference", "plan_folder", "claim_folder",
           "finish_folder", "unfinished_folders", "new_stamped_folder", "STAMP_FORMAT"]

logger = get_logger(__name__)

#: The job's record inside its unfinished folder (hidden, and not an output name: readers never see it).
JOB_FILE = ".m2det_infer_job.json"
#: ais_bench's sub-folder name; a second folder in the same second gets ``-1``, ``-2``, ... (never the first's).
STAMP_FORMAT = "%Y_%m_%d-%H_%M_%S"
_STAMP = re.compile(r"^(\d{4}_\d{2}_\d{2}-\d{2}_\d{2}_\d{2})(?:-(\d+))?$")
_RECORD_VERSION = 1
# Files a kill leaves behind: atomic_write_bytes' ".<name>.<random>.tmp" and atomic_output's ".<name>.<pid>.tmp".
_TEMPORARY = re.compile(r"^\..+\.tmp$")


def _digest(values: Sequence[object]) -> str:
    return hashlib.sha256(json.dumps(list(values), default=to_jsonable).encode()).hexdigest()


def job_record(model: Dict[str, object], weights: Dict[str, object], cfg: M2DetConfig, inputs: Sequence[Path], *,
               batch_size: Optional[int], outfmt: str) -> Dict[str, object]:
    """What decides a job's output files, as JSON values: the model (``model``: the spec's identity;
    ``weights``: its weights record, which hashes a model file's content, so a file rebuilt at the same path
    is another model), the network (the whole config, since a ``--config`` file changes the network at the
    same size), the inputs (their paths in order, and each one's size and modification time, so inputs
    regenerated under the same names are other inputs), the batch asked for and the output format."""
    import dataclasses

    stats = []
    for path in inputs:
        info = path.stat()
        stats.append((info.st_size, info.st_mtime_ns))
    record = {
        "version": _RECORD_VERSION,
        "model": model,
        "weights": weights,
        "network": _digest([dataclasses.asdict(cfg)]),
        "inputs": {"count": len(inputs), "paths": _digest([str(p) for p in inputs]), "files": _digest(stats)},
        "batch_size": batch_size,
        "outfmt": outfmt.upper(),
    }
    return json.loads(json.dumps(record, default=to_jsonable))  # as it reads back from the file


_PARTS = {
    "version": "the job record's format",
    "model": "the model (runtime, model file, weights or settings)",
    "weights": "the model's weights or file content",
    "network": "the network (config)",
    "batch_size": "the batch size",
    "outfmt": "the output format (--outfmt)",
}


def job_difference(then: Dict[str, Any], now: Dict[str, Any]) -> Optional[str]:
    """Why the job that wrote a folder (``then``) is not this one (``now``), in words; None when it is."""
    for key in ("version", "weights", "model", "network"):
        if then.get(key) != now.get(key):
            return f"made by another job: {_PARTS[key]} differs"
    was, now_inputs = then.get("inputs") or {}, now["inputs"]
    if was.get("count") != now_inputs["count"] or was.get("paths") != now_inputs["paths"]:
        return (f"made by another job: another list of inputs ({was.get('count')} then, {now_inputs['count']} "
                "now, or other names)")
    if was.get("files") != now_inputs["files"]:
        return "made by another job: the inputs were modified since (sizes or modification times differ)"
    for key in ("batch_size", "outfmt"):
        if then.get(key) != now.get(key):
            return f"made by another job: {_PARTS[key]} differs ({then.get(key)} then, {now.get(key)} now)"
    if {k: v for k, v in then.items() if k != "run_batch"} != now:  # a part this version does not name
        return "made by another job: its record differs"
    return None


def _read_record(folder: Path) -> Optional[Dict[str, Any]]:
    """The job record in ``folder``, or None (none, or unreadable: a folder this job cannot vouch for)."""
    try:
        data = json.loads((folder / JOB_FILE).read_bytes())
    except (OSError, ValueError):
        return None
    return data.get("job") if isinstance(data, dict) and isinstance(data.get("job"), dict) else None


def finished(output: Path, name: str) -> bool:
    """A folder is finished once its summary is written beside it (several devices: ``throughput.json``
    inside it, their common summary)."""
    return (output / f"{name}_summary.json").exists() or (output / name / "throughput.json").exists()


def unfinished_folders(output: PathLike) -> List[Path]:
    """The time-stamped folders under ``output`` with no summary, newest first (their names sort as their
    times; a second folder of the same second has a ``-N`` suffix)."""
    output = Path(output)
    try:
        entries = list(output.iterdir())
    except OSError:  # no output folder yet: nothing to resume
        return []
    stamped = []
    for entry in entries:
        match = _STAMP.match(entry.name)
        if match and entry.is_dir() and not finished(output, entry.name):
            stamped.append(((match.group(1), int(match.group(2) or 0)), entry))
    return [entry for _, entry in sorted(stamped, key=lambda item: item[0], reverse=True)]


class _FolderLock:
    """An exclusive ``flock`` on an output folder, held while a job writes there."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.fd: Optional[int] = os.open(folder, os.O_RDONLY)
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: no lock
            return
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            self.release()
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise M2DetError(f"{folder}: another m2det infer is writing this folder right now (the same job); "
                                 "wait for it, or give another --output") from None
            # a file system without locks: go on unguarded

    def release(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None:
            os.close(fd)


@dataclass
class FolderPlan:
    """Where a job writes: ``name`` (None: a new time-stamped folder), the inputs already done there, and the
    lock held on a folder being resumed. ``note``: the one line to log about the choice, if any."""

    output: Path
    name: Optional[str]
    job: Dict[str, Any]
    done: FrozenSet[str] = frozenset()
    resumed: bool = False
    note: Optional[str] = None
    run_batch: Optional[int] = None  # the batch the interrupted run ran (from its record)
    start_over: bool = False  # a named folder written over: its old summary goes first
    lock: Optional[_FolderLock] = field(default=None, repr=False)

    @property
    def folder(self) -> Optional[Path]:
        return None if self.name is None else self.output / self.name

    def release(self) -> None:
        """Let the folder go (the job ended, or failed before writing)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None


def _done_inputs(folder: Path, inputs: Sequence[Path], cfg: M2DetConfig, outfmt: str) -> FrozenSet[str]:
    """The inputs whose ``<stem>_0`` (scores) and ``<stem>_1`` (loc) files in ``folder`` are present and of a
    whole output's size (:func:`scan_outputs`' checks). Inputs that share a stem overwrite each other's
    outputs, as in ais_bench; they are never counted done, so redoing them in order leaves the last one's
    outputs, as an uninterrupted run does."""
    ext = outfmt.lower()
    try:
        pairs, _ = scan_outputs(folder, cfg)
    except InputFileError:  # no output file yet
        return frozenset()
    whole = {p.stem for p in pairs
             if p.scores_path == folder / f"{p.stem}_0.{ext}" and p.loc_path == folder / f"{p.stem}_1.{ext}"}
    stems = [ais_stem(p) for p in inputs]
    shared = {s for s in stems if stems.count(s) > 1} if len(set(stems)) < len(stems) else set()
    return frozenset(str(p) for p, s in zip(inputs, stems) if s in whole and s not in shared)


def _has_outputs(folder: Path) -> bool:
    try:
        return any(p.suffix in (".bin", ".npy", ".txt") for p in folder.iterdir())
    except OSError:
        return False


def _resume(output: Path, folder: Path, job: Dict[str, Any], record: Dict[str, Any], inputs: Sequence[Path],
            cfg: M2DetConfig) -> FolderPlan:
    lock = _FolderLock(folder)
    try:
        done = _done_inputs(folder, inputs, cfg, job["outfmt"])
    except BaseException:
        lock.release()
        raise
    batch = record.get("run_batch")
    return FolderPlan(output, folder.name, job, done=done, resumed=True, lock=lock,
                      run_batch=batch if isinstance(batch, int) else None)


def plan_folder(output: PathLike, job: Dict[str, Any], inputs: Sequence[Path], cfg: M2DetConfig, *,
                output_dirname: Optional[str] = None, fresh: bool = False) -> FolderPlan:
    """Choose the folder a job writes, writing nothing (a job that fails before its first output leaves no
    folder): the unfinished folder of the same job, named (``output_dirname``) or else the newest
    time-stamped one, with the inputs it already holds; else a new folder. ``fresh``: never resume.

    A named folder is the user's choice, so it is never swapped for another: a finished one is written
    again (as ais_bench does), an unfinished one of another job, or with outputs and no record of the job
    that wrote them, is refused (:class:`UsageError`) rather than mixed with this job's outputs."""
    output = Path(output)
    if output_dirname is not None:
        folder = output / output_dirname
        if not folder.exists():
            return FolderPlan(output, output_dirname, job)
        if finished(output, output_dirname) or fresh:
            note = (f"{folder}: finished before; writing it again (--output-dirname names the folder, as in "
                    "ais_bench)") if not fresh else f"{folder}: --fresh: writing it again from the start"
            return FolderPlan(output, output_dirname, job, note=note, start_over=True)
        record = _read_record(folder)
        if record is None:
            if not _has_outputs(folder):
                return FolderPlan(output, output_dirname, job)
            raise UsageError(f"--output-dirname {output_dirname}: {folder} holds outputs but no summary and no "
                             "record of the job that wrote them (ais_bench, or an older m2det infer), so they "
                             "cannot be resumed: give another --output-dirname, or --fresh to write over it")
        why = job_difference(record, job)
        if why is not None:
            raise UsageError(f"--output-dirname {output_dirname}: {folder} is unfinished and {why}: give another "
                             "--output-dirname, or --fresh to write over it")
        return _resume(output, folder, job, record, inputs, cfg)
    if fresh:
        return FolderPlan(output, None, job)
    candidates = unfinished_folders(output)
    first_reason = None
    for folder in candidates:
        record = _read_record(folder)
        why = ("it holds no record of the job that wrote it (ais_bench, or an older m2det infer)" if record is None
               else job_difference(record, job))
        if why is None:
            return _resume(output, folder, job, record, inputs, cfg)
        first_reason = first_reason or why
    note = (f"not resuming {candidates[0]} (unfinished: no summary): {first_reason}; starting a new folder"
            if candidates else None)
    return FolderPlan(output, None, job, note=note)


def new_stamped_folder(output: Path) -> Path:
    """A new time-stamped folder, made here; never an existing one (two jobs in one second: ``-1``, ...)."""
    stamp = time.strftime(STAMP_FORMAT)
    for n in range(1000):
        folder = output / (stamp if n == 0 else f"{stamp}-{n}")
        if (output / f"{folder.name}_summary.json").exists():
            continue
        try:
            folder.mkdir()
        except FileExistsError:
            continue
        return folder
    raise M2DetError(f"{output}: 1000 output folders time-stamped {stamp} already")


def claim_folder(plan: FolderPlan, run_batch: Optional[int]) -> Path:
    """Make (or take) the plan's folder and start the job there: the lock, the job record (with the batch
    the job runs, for a resume that finds nothing left to run), and, resuming, the temporary files a kill
    left removed. Called once the model is ready, just before the first output."""
    output = plan.output
    if plan.name is None:
        folder = new_stamped_folder(output)
        plan.name = folder.name
    else:
        folder = output / plan.name
        folder.mkdir(parents=True, exist_ok=True)
    if plan.lock is None:
        plan.lock = _FolderLock(folder)
    if plan.start_over:  # unfinished from here on: an interruption now must not leave the old summary standing
        for stale in (output / f"{plan.name}_summary.json", output / f"{plan.name}_m2det.json"):
            stale.unlink(missing_ok=True)
    removed = 0
    for entry in list(folder.iterdir()):
        if _TEMPORARY.match(entry.name) and entry.is_file():
            entry.unlink(missing_ok=True)
            removed += 1
    if removed:
        logger.info(f"{folder}: removed {removed} half-written temporary file(s) an interruption left")
    if not (plan.resumed and (folder / JOB_FILE).exists()):
        atomic_write_json(folder / JOB_FILE, {"job": {**plan.job, "run_batch": run_batch}}, indent=1)
    return folder


def finish_folder(plan: FolderPlan) -> None:
    """The summary is written: the folder is finished, so its job record goes (the folder is then exactly
    ais_bench's) and the lock is released."""
    if plan.folder is not None:
        (plan.folder / JOB_FILE).unlink(missing_ok=True)
    plan.release()
