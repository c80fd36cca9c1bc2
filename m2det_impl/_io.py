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
from typing import Any, Dict, Iterator, List, Sequence, Tuple, Union

import numpy as np

from m2det_impl.errors import InputFileError, M2DetError, OutputFileError

__all__ = [
    "PathLike",
    "read_json",
    "read_json_object",
    "reading_fields",
    "read_npz",
    "ensure_output_folder",
    "ensure_output_file",
    "output_folder",
    "output_files",
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


@contextmanager
def reading_fields(path: PathLike, what: str, expected: str = "") -> Iterator[None]:
    """The block reads the fields of a JSON record (``data["inference"][0]["batch_size"]``...) as its
    consumer uses them; a field missing or of the wrong type there (a KeyError, TypeError,
    ValueError, AttributeError or IndexError) means the file is not that record, said in one line
    naming the file, what it should be and what it lacks, instead of an internal error or a bare
    ``KeyError: 'x'``. The project's own errors raised inside pass through unchanged."""
    try:
        yield
    except M2DetError:
        raise
    except KeyError as exc:
        raise InputFileError(path, f"not {what}: lacks {exc.args[0]!r}" + (f"; expected {expected}" if expected
                                                                           else "")) from None
    except (TypeError, ValueError, AttributeError, IndexError) as exc:
        detail = " ".join(str(exc).split()) or type(exc).__name__
        raise InputFileError(path, f"not {what}: a field holds a value of the wrong type or shape ({detail})"
                             + (f"; expected {expected}" if expected else "")) from None


def read_npz(path: PathLike, what: str, keys: Sequence[str] = ()) -> Dict[str, np.ndarray]:
    """Every array of an ``.npz`` (no pickles); a missing, empty, truncated or foreign file, or one
    without ``keys``, is an :class:`InputFileError` naming it, never numpy's EOFError or zipfile's
    BadZipFile from deep inside ``np.load``."""
    import zipfile

    path = Path(path)
    if not path.is_file():
        raise InputFileError(path, f"{what} not found" if not path.exists() else f"{what} is a folder, not a file")
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise InputFileError(path, f"{what} is a single .npy array, not an .npz archive")
        with loaded as data:
            missing = [k for k in keys if k not in data.files]
            if missing:
                raise InputFileError(path, f"{what} lacks {missing} (has {data.files})")
            return {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        if isinstance(exc, M2DetError):
            raise
        reason = "the file is empty" if isinstance(exc, EOFError) else " ".join(str(exc).split())
        raise InputFileError(path, f"{what} is not a readable .npz ({reason})") from None


def _missing_folders(folder: Path) -> List[Path]:
    """``folder`` and those of its parents that do not exist yet, deepest first."""
    return [p for p in (folder, *folder.parents) if not p.exists()]


@contextmanager
def _removed_when_failing_empty(folders: Sequence[Path]) -> Iterator[None]:
    """When the block raises, ``folders`` (the ones a job created) go again if they are empty, deepest
    first: a command that fails on bad input leaves no new empty folder behind, and never removes one
    that holds anything, or one that was there before."""
    try:
        yield
    except BaseException:
        for folder in sorted(set(folders), key=lambda p: len(p.parts), reverse=True):
            try:
                folder.rmdir()  # only when empty
            except OSError:
                pass
        raise


@contextmanager
def output_folder(folder: PathLike) -> Iterator[Path]:
    """:func:`ensure_output_folder` for the length of a job: checked writable before any work, and
    removed again (with the parents it needed) when the job raises and left it empty."""
    folder = Path(folder)
    with _removed_when_failing_empty(_missing_folders(folder)):
        yield ensure_output_folder(folder)


@contextmanager
def output_files(*paths: PathLike) -> Iterator[Tuple[Path, ...]]:
    """:func:`ensure_output_file` for each of ``paths`` for the length of a job, with
    :func:`output_folder`'s promise for the folders it had to create."""
    made = [p for path in paths for p in _missing_folders(Path(path).parent)]
    with _removed_when_failing_empty(made):
        yield tuple(ensure_output_file(p) for p in paths)


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


def is_number(value: Any) -> bool:
    """A JSON number: an ``int`` or ``float`` that is not a ``bool``."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


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
