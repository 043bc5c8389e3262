"""The README is a front page and docs/ a site whose links hold (without mkdocs installed: mkdocs.yml is read as YAML)."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.rglob("*.md"))
MAX_README_LINES = 220

# [text](target) and ![alt](target), with an optional "title"; code is removed before links are looked for.
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^\s*(```|~~~).*?^\s*\1[^\n]*$", re.S | re.M)
INLINE_CODE = re.compile(r"(`+)(?!`).+?(?<!`)\1(?!`)", re.S)
HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$", re.M)


def prose(path: Path) -> str:
    return INLINE_CODE.sub("", FENCE.sub("", path.read_text()))


def anchors(path: Path) -> set[str]:
    """The ids a heading of ``path`` gets: GitHub's form and Python-Markdown's (mkdocs), which differ on runs of '-'."""
    found = set()
    for _, title in HEADING.findall(FENCE.sub("", path.read_text())):
        text = unicodedata.normalize("NFKD", re.sub(r"[`*_]", "", title)).encode("ascii", "ignore").decode()
        text = re.sub(r"[^\w\s-]", "", text).strip().lower()
        found |= {re.sub(r"\s", "-", text), re.sub(r"[-\s]+", "-", text)}
    return found


def relative_links(path: Path) -> list[str]:
    return [target for target in LINK.findall(prose(path)) if not re.match(r"[a-z][a-z0-9+.-]*:", target, re.I)]


def nav_pages(entries) -> list[str]:
    """Every page the nav of mkdocs.yml names, at any depth (a page is a string, or the value of a title)."""
    if isinstance(entries, str):
        return [entries]
    if isinstance(entries, dict):
        return [page for value in entries.values() for page in nav_pages(value)]
    return [page for entry in entries for page in nav_pages(entry)]


def test_readme_is_a_front_page_of_at_most_220_lines():
    lines = len((ROOT / "README.md").read_text().splitlines())
    assert lines <= MAX_README_LINES, (
        f"README.md has {lines} lines: move sections into docs/ (limit {MAX_README_LINES})"
    )


def test_every_docs_page_is_in_the_nav_and_every_nav_entry_is_a_page():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    assert config.get("docs_dir", "docs") == "docs"
    listed = nav_pages(config["nav"])
    assert len(listed) == len(set(listed)), "a page is listed twice in mkdocs.yml's nav"
    on_disk = {page.relative_to(DOCS).as_posix() for page in PAGES}
    assert on_disk - set(listed) == set(), "pages of docs/ missing from mkdocs.yml's nav"
    assert set(listed) - on_disk == set(), "nav entries of mkdocs.yml without a page in docs/"


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(ROOT / target.partition("#")[0]).resolve() for target in relative_links(ROOT / "README.md")}
    missing = [page.relative_to(ROOT).as_posix() for page in PAGES if page.parent == DOCS and page not in linked]
    assert missing == [], f"README.md links none of {missing}"


@pytest.mark.parametrize("path", [ROOT / "README.md", *PAGES], ids=lambda path: path.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves_to_a_file_and_heading(path):
    broken = []
    for target in relative_links(path):
        file, _, anchor = target.partition("#")
        resolved = (path.parent / file).resolve() if file else path
        if not resolved.is_file():
            broken.append(
                f"{target}: no file {resolved.relative_to(ROOT) if resolved.is_relative_to(ROOT) else resolved}"
            )
        elif path.is_relative_to(DOCS) and not resolved.is_relative_to(DOCS):
            broken.append(f"{target}: outside docs/, which is all the site serves")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target}: no heading #{anchor} in {resolved.name}")
    assert broken == [], f"{path.relative_to(ROOT)}: " + "; ".join(broken)


def test_the_link_checker_sees_links_images_and_anchors_and_skips_code(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "# A title, with `code`\n\n[a](b.md) ![c](d.png) [e](https://x.org) [f](#a-title-with-code)\n"
        "`[g](h.md)`\n\n```\n[i](j.md)\n```\n"
    )
    assert relative_links(page) == ["b.md", "d.png", "#a-title-with-code"]
    assert "a-title-with-code" in anchors(page)
