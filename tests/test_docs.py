"""The docs point somewhere and agree with the code: links resolve, every preset is listed."""

from __future__ import annotations

import re
from pathlib import Path

from simulation.config import PRESETS

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)\s]*)?\)")
MD_NAME = re.compile(r"(?<![\w/.-])((?:docs/)?[\w-]+\.md)\b")


def test_every_relative_link_in_the_docs_resolves() -> None:
    """A relative link of the README or a docs page names a file that exists."""
    missing = [
        f"{page.relative_to(ROOT)}: {target}"
        for page in PAGES
        for target in LINK.findall(page.read_text(encoding="utf-8"))
        if "://" not in target and not (page.parent / target).exists()
    ]
    assert not missing, missing


def test_every_doc_named_in_the_docs_exists() -> None:
    """A page named in prose (`methods.md`, `docs/results.md`) is a file of the repository."""
    missing = [
        f"{page.relative_to(ROOT)}: {name}"
        for page in PAGES
        for name in MD_NAME.findall(page.read_text(encoding="utf-8"))
        if not any((base / name).exists() for base in (page.parent, ROOT, DOCS))
    ]
    assert not missing, missing


def test_configs_doc_names_every_preset() -> None:
    """docs/configs.md lists every preset of simulation.config.PRESETS."""
    text = (DOCS / "configs.md").read_text(encoding="utf-8")
    assert [name for name in PRESETS if f"`{name}`" not in text] == []
