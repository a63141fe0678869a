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


def coarse(fraction: str, variant: str) -> tuple[str, ...]:
    return ("study_coarse", fraction, variant, *PART)


QUOTED = [  # (page, the text quoting mean/std in percent, the study entries the text names)
    ("README.md", "stacked default {a:.2f} ± {a_std:.2f}", {"a": ("study", "softmax_ohem", "decode", "independent", "fine_miou")}),
    ("README.md", "flat + the same skip + OHEM {a:.2f} ± {a_std:.2f}",
     {"a": ("study", "flat_skip_ohem", "decode", "independent", "fine_miou")}),
    ("README.md", "fine-only {a:.2f} (stacked) / {b:.2f} (flat), set-restricted teacher {c:.2f} / {d:.2f}",
     {"a": coarse("0.1", "stacked_fine"), "b": coarse("0.1", "flat_fine"), "c": coarse("0.1", "stacked_teacher"),
      "d": coarse("0.1", "flat_teacher")}),
    ("README.md", "fine-only {a:.2f} (flat) beats the teacher {b:.2f}",
     {"a": coarse("0.25", "flat_fine"), "b": coarse("0.25", "stacked_teacher")}),
    ("README.md", "At twice the iterations fine-only reaches {a:.2f} and labelling everything {b:.2f}",
     {"a": coarse("0.1", "stacked_fine_long"), "b": coarse("1.0", "stacked_fine_long")}),
    ("README.md", "Person masks instead of regions: self-correction {a:.2f}", {"a": coarse("0.1", "stacked_selfcorrect_person")}),
    ("README.md", "At 5% the plain marginal lifts fine-only {a:.2f} (stacked) / {b:.2f} (flat) to {c:.2f} / {d:.2f}",
     {"a": coarse("0.05", "stacked_fine"), "b": coarse("0.05", "flat_fine"), "c": coarse("0.05", "stacked_marginal"),
      "d": coarse("0.05", "flat_marginal")}),
    ("docs/models.md", "OHEM ends ahead of the stacked default when every image has part labels ({a:.2f} vs {b:.2f}",
     {"a": ("study", "flat_skip_ohem", "decode", "independent", "fine_miou"),
      "b": ("study", "softmax_ohem", "decode", "independent", "fine_miou")}),
    ("docs/training.md", "| {a:.2f} / {b:.2f} | {c:.2f} / {d:.2f} | {e:.2f} / **{f:.2f}** | {g:.2f} / {h:.2f} |",
     {"a": coarse("0.1", "flat_fine"), "b": coarse("0.1", "stacked_fine"), "c": coarse("0.1", "flat_marginal"),
      "d": coarse("0.1", "stacked_marginal"), "e": coarse("0.1", "flat_teacher"), "f": coarse("0.1", "stacked_teacher"),
      "g": coarse("1.0", "flat_fine"), "h": coarse("1.0", "stacked_fine")}),
    ("docs/training.md", "With person masks instead of regions the plain marginal hurts ({a:.2f}) and self-correction "
     "pays ({b:.2f})", {"a": coarse("0.1", "stacked_marginal_person"), "b": coarse("0.1", "stacked_selfcorrect_person")}),
    ("docs/training.md", "the plain marginal pays most ({a:.2f} -> {b:.2f} stacked, {c:.2f} -> {d:.2f} flat)",
     {"a": coarse("0.05", "stacked_fine"), "b": coarse("0.05", "stacked_marginal"), "c": coarse("0.05", "flat_fine"),
      "d": coarse("0.05", "flat_marginal")}),
    ("docs/training.md", "the teacher reaches {a:.2f} against fine-only {b:.2f} at f = 10%, but the ceiling rises more, "
     "to {c:.2f}", {"a": coarse("0.1", "stacked_teacher_long"), "b": coarse("0.1", "stacked_fine_long"),
                   "c": coarse("1.0", "stacked_fine_long")}),
    ("README.md", "self-correction (SCHP) from the 2400-iteration fine-only model reaches {a:.2f} in 1200 iterations "
     "and {b:.2f} in a second run", {"a": coarse("0.1", "stacked_selfcorrect"), "b": coarse("0.1", "stacked_selfcorrect2")}),
    ("docs/training.md", "reaches {a:.2f} in 1200 iterations, and a second such run (warm start from the first) {b:.2f}",
     {"a": coarse("0.1", "stacked_selfcorrect"), "b": coarse("0.1", "stacked_selfcorrect2")}),
    ("docs/training.md", "fine-only {a:.2f} (flat, 3 seeds) / {b:.2f} (stacked, 3 seeds) against {c:.2f} with the teacher (3 seeds) and {d:.2f}",
     {"a": coarse("0.25", "flat_fine"), "b": coarse("0.25", "stacked_fine"), "c": coarse("0.25", "stacked_teacher"),
      "d": coarse("0.25", "stacked_marginal")}),
]


@pytest.mark.parametrize("page, text, entries", QUOTED, ids=lambda value: value if isinstance(value, str) else "")
def test_quoted_study_numbers_match_their_json(page, text, entries):
    values = {}
    for name, entry in entries.items():
        cell = study_cell(*entry)
        values[name] = 100 * cell["mean"]
        values[f"{name}_std"] = math.nan if cell["std"] is None else 100 * cell["std"]  # None: one seed
    quote = text.format(**values)
    assert quote in " ".join((ROOT / page).read_text().split()), f"{page} should quote {quote!r} (benchmarks/*.json)"
