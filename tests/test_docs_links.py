"""Every link between the project's own pages leads somewhere: the file exists and, where the link
names a section (``page.md#section``), the page has a heading that GitHub gives that anchor."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted(
    [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "conceptvae").rglob("*.md")]
)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation but ``-`` and ``_`` dropped,
    spaces turned to hyphens (so "Edits at +1 and -1: measured" is
    ``edits-at-1-and--1-measured``)."""
    text = heading.lstrip("#").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def prose(path: Path) -> list[str]:
    """The page's lines outside fenced code blocks (a ``#`` comment there is not a heading)."""
    out, fenced = [], False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced:
            out.append(line)
    return out


def anchors(path: Path) -> set[str]:
    return {anchor(line) for line in prose(path) if line.startswith("#")}


def links(path: Path) -> list[str]:
    return [m.group(1) for line in prose(path) for m in LINK.finditer(line)]


def broken(path: Path, root: Path = ROOT) -> list[str]:
    """The links of ``path`` to a missing file or to a section its page does not have (paths
    said relative to ``root``)."""
    bad = []
    for target in links(path):
        if re.match(r"[a-z]+:", target):  # https:, mailto: ... are not ours to check
            continue
        file, _, section = target.partition("#")
        page = (path.parent / file).resolve() if file else path
        if not page.exists():
            bad.append(f"{target}: no file {page.relative_to(root)}")
        elif section and page.suffix == ".md" and section not in anchors(page):
            bad.append(f"{target}: {page.relative_to(root)} has no heading with that anchor")
    return bad


def test_the_anchor_rule_is_githubs():
    got = anchor("## Edits at strength +1 and -1: measured")
    assert got == "edits-at-strength-1-and--1-measured"
    assert anchor("### A push: a longer step, held") == "a-push-a-longer-step-held"
    assert anchor("### Strength 1 measured with the edit's own footprint") == (
        "strength-1-measured-with-the-edits-own-footprint"
    )


def test_a_broken_link_is_found(tmp_path):
    (tmp_path / "a.md").write_text("# Top\n\n## A section\n\n```\n# not a heading\n```\n")
    page = tmp_path / "b.md"
    page.write_text(
        "[ok](a.md#a-section) [top](a.md#top) [web](https://example.org/x#y)\n"
        "[gone](a.md#not-a-heading) [missing](c.md) [self](#nowhere)\n"
        "```\n[in code](c.md)\n```\n"
    )
    assert broken(page, root=tmp_path) == [
        "a.md#not-a-heading: a.md has no heading with that anchor",
        "c.md: no file c.md",
        "#nowhere: b.md has no heading with that anchor",
    ]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_of_the_docs_leads_somewhere(page):
    assert broken(page) == []
