"""``m2det docs``: the project's documents, readable wherever the package is installed.

The code and its messages cite ``docs/reference.md, section 7`` and the like; a user with a plain
wheel has no checkout to open, so the wheel installs the documents
(:data:`m2det_impl.resources.DOCS_INSTALLED_AS`) and this lists or prints them.
"""

from __future__ import annotations

from typing import Optional

from m2det_impl.errors import M2DetError, UsageError
from m2det_impl.exit_codes import EXIT_OK
from m2det_impl.logs import RESULT, get_logger
from m2det_impl.resources import DOCS_INSTALLED_AS, docs_folder

__all__ = ["show_docs"]

logger = get_logger(__name__)


def show_docs(name: Optional[str] = None) -> int:
    """Without ``name``: one line per document (its name and title) and the folder holding them.
    With ``name`` (``reference`` or ``reference.md``): that document's text."""
    folder = docs_folder()
    if folder is None:
        raise M2DetError("the project's documents are not installed here (neither a checkout's docs/ nor "
                         f"<prefix>/{'/'.join(DOCS_INSTALLED_AS)}): reinstall the package from its wheel or checkout")
    documents = {p.stem: p for p in sorted(folder.glob("*.md"))}
    if name is None:
        for stem, path in documents.items():
            first = path.read_text(encoding="utf-8").splitlines()[:1]
            logger.log(RESULT, f"{stem:<22} {first[0].lstrip('# ') if first else ''}")
        logger.log(RESULT, f"{len(documents)} documents in {folder}: m2det docs NAME prints one")
        return EXIT_OK
    stem = name[:-3] if name.endswith(".md") else name
    if stem not in documents:
        raise UsageError(f"no document {name!r}: one of {', '.join(documents)}")
    logger.log(RESULT, documents[stem].read_text(encoding="utf-8").rstrip("\n"))
    return EXIT_OK
