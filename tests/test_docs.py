"""The docs match the command line: every command has a page its --help names, and every relative link in
README.md and docs/*.md resolves (the file exists; an #anchor names a heading there, slugged as GitHub does)."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from ipilab.cli import main

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
DOCS_LINE = re.compile(r"^\s*Docs: (docs/\S+\.md)\s*$", re.MULTILINE)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
CODE_SPAN = re.compile(r"`[^`\n]*`")


def commands() -> list[tuple[str, ...]]:
    """Every command path under `ipilab`, subcommands of groups included: ("analyze",), ("reproduce", "seed")."""
    found: list[tuple[str, ...]] = []

    def walk(group: click.Group, path: tuple[str, ...]) -> None:
        for name, cmd in sorted(group.commands.items()):
            found.append((*path, name))
            if isinstance(cmd, click.Group):
                walk(cmd, (*path, name))

    walk(main, ())
    return found


def named_page(args: list[str]) -> str:
    result = CliRunner().invoke(main, [*args, "--help"])
    assert result.exit_code == 0, result.output
    pages = DOCS_LINE.findall(result.output)
    assert len(pages) == 1, f"`ipilab {' '.join(args)} --help` names {pages}, not one docs page"
    return pages[0]


@pytest.mark.parametrize("path", commands(), ids=" ".join)
def test_every_command_names_its_page(path: tuple[str, ...]) -> None:
    page = named_page(list(path))
    assert (ROOT / page).is_file(), f"{page} (named by `ipilab {' '.join(path)} --help`) does not exist"
    # A top-level command's page is docs/<command>.md; a subcommand shares its group's page.
    assert page == f"docs/{path[0]}.md"


def test_main_help_names_the_index() -> None:
    assert named_page([]) == "docs/README.md"


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation but - and _ dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def prose(page: Path) -> str:
    """The page without its indented code blocks and code spans, where [x](y) is not a link."""
    lines = [ln for ln in page.read_text(encoding="utf-8").splitlines() if not ln.startswith("    ")]
    return CODE_SPAN.sub("", "\n".join(lines))


def anchors(page: Path) -> set[str]:
    return {slug(ln.lstrip("#")) for ln in page.read_text(encoding="utf-8").splitlines() if ln.startswith("#")}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path) -> None:
    links = LINK.findall(prose(page))
    assert links, f"{page.name} links nowhere"
    for target in links:
        if re.match(r"[a-z]+:", target):  # https:, mailto:: not ours to check
            continue
        assert not target.startswith("/"), f"{page.name}: {target} is absolute; GitHub needs a relative link"
        file_part, _, anchor = target.partition("#")
        dest = (page.parent / file_part).resolve() if file_part else page
        assert dest.is_relative_to(ROOT), f"{page.name}: {target} points outside the repository"
        assert dest.exists(), f"{page.name}: {target} does not exist"
        if anchor and dest.suffix == ".md":
            assert anchor in anchors(dest), f"{page.name}: {target}: no heading #{anchor} in {dest.name}"


def test_readme_has_ci_test_command_verbatim() -> None:
    """.ci/run runs "the README's test command, verbatim" (pip told --quiet): README.md must show that line."""
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    command = ci[ci.index("# The README's test command, verbatim:") + 1].replace("pip install --quiet ", "pip install ")
    readme = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert "    " + command in readme
