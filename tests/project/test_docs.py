"""Every section the code cites resolves in the repository's own docs, and the docs reach a wheel's user.

The code, its messages, the README and the tests cite "reference section 7", "docs/reference.md 8",
"docs/ascend-runtime-notes.md, section 6": a user who has only the repository (or only the wheel, through
``m2det docs``) must find each one as a numbered heading of that document. The citations are read from
the files as text; the headings (``## 7. Soft-NMS``, ``### 6. Release ...``) are parsed from the
documents, so a renumbered section or a citation of one that does not exist fails here.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, Iterator, Set, Tuple

import pytest

from m2det_impl.cli.app import main
from m2det_impl.exit_codes import EXIT_BAD_INPUT, EXIT_OK

pytestmark = pytest.mark.cpu

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"

# "reference section 7", "reference sections 5-7", "reference sections 1 and 10", "reference's section 9",
# "docs/reference.md, section 7", "docs/ascend-runtime-notes.md section 5", "docs/reference.md 8"
_CITATION = re.compile(r"(?P<doc>docs/(?P<file>[a-z-]+)\.md|\breference)(?:'s)?,? "
                       r"(?:(?:sections?) )?(?P<numbers>\d+(?:(?:-| and |, )\d+)*)\b")
_NUMBERED_HEADING = re.compile(r"^#{2,3} (\d+)\. ", re.MULTILINE)


def _cited_sections(text: str) -> Iterator[Tuple[str, int]]:
    for match in _CITATION.finditer(text):
        if match.group("doc") == "reference" and not re.match(r"reference(?:'s)?,? sections? ", match.group(0)):
            continue  # the bare word "reference" cites a section only as "reference section N"
        document = match.group("file") or "reference"
        for part in re.split(r" and |, ", match.group("numbers")):
            low, _, high = part.partition("-")
            for number in range(int(low), int(high or low) + 1):
                yield document, number


def _sources() -> Iterator[Path]:
    for folder in ("m2det_impl", "tests", "scripts", "benchmarks", "docs"):
        yield from sorted((REPO / folder).rglob("*.py"))
        yield from sorted((REPO / folder).rglob("*.md"))
    yield REPO / "README.md"
    yield REPO / "conftest.py"


def _headings() -> Dict[str, Set[int]]:
    return {p.stem: {int(n) for n in _NUMBERED_HEADING.findall(p.read_text(encoding="utf-8"))}
            for p in DOCS.glob("*.md")}


def test_the_citation_reader_reads_every_form_it_claims():
    """An independent check of the reader itself: it must be able to see a broken citation."""
    text = ("reference section 7; reference sections 5-7; reference sections 1 and 10; "
            "docs/reference.md 8; docs/ascend-runtime-notes.md, section 6; a reference to 3 things")
    assert sorted(_cited_sections(text)) == sorted([("reference", 7), ("reference", 5), ("reference", 6),
                                                    ("reference", 7), ("reference", 1), ("reference", 10),
                                                    ("reference", 8), ("ascend-runtime-notes", 6)])


def test_every_cited_section_is_a_numbered_heading_of_its_document():
    headings = _headings()
    assert headings["reference"] == set(range(1, 11)) and headings["ascend-runtime-notes"] == set(range(1, 9))
    cited = 0
    broken = []
    for path in _sources():
        if ".venv" in path.parts or "build" in path.parts:
            continue
        for document, number in _cited_sections(path.read_text(encoding="utf-8", errors="replace")):
            cited += 1
            if number not in headings.get(document, set()):
                broken.append(f"{path.relative_to(REPO)}: {document} section {number}")
    assert cited > 50  # the reader found the citations the code is full of
    assert broken == [], "\n".join(broken)


def test_m2det_docs_lists_and_prints_the_documents(capsys):
    assert main(["docs"]) == EXIT_OK
    listing = capsys.readouterr().out
    assert "reference" in listing and "M2Det reference behaviour" in listing and str(DOCS) in listing
    assert main(["docs", "reference"]) == EXIT_OK
    assert capsys.readouterr().out == (DOCS / "reference.md").read_text(encoding="utf-8").rstrip("\n") + "\n"
    assert main(["docs", "ascend-runtime-notes.md"]) == EXIT_OK
    assert "### 6. Release" in capsys.readouterr().out
    assert main(["docs", "SPEC"]) == EXIT_BAD_INPUT
    assert "no document 'SPEC': one of architecture," in capsys.readouterr().err


def test_docs_are_found_where_each_kind_of_install_puts_them(tmp_path, monkeypatch):
    """A wheel's data files go under the environment's prefix, or under the user's base with
    ``pip install --user``; a folder without reference.md (another project's) is not taken."""
    import m2det_impl.resources as resources

    monkeypatch.setattr(resources, "__file__", str(tmp_path / "site-packages" / "m2det_impl" / "resources.py"))
    prefix, user = tmp_path / "prefix", tmp_path / "user"
    monkeypatch.setattr(resources.sysconfig, "get_paths", lambda: {"data": str(prefix)})
    monkeypatch.setattr(resources.site, "getuserbase", lambda: str(user))
    (tmp_path / "site-packages" / "docs").mkdir(parents=True)  # another project's docs/, no reference.md
    assert resources.docs_folder() is None
    installed = user.joinpath("share", "doc", "m2det-conformance")
    installed.mkdir(parents=True)
    (installed / "reference.md").write_text("# M2Det reference behaviour\n")
    assert resources.docs_folder() == installed
    in_prefix = prefix.joinpath("share", "doc", "m2det-conformance")
    in_prefix.mkdir(parents=True)
    (in_prefix / "reference.md").write_text("# M2Det reference behaviour\n")
    assert resources.docs_folder() == in_prefix  # the environment's own copy first
