"""The documentation stays true: every config key is documented, every relative link resolves."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from hierparse.config import DEFAULTS

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("key", sorted(DEFAULTS))
def test_every_config_key_is_in_the_config_reference(key):
    assert f"`{key}`" in (ROOT / "docs" / "training.md").read_text(), f"docs/training.md does not document {key!r}"


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_relative_links_resolve(page):
    text = page.read_text()
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if "://" in target:
            continue
        assert (page.parent / target).exists(), f"{page.name} links to {target}, which does not exist"
