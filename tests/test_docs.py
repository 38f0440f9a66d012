"""The documentation: a short README that links every page under docs/, no link that dangles,
and no reference to files outside the repository."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README_MAX_WORDS = 1500
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
#: the project's pages: README, the docs/, the benchmark results and the embedded data's card
PAGES = sorted({ROOT / "README.md", ROOT / "CHANGELOG.md", *(ROOT / "docs").glob("*.md"),
                *(ROOT / "benchmarks").glob("*.md"), ROOT / "nnformer_fast" / "data" / "default" / "README.md"})


def anchors(page: Path) -> set:
    """GitHub's heading anchors of a markdown page."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    out = set()
    for heading in re.findall(r"^#+\s+(.*)$", text, re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        out.add(slug)
    return out


def links(page: Path) -> list:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return [t for t in LINK.findall(text) if not re.match(r"[a-z]+:", t)]


def test_readme_is_short():
    words = len((ROOT / "README.md").read_text().split())
    assert words <= README_MAX_WORDS, f"README.md has {words} words (at most {README_MAX_WORDS})"


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(ROOT / t.split("#")[0]).resolve() for t in links(ROOT / "README.md") if t.split("#")[0]}
    pages = {p.resolve() for p in (ROOT / "docs").glob("*.md")}
    assert pages, "no docs/*.md"
    assert not pages - linked, f"not linked from README.md: {sorted(p.name for p in pages - linked)}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_resolve(page):
    dangling = []
    for target in links(page):
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists() or not dest.is_relative_to(ROOT):
            dangling.append(target)
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            dangling.append(target)
    assert not dangling, f"{page.relative_to(ROOT)}: dangling links {dangling}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_reference_outside_the_repository(page):
    """No citation of the specification or style files the project was written from, nor of
    paths above the checkout: a reader of the repository has neither."""
    found = re.findall(r"\bSPEC\b|SPEC\.md|STYLE\.md|\.\./shared", page.read_text())
    assert not found, f"{page.relative_to(ROOT)} refers outside the repository: {sorted(set(found))}"


def test_anchor_slugs():
    page = ROOT / "docs" / "TRAINING.md"
    assert "losses-and-metrics" in anchors(page) and "torchcompile" in anchors(page)
