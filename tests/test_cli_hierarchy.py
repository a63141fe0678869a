"""``hierparse show`` and ``hierparse validate``: output, exit codes, one line per user error.

Most checks call ``hierparse.cli.main`` in-process; the exit-code and no-traceback checks run the
real command in a subprocess (``python -m hierparse`` and the ``hierparse`` console script).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hierparse.cli import main
from hierparse.hierarchy import BUILTIN_DIR

REPO = Path(__file__).resolve().parent.parent
SCRIPT = Path(sys.executable).parent / "hierparse"

TOY = """\
name: toy
description: a toy tree
levels: [coarse, fine]
ignore_ids: [9]
classes:
  - {name: Background, ids: 0}
  - name: Person
    children:
      - {name: Left-arm, ids: 1}
      - {name: Right-arm, ids: 2}
  - {name: Sky, ids: [3, 4]}
flip_pairs: [[Left-arm, Right-arm]]
"""
# Three problems, written so that none causes another.
BAD = """\
name: bad
levels: [coarse, fine]
colours: voc
classes:
  - {name: Background, ids: 300}
  - name: Person
    children:
      - {name: Arm, ids: 1}
      - {name: Leg, ids: 1}
"""


def run_cli(*args: str, script: bool = False) -> subprocess.CompletedProcess:
    command = [str(SCRIPT)] if script else [sys.executable, "-m", "hierparse"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(
        command + list(args), capture_output=True, text=True, cwd=REPO, env=env, timeout=120
    )


@pytest.fixture()
def files(tmp_path):
    toy, bad = tmp_path / "toy.yaml", tmp_path / "bad.yaml"
    toy.write_text(TOY)
    bad.write_text(BAD)
    return toy, bad


# ---------------------------------------------------------------------- show
def test_show_text(files, capsys):
    toy, _ = files
    assert main(["show", str(toy)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "toy: a toy tree"
    assert out[1] == f"source: {toy}"
    assert "levels (coarse -> fine): coarse (3), fine (4)" in out
    assert "ignore_index: 255" in out
    # The tree, indented, with each class's index at every level it spans.
    tree = out.index("tree (index at each level it spans; ids = raw label ids):")
    assert out[tree + 1 : tree + 6] == [
        "  Background  [coarse=0 fine=0]  ids [0]",
        "  Person  [coarse=1]",
        "    Left-arm  [fine=1]  ids [1]",
        "    Right-arm  [fine=2]  ids [2]",
        "  Sky  [coarse=2 fine=3]  ids [3, 4]",
    ]
    # The merging table: one row per declared raw id (class ids, ignored ids, ignore_index).
    rows = [line.split() for line in out[out.index(MERGING_TABLE) + 2 :]]
    table = [row for row in rows if row and row[0].isdigit()]
    assert table == [
        ["0", "0", "0", "Background"],
        ["1", "1", "1", "Left-arm"],
        ["2", "1", "2", "Right-arm"],
        ["3", "2", "3", "Sky"],
        ["4", "2", "3", "Sky"],
        ["9", "255", "255", "(ignored)"],
        ["255", "255", "255", "(ignored)"],
    ]
    assert out[-1] == "flip pairs: Left-arm <-> Right-arm"


MERGING_TABLE = ("label-merging table (raw id -> class index per level, or set sN: a group's classes there, "
                 "scored by their summed probability; unlisted ids are ignored):")


def test_show_marks_class_sets_per_level(capsys):
    assert main(["show", "lip"]) == 0
    out = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line.split()[1:] for line in out[out.index(MERGING_TABLE) + 2:]
            if line.split() and line.split()[0].isdigit()}
    assert rows["21"] == ["1", "1", "s1", "Head"] and rows["20"] == ["1", "s0", "s0", "Person"]
    assert rows["2"] == ["1", "1", "2", "Hair"]
    assert "  set s1 of part: Hat, Hair, Sunglasses, Face" in out
    assert "  set s0 of region: Head, Torso, Arms, Legs" in out
    assert main(["show", "lip", "--json"]) == 0
    described = json.loads(capsys.readouterr().out)
    assert described["sets"][0] == [] and described["sets"][1] == [["Head", "Torso", "Arms", "Legs"]]
    assert described["sets"][2][1] == ["Hat", "Hair", "Sunglasses", "Face"]
    head = described["tree"][1]["children"][0]
    assert head["name"] == "Head" and head["ids"] == [21] and len(head["children"]) == 4


def test_show_builtin_by_name(capsys):
    assert main(["show", "cityscapes"]) == 0
    out = capsys.readouterr().out
    assert "levels (coarse -> fine): category (7), class (19)" in out
    assert "    bicycle  [class=18]  ids [33]" in out.splitlines()
    assert "flip pairs" not in out


def test_show_json(files, capsys):
    toy, _ = files
    assert main(["show", str(toy), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["name"] == "toy" and data["description"] == "a toy tree"
    assert data["source"] == str(toy) and data["ignore_index"] == 255
    assert data["levels"] == [
        {"name": "coarse", "num_classes": 3, "classes": ["Background", "Person", "Sky"], "parents": None},
        {"name": "fine", "num_classes": 4, "classes": ["Background", "Left-arm", "Right-arm", "Sky"],
         "parents": [0, 1, 1, 2]},
    ]
    assert data["tree"] == [
        {"name": "Background", "level": 0, "index": {"coarse": 0, "fine": 0}, "ids": [0]},
        {"name": "Person", "level": 0, "index": {"coarse": 1}, "children": [
            {"name": "Left-arm", "level": 1, "index": {"fine": 1}, "ids": [1]},
            {"name": "Right-arm", "level": 1, "index": {"fine": 2}, "ids": [2]},
        ]},
        {"name": "Sky", "level": 0, "index": {"coarse": 2, "fine": 3}, "ids": [3, 4]},
    ]
    assert data["label_table"] == {
        "0": [0, 0], "1": [1, 1], "2": [1, 2], "3": [2, 3], "4": [2, 3], "9": [255, 255], "255": [255, 255],
    }
    assert data["flip_pairs"] == [["Left-arm", "Right-arm"]]


def test_show_json_of_lip_groups(capsys):
    assert main(["show", "lip", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [level["num_classes"] for level in data["levels"]] == [2, 5, 20]
    table = data["label_table"]
    head = {raw for raw in range(20) if table[str(raw)][1] == table["1"][1]}
    assert head == {1, 2, 4, 13}


def test_show_invalid_file_prints_one_line_per_problem(files, capsys):
    _, bad = files
    assert main(["show", str(bad)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [
        f"hierparse: error: {bad}: top level: unknown key 'colours' (allowed: classes, description, "
        "flip_pairs, ignore_ids, ignore_index, levels, name)",
        f"hierparse: error: {bad}: classes[0] (Background): raw id 300 is outside 0..255",
        f"hierparse: error: {bad}: classes[1] (Person).children[1] (Leg): raw id 1 is already claimed "
        "by 'Arm' at classes[1] (Person).children[0] (Arm)",
    ]


def test_show_missing_file(tmp_path, capsys):
    missing = tmp_path / "missing.yaml"
    assert main(["show", str(missing)]) == 2
    assert capsys.readouterr().err == f"hierparse: error: {missing}: hierarchy file not found\n"


# ---------------------------------------------------------------------- validate
def test_validate_builtins_ok(capsys):
    paths = sorted(str(p) for p in BUILTIN_DIR.glob("*.yaml"))
    assert main(["validate", *paths]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    lines = captured.out.splitlines()
    assert len(lines) == len(paths) == 7
    assert f"{BUILTIN_DIR / 'lip.yaml'}: ok (3 levels, classes per level [2, 5, 20])" in lines
    assert f"{BUILTIN_DIR / 'cityscapes.yaml'}: ok (2 levels, classes per level [7, 19])" in lines


def test_validate_reports_every_file(files, tmp_path, capsys):
    toy, bad = files
    missing = tmp_path / "missing.yaml"
    assert main(["validate", str(toy), str(bad), str(missing)]) == 2
    captured = capsys.readouterr()
    assert captured.out == f"{toy}: ok (2 levels, classes per level [3, 4])\n"
    err = captured.err.splitlines()
    assert len(err) == 4
    assert all(line.startswith(f"hierparse: error: {bad}: ") for line in err[:3])
    assert err[3] == f"hierparse: error: {missing}: hierarchy file not found"


# ---------------------------------------------------------------------- the real command
def test_command_validate_invalid_exits_2_without_traceback(files, tmp_path):
    toy, bad = files
    malformed = tmp_path / "malformed.yaml"
    malformed.write_text("name: m\nlevels: [a\n")
    result = run_cli("validate", str(toy), str(bad), str(malformed), str(tmp_path / "missing.yaml"))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    err = result.stderr.splitlines()
    assert len(err) == 5, result.stderr
    assert all(line.startswith("hierparse: error: ") for line in err)
    assert err[3].startswith(f"hierparse: error: {malformed}: line 3, column 1: malformed YAML")
    assert result.stdout == f"{toy}: ok (2 levels, classes per level [3, 4])\n"


def test_command_show_unknown_name_exits_2_with_one_line():
    result = run_cli("show", "no_such_hierarchy", script=SCRIPT.exists())
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith(
        "hierparse: error: no_such_hierarchy: neither a hierarchy file nor a built-in hierarchy"
    )
    assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.stderr


def test_command_show_json_exits_0():
    result = run_cli("show", "helen", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert [level["num_classes"] for level in data["levels"]] == [3, 6, 11]
    assert data["flip_pairs"] == [["Left-brow", "Right-brow"], ["Left-eye", "Right-eye"]]
