"""Every document the code cites ships with the repository, with the section it names.

Code comments say `docs/method.md §3.2` so a newcomer can read why; a citation of a file that
is not in the repository, or of a section number that a doc edit renumbered, sends them
nowhere.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCANNED = ("bids_app", "benchmarks", "training", "tests", "docker", "descriptors")
TOP_FILES = ("README.md", "Dockerfile", "Makefile", "run.py")
SUFFIXES = {".py", ".md", ".sh", ".json", ".txt", ".toml", ".j2", ".html"}
CITATION = re.compile(r"(docs/[\w.-]+\.md) (?:\\u00a7|§)(\d+(?:\.\d+)?)")
# Documents that lived outside the repository; citing them again would be a dead end.
GONE = re.compile(r"shared/spec/|\b(?:nnunet-here|containers-here|reference-tool-here)\.md")


def _sources() -> list[Path]:
    files = [REPO / name for name in TOP_FILES if (REPO / name).is_file()]
    for folder in SCANNED:
        for path in sorted((REPO / folder).rglob("*")):
            skip = "out" in path.relative_to(REPO).parts[:2] or "__pycache__" in path.parts
            if path.is_file() and path.suffix in SUFFIXES and not skip:
                files.append(path)
    return files


def _sections(doc: Path) -> set[str]:
    heads = re.findall(r"^#+ (\d+(?:\.\d+)?)\.? ", doc.read_text(), flags=re.MULTILINE)
    return set(heads)


def test_cited_sections_exist() -> None:
    cited: dict[tuple[str, str], str] = {}
    for path in _sources():
        for m in CITATION.finditer(path.read_text(errors="replace")):
            cited.setdefault((m[1], m[2]), path.relative_to(REPO).as_posix())
    assert len(cited) > 20, "the citation pattern no longer matches the code's citations"
    broken = []
    for (doc, section), where in sorted(cited.items()):
        target = REPO / doc
        if not target.is_file() or section not in _sections(target):
            broken.append(f"{where}: {doc} §{section}")
    assert not broken, "citations with no such document or section: " + "; ".join(broken)


def test_no_citation_of_documents_outside_the_repository() -> None:
    dead = [
        f"{path.relative_to(REPO).as_posix()}: {m[0]}"
        for path in _sources()
        for m in [GONE.search(path.read_text(errors="replace"))]
        if m and path != Path(__file__).resolve()
    ]
    assert not dead, "citations of documents that do not ship: " + "; ".join(dead)
