"""The documentation stays true: every config key is documented, every relative link resolves, and
the study numbers the README quotes are those of the studies' JSON."""

from __future__ import annotations

import json
import math
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


def study_cell(name: str, *path: str) -> dict:
    """A mean ± std entry of a study's JSON: ``summary`` indexed by ``path``; for the coarse-label
    study, ``path`` starts with the fraction and the variant of its row list."""
    summary = json.loads((ROOT / "benchmarks" / f"{name}.json").read_text())["summary"]
    if name == "study_coarse":
        fraction, variant, *path = path
        summary = next(row for row in summary if row["fraction"] == float(fraction) and row["variant"] == variant)
    for key in path:
        summary = summary[key]
    return summary


PART = ("merged_miou", "part")
QUOTED = [  # (page, text format of a mean and std in percent, the study entry it quotes)
    ("README.md", "stacked default {mean:.2f} ± {std:.2f}", ("study", "softmax_ohem", "decode", "independent", "fine_miou")),
    ("README.md", "flat + the same skip + OHEM {mean:.2f} ± {std:.2f}",
     ("study", "flat_skip_ohem", "decode", "independent", "fine_miou")),
    ("README.md", "fine-only {mean:.2f} (stacked)", ("study_coarse", "0.1", "stacked_fine", *PART)),
    ("README.md", "/ {mean:.2f} (flat)", ("study_coarse", "0.1", "flat_fine", *PART)),
    ("README.md", "set-restricted teacher {mean:.2f}", ("study_coarse", "0.1", "stacked_teacher", *PART)),
    ("README.md", "labelling everything ({mean:.2f}", ("study_coarse", "1.0", "stacked_fine", *PART)),
    ("README.md", "fine-only {mean:.2f} (flat) beats", ("study_coarse", "0.25", "flat_fine", *PART)),
    ("README.md", "the teacher {mean:.2f}", ("study_coarse", "0.25", "stacked_teacher", *PART)),
]


@pytest.mark.parametrize("page, text, entry", QUOTED, ids=lambda value: value if isinstance(value, str) else None)
def test_quoted_study_numbers_match_their_json(page, text, entry):
    cell = study_cell(*entry)
    std = math.nan if cell["std"] is None else 100 * cell["std"]  # None: one seed
    quote = text.format(mean=100 * cell["mean"], std=std)
    assert quote in (ROOT / page).read_text(), f"{page} should quote {quote!r} (benchmarks/{entry[0]}.json)"
