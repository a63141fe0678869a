"""Every fenced shell and Python snippet of README.md, docs/ and hierarchies/README.md runs as written.

Each ```bash or ```python fence carries a marker on the line above it: ``<!-- snippet: run -->``
(executed here) or ``<!-- snippet: skip (reason) -->`` (listed, skipped with its reason). Snippets
run in a sandbox folder holding what they name: a tiny checkpoint at ``runs/default/best.pt``,
``photo.jpg`` and ``photos/``, LIP- and ATR-layout folders under ``data/``, ``my_tree.yaml``, and
the repository's ``hierarchies/``, ``configs/`` and ``examples/``. ``.venv/bin/`` is this
interpreter's folder.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from hierparse.cli import main
from hierparse.data import SyntheticParsing

from test_data_layouts import tree_lip_official

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "hierarchies" / "README.md"]
FENCE = re.compile(r"^```(bash|python)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
MARKER = re.compile(r"<!-- snippet: (run|skip \((.+)\)) -->\n$")
TINY_RUN = ["crop_size", "32", "eval_size", "32", "batch_size", "2", "synthetic_train_images", "8",
            "synthetic_val_images", "3", "max_iters", "2", "eval_interval", "2", "workers", "0", "threads", "1"]
SHARED = ("hierarchies", "configs", "examples")


def snippets() -> list:
    """One pytest param per fence: (page, language, code, marker), id ``page:line``."""
    params = []
    for page in PAGES:
        text = page.read_text()
        for fence in FENCE.finditer(text):
            line = text.count("\n", 0, fence.start()) + 1
            before = text[:fence.start()].splitlines(keepends=True)
            marker = MARKER.search(before[-1]) if before else None
            params.append(pytest.param(page, fence.group(1), fence.group(2), marker,
                                       id=f"{page.relative_to(ROOT)}:{line}"))
    return params


def atr_folder(root: Path) -> None:
    """An ATR-layout folder: synthetic images labelled with ATR's 18 ids."""
    for folder in ("train_images", "train_segmentations"):
        (root / folder).mkdir(parents=True)
    for index, sample in enumerate(SyntheticParsing(n=2, size=(40, 32), split="val")):
        Image.fromarray(sample["image"]).save(root / "train_images" / f"a{index}.jpg")
        Image.fromarray(sample["label"] % 18).save(root / "train_segmentations" / f"a{index}.png")
    (root / "train_id.txt").write_text("a0\na1\n")


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("snippets")
    for name in SHARED:
        (folder / name).symlink_to(ROOT / name)
    assert main(["train", *TINY_RUN, "out", str(folder / "runs" / "default")]) == 0
    photos = folder / "photos"
    photos.mkdir()
    for index, sample in enumerate(SyntheticParsing(n=2, size=(48, 40), split="test")):
        Image.fromarray(sample["image"]).save(photos / f"photo{index}.jpg")
    shutil.copy(photos / "photo0.jpg", folder / "photo.jpg")
    for split in ("train", "val"):
        tree_lip_official(folder / "data" / "LIP", split)
    atr_folder(folder / "data" / "ATR")
    shutil.copy(ROOT / "hierarchies" / "lip.yaml", folder / "my_tree.yaml")
    return folder


def run_snippet(language: str, code: str, folder: Path) -> None:
    """Run one snippet in ``folder``: Python in this interpreter, bash with ``.venv/bin/`` made this
    interpreter's folder; raises on failure."""
    if language == "python":
        previous = Path.cwd()
        os.chdir(folder)
        try:
            exec(compile(code, "snippet", "exec"), {"__name__": "__snippet__"})
        finally:
            os.chdir(previous)
        return
    bin_dir = Path(sys.executable).parent
    script = code.replace(".venv/bin/", f"{bin_dir}/")
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=folder, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"exit {result.returncode}:\n{script}\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"


@pytest.mark.slow
@pytest.mark.parametrize("page, language, code, marker", snippets())
def test_snippet(page, language, code, marker, sandbox):
    assert marker is not None, (f"{page.name}: a ```{language} fence without <!-- snippet: run --> or "
                                f"<!-- snippet: skip (reason) --> on the line above")
    if marker.group(2):
        pytest.skip(marker.group(2))
    run_snippet(language, code, sandbox)


def test_markers_are_well_formed():
    """A marker the pattern misses would leave its fence unmarked: catch typos."""
    for page in PAGES:
        for line in page.read_text().splitlines():
            if line.lstrip().startswith("<!-- snippet"):
                assert MARKER.search(line + "\n"), f"{page.name}: malformed marker {line!r}"


@pytest.mark.parametrize("language, code, error", [
    ("bash", ".venv/bin/hierparse show no_such_tree\n", AssertionError),
    ("bash", ".venv/bin/hierparse show lip\nfalse\n", AssertionError),   # a later line fails
    ("python", "import hierparse\nhierparse.load_hierarchy('no_such_tree')\n", Exception),
])
def test_a_failing_snippet_fails(language, code, error, tmp_path):
    with pytest.raises(error):
        run_snippet(language, code, tmp_path)
