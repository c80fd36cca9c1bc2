"""``m2det cache``: what the model cache holds (entries, sizes, last use), and cleaning it."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Optional

from m2det_impl.backends.cache import cache_dir, cache_entries, remove_entry
from m2det_impl.errors import UsageError
from m2det_impl.exit_codes import EXIT_OK
from m2det_impl.logs import RESULT, get_logger

__all__ = ["cache"]

logger = get_logger(__name__)


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def cache(clean: bool = False, older_than_days: Optional[float] = None) -> int:
    """List the model cache (``$M2DET_CACHE_DIR``, else ``~/.cache/m2det-conformance``): one line per
    entry with its kind, size, last use and files. With ``clean``, remove the entries (only those
    unused for ``older_than_days`` when given); an entry a running job holds is kept and named."""
    if older_than_days is not None and not clean:
        raise UsageError("--older-than needs --clean")
    if older_than_days is not None and older_than_days < 0:
        raise UsageError(f"--older-than must be >= 0 days, got {older_than_days}")
    root = cache_dir()
    entries = cache_entries(root)
    now = time.time()
    if not clean:
        for e in entries:
            used = datetime.fromtimestamp(e.last_used).strftime("%Y-%m-%d %H:%M")
            logger.log(RESULT, f"{e.kind:<5} {_mb(e.bytes):>10}  last used {used} "
                               f"({(now - e.last_used) / 86400:.1f} days ago)  {e.folder}  {', '.join(e.files)}")
        logger.log(RESULT, f"{len(entries)} entries, {_mb(sum(e.bytes for e in entries))} in {root}")
        return EXIT_OK
    chosen = [e for e in entries if older_than_days is None or now - e.last_used >= older_than_days * 86400]
    removed, freed = 0, 0
    for e in chosen:
        if remove_entry(e):
            removed += 1
            freed += e.bytes
        else:
            logger.warning(f"{e.folder}: in use by a running job; kept")
    logger.log(RESULT, f"removed {removed} of {len(entries)} entries ({_mb(freed)}) from {root}")
    return EXIT_OK
