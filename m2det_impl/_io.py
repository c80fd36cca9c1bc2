"""Atomic file writes.

A COCO results file or a golden file that is half written (a killed process,
a full disk) must never be mistaken for a complete one, so every file the
project produces goes through :func:`atomic_write_bytes`: write a temporary
file in the destination's folder, flush and fsync it, then ``os.replace`` it
over the destination (atomic on POSIX and Windows within one file system).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Union

import numpy as np

from m2det_impl.errors import InputFileError, OutputFileError

__all__ = [
    "PathLike",
    "read_json",
    "read_json_object",
    "ensure_output_folder",
    "ensure_output_file",
    "is_int",
    "sha256_file",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "to_jsonable",
    "atomic_output",
    "atomic_link_or_copy",
]

PathLike = Union[str, "os.PathLike[str]"]


def _umask_mode() -> int:
    """The mode a plain ``open(path, 'w')`` would give (mkstemp uses 0600).

    Reads the umask from /proc where possible: setting it to read it back
    (the portable way) briefly changes it for every thread of the process.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path.

    Readers see either the old file or the complete new one, never a prefix.
    The parent folder must exist (creating it silently would hide typos).
    """
    target = Path(path)
    folder = target.parent
    if not folder.is_dir():
        raise InputFileError(target, f"cannot write: folder {folder} does not exist")
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise _write_error(target, exc) from exc
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, _umask_mode())
        os.replace(tmp_name, target)
    except BaseException as exc:
        try:
            os.unlink(tmp_name)
        except OSError:
            pass
        if isinstance(exc, OSError) and not isinstance(exc, OutputFileError):
            raise _write_error(target, exc) from exc
        raise
    _fsync_folder(folder)
    return target


@contextmanager
def atomic_output(path: PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` for a writer this project does not control
    (``onnx.save``, the quantizer, a copy): renamed over ``path`` when the block
    ends normally, removed when it raises, so ``path`` is never a partial file.
    The one place the temporary-then-rename dance is written for such writers."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_link_or_copy(source: PathLike, target: PathLike) -> bool:
    """Put ``source``'s bytes at ``target`` atomically (a reader never sees half a model): as a
    hard link where the file system allows one, so a 530 MB model handed out of the cache costs no
    second copy on disk, else as a copy; returns whether it linked. Whoever links must notice a
    later write through the link: the model cache records each file's size and modification time."""
    with atomic_output(target) as tmp:
        try:
            os.link(source, tmp)
            linked = True
        except OSError:  # another file system, or one without hard links
            shutil.copyfile(source, tmp)
            linked = False
    return linked


def _write_error(target: Path, exc: OSError) -> OutputFileError:
    """A failed write as one line naming the file (the OS error alone names none)."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    return OutputFileError(target, f"cannot write ({reason}); the previous content, if any, is unchanged",
                           exc.errno)


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable where the platform allows it."""
    if os.name != "posix":
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: PathLike, text: str, encoding: str = "utf-8") -> Path:
    """:func:`atomic_write_bytes` for text."""
    return atomic_write_bytes(path, text.encode(encoding))


def to_jsonable(value: Any) -> Any:
    """``json.dump`` default hook: numpy scalars and arrays to Python values."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"object of type {type(value).__name__} is not JSON serializable")


def atomic_write_json(path: PathLike, obj: Any, *, indent: int | None = None) -> Path:
    """Serialise ``obj`` (numpy values allowed) and write it atomically.

    Floats are written with ``repr`` precision, so float64 values round-trip
    exactly.
    """
    text = json.dumps(obj, default=to_jsonable, indent=indent, allow_nan=False)
    return atomic_write_text(path, text)


def read_json(path: PathLike, what: str = "JSON file") -> Any:
    """Parse a JSON file; a missing, unreadable or malformed one is an
    :class:`InputFileError` naming the file and saying what it should have been."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(path, f"{what} not found")
    try:
        with open(path, "rb") as handle:
            return json.load(handle)
    except json.JSONDecodeError as exc:
        raise InputFileError(path, f"{what} is not valid JSON ({exc})") from None
    except RecursionError:
        raise InputFileError(path, f"{what} is nested too deeply") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputFileError(path, f"cannot read {what} ({exc})") from None


def read_json_object(path: PathLike, what: str = "JSON file") -> dict:
    """:func:`read_json` for files whose top level must be a JSON object."""
    data = read_json(path, what)
    if not isinstance(data, dict):
        raise InputFileError(path, f"{what} must be a JSON object")
    return data


def ensure_output_folder(folder: PathLike) -> Path:
    """Create ``folder`` (and its parents) and prove it writable, before any work.

    Every command calls this for each folder it will write into, so an
    unwritable output fails in the first second, not after an hour of work.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise OutputFileError(folder, f"output folder is not writable ({exc.strerror or exc})", exc.errno) from None
    return folder


def ensure_output_file(path: PathLike) -> Path:
    """:func:`ensure_output_folder` for the folder of a file about to be written."""
    path = Path(path)
    if path.is_dir():
        raise OutputFileError(path, "is a folder, not a file to write")
    ensure_output_folder(path.parent)
    return path


def is_int(value: Any) -> bool:
    """A JSON integer: an ``int`` that is not a ``bool``."""
    return isinstance(value, int) and not isinstance(value, bool)


_SHA256_MEMO: dict = {}


def sha256_file(path: PathLike, chunk: int = 1 << 20) -> str:
    """The SHA-256 of a file's content, read in ``chunk``-byte pieces (a 530 MB
    checkpoint never lies in memory whole). Hashed once per process for each
    (path, size, modification time): a job that records the same file twice
    reads it once."""
    p = Path(path).resolve()
    try:
        info = p.stat()
        key = (str(p), info.st_size, info.st_mtime_ns)
        if key in _SHA256_MEMO:
            return _SHA256_MEMO[key]
        digest = hashlib.sha256()
        with open(p, "rb") as handle:
            for block in iter(lambda: handle.read(chunk), b""):
                digest.update(block)
    except OSError as exc:
        raise InputFileError(p, f"cannot read to hash it ({exc.strerror or exc})") from None
    _SHA256_MEMO[key] = digest.hexdigest()
    return _SHA256_MEMO[key]
