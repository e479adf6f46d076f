"""Relative links in the repository-root Markdown files lead somewhere.

The pages under docs/ are checked by `mkdocs build --strict` (scripts/test.sh); README.md and
BENCHMARKS.md live outside the site, so their links are checked here: the file must exist and a
`#anchor` into a Markdown file must name one of its headings.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ROOT_PAGES = ["README.md", "BENCHMARKS.md"]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def heading_anchors(markdown: str) -> set[str]:
    """The anchors Python-Markdown's toc (mkdocs) and GitHub give a page's headings."""
    anchors = set()
    for heading in re.findall(r"^#+\s+(.+?)\s*$", markdown, flags=re.MULTILINE):
        text = re.sub(r"[^\w\s-]", "", heading.replace("`", "")).strip().lower()
        anchors.add(re.sub(r"[\s]+", "-", text))
    return anchors


def broken_links(page: Path) -> list[str]:
    broken = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path) if path else page
        if not resolved.exists():
            broken.append(f"{target} (no such file)")
        elif (
            anchor
            and resolved.suffix == ".md"
            and anchor not in heading_anchors(resolved.read_text())
        ):
            broken.append(f"{target} (no heading with that anchor)")
    return broken


@pytest.mark.parametrize("name", ROOT_PAGES)
def test_root_page_links_resolve(name: str) -> None:
    assert broken_links(REPO / name) == []


def test_checker_finds_broken_links(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Title\n\n## Data and `checkpoints`\n")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](other.md) [ok](other.md#data-and-checkpoints) [web](https://example.org/x)\n"
        "[gone](missing.md) [bad anchor](other.md#nope)\n"
    )
    assert broken_links(page) == [
        "missing.md (no such file)",
        "other.md#nope (no heading with that anchor)",
    ]
