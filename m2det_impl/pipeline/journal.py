"""The partial-results journal: every finished image is appended, so a killed run resumes.

JSON lines, flushed and fsynced per batch. A run killed at any point resumes
from the journal: a half-written last line is dropped and that image done
again, so no image is lost or counted twice (tests/pipeline/test_kill_resume.py
kills runs with SIGKILL to hold this). An append that fails (a full disk) is
cut back and reported naming the journal; a second process on the same journal
is refused (an flock), since two writers would interleave lines.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

from m2det_impl._io import PathLike
from m2det_impl.errors import InputFileError, M2DetError, OutputFileError

__all__ = [
    "PartialStore",
    "encode_entries",
    "append_to_journal",
]



# --------------------------------------------------------------- journal
class PartialStore:
    """Append-only journal of per-image results for resuming a run.

    The first line is a header with the run's identity (model, weights, size,
    thresholds); a journal written by a different run is refused rather than
    mixed in. Each further line is ``{"image_id": .., "results": [...]}``.
    """

    def __init__(self, path: PathLike, identity: Dict[str, object], fresh: bool = False, lock: bool = False):
        self.path = Path(path)
        self.identity = dict(identity)
        self.done: Dict[int, list] = {}
        self.skipped: Dict[int, str] = {}
        self._lock_handle = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputFileError(self.path.parent, f"cannot create the output folder ({exc.strerror or exc})",
                                  exc.errno) from None
        if lock:
            self._lock()
        try:
            if fresh and self.path.exists():
                self.path.unlink()
            if self.path.exists():
                self._load()
            else:
                self._write_header()
        except BaseException:
            self.close()
            raise

    def _lock(self) -> None:
        """Refuse a second process on the same journal: two writers would
        interleave lines and do every image twice."""
        lock_path = self.path.with_name(self.path.name + ".lock")
        try:
            handle = open(lock_path, "a+")
        except OSError as exc:
            raise OutputFileError(lock_path, f"cannot create the journal's lock file ({exc.strerror or exc})",
                                  exc.errno) from None
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: no lock
            self._lock_handle = handle
            return
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                self._lock_handle = handle  # a file system without locks: go on unguarded
                return
            handle.close()
            raise M2DetError(f"{self.path}: another m2det run is writing this journal right now (same output "
                             "folder and shard); wait for it, or give this run another --output or --shard") from None
        self._lock_handle = handle

    def close(self) -> None:
        """Release the journal's lock (the lines are already on disk)."""
        handle, self._lock_handle = self._lock_handle, None
        if handle is not None:
            try:  # the lock file held nothing but the lock: no 0-byte file stays behind
                os.unlink(handle.name)
            except OSError:
                pass
            handle.close()

    def __enter__(self) -> "PartialStore":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _write_header(self) -> None:
        from m2det_impl._io import atomic_write_text

        atomic_write_text(self.path, json.dumps({"header": self.identity}, sort_keys=True) + "\n")

    def _load(self) -> None:
        if not self.path.is_file():
            raise InputFileError(self.path, "expected the partial-results journal, found a folder or a device")
        try:
            raw = self.path.read_bytes()
        except OSError as exc:
            raise InputFileError(self.path, f"cannot read the partial-results journal ({exc.strerror or exc})") from None
        end = raw.rfind(b"\n") + 1
        if end < len(raw):  # a line cut by a kill: drop it, that image is redone
            try:
                with open(self.path, "r+b") as handle:
                    handle.truncate(end)
                    handle.flush()
                    os.fsync(handle.fileno())
            except OSError as exc:
                raise OutputFileError(self.path, f"cannot drop the journal's cut last line ({exc.strerror or exc})",
                                      exc.errno) from None
        try:
            lines = raw[:end].decode("utf-8").split("\n")[:-1] if end else []
        except UnicodeDecodeError as exc:
            raise InputFileError(self.path, f"not a partial-results journal (not UTF-8 at byte {exc.start}); "
                                            "use --fresh to start over") from None
        if not lines:
            self._write_header()
            return
        try:
            header = json.loads(lines[0])["header"]
            if not isinstance(header, dict):
                raise TypeError
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, RecursionError):
            raise InputFileError(self.path, "not a partial-results journal (bad header); remove it or use --fresh") from None
        now = json.loads(json.dumps(self.identity, sort_keys=True))  # tuples as the JSON lists they were
        if header != now and len(lines) == 1:
            # a run that failed before its first image (a bad checkpoint, say):
            # nothing to lose, so the corrected re-run starts afresh
            self._write_header()
            return
        if header != now:
            changed = sorted(k for k in set(header) | set(now) if header.get(k) != now.get(k))
            raise InputFileError(
                self.path,
                "partial results from a different run (" + ", ".join(
                    f"{k}: {header.get(k)!r} then, {self.identity.get(k)!r} now" for k in changed)
                + "); use --fresh to start over or another --output folder",
            )
        for lineno, line in enumerate(lines[1:], 2):
            try:
                entry = json.loads(line)
                image_id = entry["image_id"]
                if isinstance(image_id, bool) or not isinstance(image_id, int):
                    raise TypeError
                if "skipped" in entry:
                    reason = entry["skipped"]
                    if not isinstance(reason, str):
                        raise TypeError
                    self.skipped[image_id] = reason
                    self.done.pop(image_id, None)
                else:
                    results = entry["results"]
                    if not isinstance(results, list) or not all(isinstance(r, dict) for r in results):
                        raise TypeError
                    self.done[image_id] = results
                    self.skipped.pop(image_id, None)
            except (json.JSONDecodeError, KeyError, TypeError, ValueError, RecursionError):
                raise InputFileError(self.path, f"line {lineno} is damaged; use --fresh to start over") from None

    def add(self, entries: Sequence[Tuple[int, Optional[list], Optional[str]]]) -> None:
        """Record finished images: (image_id, results, None) or (image_id, None, reason)."""
        data = encode_entries(entries)
        if not data:
            return
        try:
            append_to_journal(self.path, data)
        except OSError as exc:
            raise self.append_failed(exc) from None
        for image_id, results, skipped in entries:  # recorded only once on disk
            if skipped is not None:
                self.skipped[image_id] = skipped
            else:
                self.done[image_id] = results

    def append_failed(self, exc: OSError) -> OutputFileError:
        """The error for an append that failed (a full disk), naming the journal."""
        return OutputFileError(
            self.path, f"cannot append to the partial-results journal ({exc.strerror or exc}); the "
            f"{len(self.finished())} image(s) finished before are kept: fix this and run the same command "
            "again to resume", exc.errno)

    def finished(self) -> set:
        return set(self.done) | set(self.skipped)


def encode_entries(entries: Sequence[Tuple[int, Optional[list], Optional[str]]]) -> bytes:
    """The journal lines of finished images (see :meth:`PartialStore.add`), UTF-8."""
    lines = []
    for image_id, results, skipped in entries:
        if skipped is not None:
            lines.append(json.dumps({"image_id": image_id, "skipped": skipped}))
        else:
            lines.append(json.dumps({"image_id": image_id, "results": results}))
    return ("\n".join(lines) + "\n").encode("utf-8") if lines else b""


def append_to_journal(path: PathLike, data: bytes) -> None:
    """Append ``data`` and fsync; on failure (a full disk) cut the file back to
    where it was, so no half line is left behind where the disk allows it (a
    half line left anyway, by a kill, is dropped on resume). Appends from
    several processes of one run (host worker processes) take turns: an
    ``flock`` on the journal for the append."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        try:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX)
        except (ImportError, OSError):  # pragma: no cover - no locks here: one appender anyway
            pass
        start = os.fstat(fd).st_size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except OSError:
            try:
                os.ftruncate(fd, start)
                os.fsync(fd)
            except OSError:
                pass
            raise
    finally:
        os.close(fd)


# -------------------------------------------------------------- streaming
