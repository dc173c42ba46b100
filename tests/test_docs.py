"""The documentation a user reads: links that resolve, figures that match the record,
and no lab notebook in the user pages.  Fast: reads files only, starts nothing."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator, List, Tuple

import pytest

ROOT = Path(__file__).resolve().parent.parent
USER_PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINKED_PAGES = [*USER_PAGES, ROOT / "CONTRIBUTING.md", ROOT / "benchmarks" / "lab" / "README.md"]
RESULTS = ROOT / "benchmarks" / "RESULTS.md"

#: ``[text](target)`` and ``![alt](target)``; a target ends at the first space or ``)``.
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^\s*(```|~~~)")


def prose(path: Path) -> Iterator[Tuple[int, str]]:
    """The lines of a Markdown file outside fenced code blocks, with their numbers."""
    fenced = False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            yield number, line


def slug(heading: str) -> str:
    """The anchor a code host gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set:
    return {slug(line.lstrip("#")) for _n, line in prose(path) if re.match(r"^#{1,6} ", line)}


def links(path: Path) -> List[Tuple[int, str]]:
    found = []
    for number, line in prose(path):
        line = re.sub(r"`[^`]*`", "", line)  # inline code is not a link
        found.extend((number, target) for target in LINK.findall(line))
    return found


def page_id(path: Path) -> str:
    return str(path.relative_to(ROOT))


@pytest.mark.parametrize("page", LINKED_PAGES, ids=page_id)
def test_every_relative_link_and_image_resolves(page):
    assert page.exists(), f"{page_id(page)} is missing"
    broken = []
    for number, target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...
            continue
        file_part, _, anchor = target.partition("#")
        resolved = (page.parent / file_part).resolve() if file_part else page
        if not resolved.exists():
            broken.append(f"line {number}: {target} (no {resolved})")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"line {number}: {target} (no heading #{anchor} in {resolved.name})")
    assert not broken, f"{page_id(page)} has broken links:\n" + "\n".join(broken)


def test_every_user_page_is_linked_from_the_readme():
    linked = {(ROOT / target.partition("#")[0]).resolve() for _n, target in links(ROOT / "README.md")}
    missing = [page_id(p) for p in USER_PAGES[1:] if p.resolve() not in linked]
    assert not missing, f"README.md does not link to {missing}"


#: What belongs in benchmarks/RESULTS.md only: its source letters and cells ("source AD", "Z1 + Z11"),
#: its rounds, and the dates of its runs.
LAB_NOTEBOOK = [
    (re.compile(r"\bsources?\s+[A-Z]{1,2}\d*\b"), "a benchmark source"),
    (re.compile(r"\b[A-Z]{1,2}\d{1,2}\s*\+\s*[A-Z]{1,2}\d{1,2}\b"), "a benchmark cell"),
    (re.compile(r"\brounds?\s+\d+", re.I), "a benchmark round"),
    (re.compile(r"\b20\d\d-\d\d-\d\d\b"), "a date"),
    (
        re.compile(r"\b(January|February|March|April|May|June|July|August|September|October|November|December)\s+20\d\d"),
        "a date",
    ),
]


@pytest.mark.parametrize("page", USER_PAGES, ids=page_id)
def test_user_pages_name_no_source_round_or_date(page):
    text = page.read_text(encoding="utf-8")
    found = [
        f"line {text[: match.start()].count(chr(10)) + 1}: {what}: {match.group(0)!r}"
        for pattern, what in LAB_NOTEBOOK
        for match in pattern.finditer(text)
    ]
    assert not found, f"{page_id(page)} reads like a lab notebook (keep this in benchmarks/RESULTS.md):\n" + "\n".join(found)


def test_every_figure_of_the_benchmarks_page_is_in_the_record():
    """Each decimal figure of docs/benchmarks.md appears, as written, in benchmarks/RESULTS.md."""
    record = RESULTS.read_text(encoding="utf-8")
    page = ROOT / "docs" / "benchmarks.md"
    figures = set()
    for _number, line in prose(page):
        if line.startswith("|") and not line.startswith("|---"):
            figures.update(re.findall(r"(?<![\w.])\d[\d,]*\.\d+(?![\w.])", line))
    assert figures, "docs/benchmarks.md has no table of figures"
    missing = sorted(f for f in figures if f not in record)
    assert not missing, f"figures in docs/benchmarks.md that benchmarks/RESULTS.md does not have: {missing}"
