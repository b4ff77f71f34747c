"""Every documentation citation in the repository points at a section that exists.

Code, tests, scripts and READMEs cite the notes in ``docs/`` as ``docs/<name>.md §<number>``; further ``§<number>``
later on the same line refer to the same file. Inside ``docs/`` a bare ``§<number>`` refers to the last file named
earlier on its line (``docs/x.md``, ``[x.md](x.md)``), else to the page itself. A section number must start a heading
of that file (``## 3 …``, ``### 3.1 …``). Citations of documents that are not part of the repository fail, and so
does a ``§`` that names no file (``paper §3``, the arXiv paper's numbering, is the exception).

Plain file reading only (no torch), so it runs with ``--noconftest`` in well under a second.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
THIS = Path(__file__).resolve()

TEXT_SUFFIXES = {".py", ".md", ".sh", ".yaml", ".yml", ".toml", ".txt", ".cfg", ".ini"}
TEXT_NAMES = {"Makefile", "run"}
SCAN_DIRS = ("sfd", "scripts", "tools", "tests", "configs", "docs", ".ci")

SECTION = r"§\s?(?P<section>\d+(?:\.\d+)*)"
# A file mention: docs/x.md, or (inside docs/) a relative x.md; a § after it on the line belongs to it.
FILE_MENTION = re.compile(r"(?<![\w/.-])(?P<docs>docs/)?(?P<name>[A-Za-z0-9_-]+)\.md\b")
TOKEN = re.compile(rf"{FILE_MENTION.pattern}|(?P<paper>paper(?:'s)?\s+)?{SECTION}")
HEADING = re.compile(r"^#{1,6}\s+(\d+(?:\.\d+)*)(?:\s|$)")
# Documents that live outside the repository; the repository must never send a reader to them.
FORBIDDEN = re.compile(r"SFD_METHOD|(?<![\w/])SPEC\.md|ADM_EVALUATOR\.md|ENVIRONMENT\.md|STYLE\.md|\bspecs/|"
                       r"goldens/semvae|(?<![\w.-])shared/|SEMVAE SPEC|golden README")


def tracked_text_files() -> list[Path]:
    """Tracked files (``git ls-files``), or the usual folders when git is unavailable; binary files are left out."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, timeout=10)
        paths = [ROOT / name for name in listed.stdout.decode().split("\0") if name]
        paths += [p for p in DOCS.glob("*.md") if p not in paths]  # new pages count before they are committed
    except (OSError, subprocess.SubprocessError):
        paths = [p for folder in SCAN_DIRS for p in (ROOT / folder).rglob("*") if p.is_file()]
        paths += [p for p in ROOT.iterdir() if p.is_file()]
    return sorted(p for p in set(paths) if p.is_file() and (p.suffix in TEXT_SUFFIXES or p.name in TEXT_NAMES))


def read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return None


def sections_of(page: Path, cache: dict[Path, set[str] | None]) -> set[str] | None:
    """Section numbers that start a heading of ``page``; None when the page does not exist."""
    if page not in cache:
        text = read_text(page) if page.is_file() else None
        cache[page] = None if text is None else {m.group(1) for line in text.splitlines()
                                                  if (m := HEADING.match(line))}
    return cache[page]


def citation_problems() -> list[str]:
    problems: list[str] = []
    cache: dict[Path, set[str] | None] = {}
    for path in tracked_text_files():
        if path == THIS:
            continue
        text = read_text(path)
        if text is None:
            continue
        rel = path.relative_to(ROOT).as_posix()
        in_docs = path.parent == DOCS
        for number, line in enumerate(text.splitlines(), 1):
            where = f"{rel}:{number}"
            if forbidden := FORBIDDEN.search(line):
                problems.append(f"{where}: cites {forbidden.group(0)!r}, which is not part of the repository; "
                                f"cite docs/<name>.md §<section> instead")
            current = path if in_docs else None  # the page a bare § refers to
            for token in TOKEN.finditer(line):
                if token.group("name"):
                    if token.group("docs"):
                        current = DOCS / f"{token.group('name')}.md"
                    elif in_docs:
                        current = DOCS / f"{token.group('name')}.md"
                    else:
                        current = ROOT / "<not docs>" / f"{token.group('name')}.md"
                    continue
                if token.group("paper"):
                    continue
                section = token.group("section")
                if current is None:
                    problems.append(f"{where}: §{section} names no file; write docs/<name>.md §{section} "
                                    f"(or 'paper §{section}' for the arXiv paper)")
                    continue
                if current.parent != DOCS:
                    problems.append(f"{where}: {current.name} §{section} is not a page of docs/; "
                                    f"cite docs/<name>.md §<section>")
                    continue
                found = sections_of(current, cache)
                if found is None:
                    problems.append(f"{where}: docs/{current.name} does not exist")
                elif section not in found:
                    problems.append(f"{where}: docs/{current.name} has no heading numbered {section}")
            for mention in FILE_MENTION.finditer(line):
                if mention.group("docs") and not (DOCS / f"{mention.group('name')}.md").is_file():
                    problems.append(f"{where}: docs/{mention.group('name')}.md does not exist")
    return sorted(set(problems))


def test_every_citation_names_an_existing_section():
    problems = citation_problems()
    assert not problems, "broken documentation citations:\n" + "\n".join(problems)


def test_section_numbers_are_unique_within_each_page():
    duplicates = []
    for page in sorted(DOCS.glob("*.md")):
        seen: dict[str, int] = {}
        for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
            if (m := HEADING.match(line)) and seen.setdefault(m.group(1), number) != number:
                duplicates.append(f"docs/{page.name}:{number}: section {m.group(1)} already at line {seen[m.group(1)]}")
    assert not duplicates, "\n".join(duplicates)


def test_the_checker_catches_broken_citations(tmp_path):
    """The patterns themselves: a wrong section, a missing page, an unqualified § and an outside document."""
    page = tmp_path / "page.md"
    page.write_text("# T\n\n## 3 Loss\n\n### 3.1 The time split\n")
    assert {m.group(1) for line in page.read_text().splitlines() if (m := HEADING.match(line))} == {"3", "3.1"}
    tokens = [(t.group("name"), t.group("paper"), t.group("section")) for t in
              TOKEN.finditer("see docs/method.md §3.1, §2 and paper §4 (§5)")]
    assert tokens == [("method", None, None), (None, None, "3.1"), (None, None, "2"), (None, "paper ", "4"),
                      (None, None, "5")]
    assert FORBIDDEN.search("(" + "SFD_METHOD" + ".md §3)") and FORBIDDEN.search("ADM_EVALUATOR" + ".md §4")
    assert not FORBIDDEN.search("ADM_EVALUATOR=/path/evaluator.py") and not FORBIDDEN.search("docs/method.md §3")
