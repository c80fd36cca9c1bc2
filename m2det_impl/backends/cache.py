"""The one model cache: ONNX exports and int8 models, keyed, locked, described and pruned.

Exporting M2Det512 takes about 15 s and writes about 530 MB, and quantizing
it takes minutes, so both are cached under a key of everything that decides
the file's bytes (for an export: the config, the weights' identity, batch
mode, opset, torch and onnx versions and the source of the model and the
exporter) and shared by the CLI and the test suite. Each entry is a folder
holding the model and ``entry.json`` (what it was made of, how long it took).
A file lock lets parallel processes (pytest-xdist workers, shards) wait for
one builder instead of all building; entries unused for 14 days are pruned.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple

from m2det_impl._io import PathLike, atomic_write_json
from m2det_impl.logs import get_logger
from m2det_impl.network.config import M2DetConfig
from m2det_impl.network.weights_identity import weights_tag

__all__ = [
    "cache_dir",
    "CacheEntry",
    "cache_entries",
    "export_weights_tag",
    "remove_entry",
    "file_lock",
    "CachedFile",
    "cached_file",
    "export_key",
    "cached_export",
    "cached_onnx",
]

logger = get_logger(__name__)

PRUNE_AFTER_S = 14 * 24 * 3600  # cache entries unused this long are removed
ENTRY_FILE = "entry.json"  # an entry's description; its presence marks the entry complete
_NETWORK_DIR = Path(__file__).resolve().parents[1] / "network"


def cache_dir() -> Path:
    """``$M2DET_CACHE_DIR``, else ``$XDG_CACHE_HOME/m2det-conformance``, else ``~/.cache/...``."""
    env = os.environ.get("M2DET_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "m2det-conformance"


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` for the duration of the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: no lock, exports still atomic
            yield
            return
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


@dataclass(frozen=True)
class CachedFile:
    """A cached model: its file, how long building it took when it was made,
    its size, whether this call reused it, and the entry's description."""

    path: Path
    seconds: float
    bytes: int
    reused: bool
    info: Mapping[str, Any] = field(default_factory=dict)


#: The record of an ONNX export (kept under its historical name).
ExportRecord = CachedFile


def key_of(parts: Mapping[str, Any]) -> str:
    """The cache key of what an entry is made of."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def cached_file(kind: str, parts: Mapping[str, Any], filename: str, build: Callable[[Path], Mapping[str, Any]]) -> CachedFile:
    """The file ``filename`` of the cache entry for ``parts`` under ``kind``
    (``onnx``, ``int8``), built by ``build(path)`` at most once across processes.

    ``build`` writes the file and returns extra facts to record. The entry is
    described (``entry.json``) only after the file is complete, so a build that
    dies half way is redone, never reused. A build that fails (a checkpoint
    rejected, an exporter error) leaves no folder behind: the user's cache holds
    finished entries only. An entry whose file changed on disk since it was
    described (its size or modification time differ: someone wrote to a file
    linked from it) is rebuilt, never reused.
    """
    root = cache_dir() / kind
    folder = root / key_of(parts)
    path = folder / filename
    meta = folder / ENTRY_FILE
    with file_lock(folder / ".lock"):
        if meta.is_file() and path.is_file():
            info = json.loads(meta.read_text())
            if _unchanged(path, info):
                os.utime(meta)  # last use, for pruning
                return CachedFile(path, float(info["seconds"]), path.stat().st_size, True, info)
            logger.warning(f"{path}: changed on disk since it was cached; building it again")
            meta.unlink()
            path.unlink()  # the build writes a new file: the changed one stays with whoever holds a link to it
        start = time.perf_counter()
        try:
            extra = dict(build(path) or {})
        except BaseException:
            _remove_unfinished(folder, filename)
            raise
        seconds = time.perf_counter() - start
        stat = path.stat()
        info = {**parts, **extra, "seconds": seconds, "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        atomic_write_json(meta, info, indent=1)
    prune(root, folder)
    return CachedFile(path, seconds, path.stat().st_size, False, info)


def _unchanged(path: Path, info: Mapping[str, Any]) -> bool:
    """Whether ``path`` still has the size and modification time its entry recorded (entries
    written before the time was recorded are checked by size alone)."""
    stat = path.stat()
    if stat.st_size != info.get("bytes", stat.st_size):
        return False
    return "mtime_ns" not in info or int(info["mtime_ns"]) == stat.st_mtime_ns


def _remove_unfinished(folder: Path, filename: str) -> None:
    """After a failed build: the half-written file, then the folder if only its lock is left
    (a process waiting on that lock builds again into a folder it re-creates)."""
    with contextlib.suppress(OSError):
        (folder / filename).unlink()
    with contextlib.suppress(OSError):
        if [p.name for p in folder.iterdir()] == [".lock"]:
            (folder / ".lock").unlink()
            folder.rmdir()


def _source_digest() -> str:
    """The code that decides the graph's bytes: a change re-exports."""
    h = hashlib.sha256()
    for name in ("model.py", "export.py", "config.py"):
        h.update((_NETWORK_DIR / name).read_bytes())
    return h.hexdigest()[:16]


def export_key(cfg: M2DetConfig, weights: str, batch: Optional[int], opset: int) -> Tuple[str, Dict[str, str]]:
    """(cache key, what it was made of) for one export. The exporter's versions come from the
    installed distributions' metadata (the same strings as ``torch.__version__``), so finding a
    cached model does not import PyTorch: two seconds of every warm ``m2det run``."""
    parts = {
        "config": repr(cfg),
        "weights": weights,
        "batch": "dynamic" if batch is None else str(batch),
        "opset": str(opset),
        "torch": _distribution_version("torch"),
        "onnx": _distribution_version("onnx"),
        "sources": _source_digest(),
    }
    return key_of(parts), parts


def _distribution_version(name: str) -> str:
    """The installed version of distribution ``name`` (``importlib.metadata``), without importing it."""
    from importlib.metadata import version

    return version(name)


def prune(root: Path, keep: Path) -> None:
    """Remove cache entries unused for PRUNE_AFTER_S, skipping any in use."""
    now = time.time()
    for entry in root.glob(f"*/{ENTRY_FILE}"):
        folder = entry.parent
        if folder == keep or now - entry.stat().st_mtime < PRUNE_AFTER_S:
            continue
        try:
            import fcntl
        except ImportError:  # pragma: no cover
            return
        with open(folder / ".lock", "a+") as handle:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue
            shutil.rmtree(folder, ignore_errors=True)


def cached_export(cfg: M2DetConfig, weights: Optional[PathLike] = None, batch: Optional[int] = None,
                  opset: int = 11, salt: int = 0, model_factory: Optional[Callable[[], object]] = None) -> CachedFile:
    """The ONNX export for these settings, made at most once across processes.

    ``model_factory`` supplies the model when an export is needed (default:
    :func:`load_model`), so a caller holding the model already can lend it.
    """
    _, parts = export_key(cfg, weights_tag(weights, salt), batch, opset)

    def build(path: Path) -> Dict[str, Any]:
        # imported only to export: a cached model is found without PyTorch
        from m2det_impl.network.export import export_onnx
        from m2det_impl.network.model import load_model

        model = model_factory() if model_factory is not None else load_model(cfg, weights, salt)
        # announced once the weights loaded: a rejected checkpoint says only what is wrong with it
        logger.info(f"exporting ONNX once into {path.parent} (about 15 s and 530 MB; cached for later runs)")
        export_onnx(model, path, cfg, batch=batch, opset=opset)
        return {}

    record = cached_file("onnx", parts, f"m2det{cfg.size}_{parts['batch']}.onnx", build)
    if not record.reused:
        logger.info(f"exported in {record.seconds:.1f} s: {record.path}")
    return record


def cached_onnx(cfg: M2DetConfig, weights: Optional[PathLike] = None, batch: Optional[int] = None,
                opset: int = 11, salt: int = 0) -> Path:
    """Path of the cached ONNX export for these settings (see :func:`cached_export`)."""
    return cached_export(cfg, weights, batch, opset, salt).path




@dataclass(frozen=True)
class CacheEntry:
    """One cached model: its kind (``onnx``, ``int8``), folder, size on disk and last use."""

    kind: str
    folder: Path
    bytes: int
    last_used: float  # seconds since the epoch
    files: Tuple[str, ...]


def cache_entries(root: Optional[Path] = None) -> List[CacheEntry]:
    """Every complete entry of the cache (those with an ``entry.json``), oldest use first."""
    root = cache_dir() if root is None else Path(root)
    found = []
    for meta in root.glob(f"*/*/{ENTRY_FILE}"):
        folder = meta.parent
        try:
            files = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")]
            size = sum(p.stat().st_size for p in files)
            last = meta.stat().st_mtime
        except OSError:  # removed while listing
            continue
        found.append(CacheEntry(folder.parent.name, folder, size, last,
                                tuple(sorted(p.name for p in files if p.name != ENTRY_FILE))))
    return sorted(found, key=lambda e: e.last_used)


def remove_entry(entry: CacheEntry) -> bool:
    """Remove one entry unless a process holds its lock (a build or a run using it); True when removed."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no locks to respect
        shutil.rmtree(entry.folder, ignore_errors=True)
        return True
    with open(entry.folder / ".lock", "a+") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False
        shutil.rmtree(entry.folder, ignore_errors=True)
    return True


def export_weights_tag(path: PathLike) -> Optional[str]:
    """The weights tag (``golden0``, ``ckpt-...``) an ONNX file of this cache was exported from, or
    ``None`` when the file is not a cache entry."""
    path = Path(path).resolve()
    try:
        root = cache_dir().resolve()
        if root not in path.parents:
            path = _entry_linked_as(path, root)  # m2det export hands out a hard link to the entry
            if path is None:
                return None
        meta = path.parent / ENTRY_FILE
        if not meta.is_file():
            return None
        tag = json.loads(meta.read_text()).get("weights")
    except (OSError, ValueError, AttributeError):
        return None
    return tag if isinstance(tag, str) else None


def _entry_linked_as(path: Path, root: Path) -> Optional[Path]:
    """The cache entry that ``path`` is a hard link of (the same file, by device and inode), if any: what
    ``m2det export`` wrote into its output folder. Only sizes and inodes are read."""
    size = path.stat().st_size
    for entry in root.glob("*/*/*.onnx"):
        if entry.stat().st_size == size and os.path.samefile(entry, path):
            return entry
    return None
