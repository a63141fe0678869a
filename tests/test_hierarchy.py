"""hierparse.hierarchy: the tree semantics on small hand-made files, and every validation error.

Expected classes, parents and tables are written out by hand for each toy tree; a hypothesis test
checks random trees against an independent recursive reference written here.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hierparse import Hierarchy, HierarchyError, load_hierarchy
from hierparse.hierarchy import BUILTIN_DIR, hierarchy_from_yaml, voc_palette

# An unbalanced three-level tree: Background and Sky are childless above the finest level and
# continue; Vehicle has one childless child (Bike) and one group (Car).
TOY = """\
name: toy
description: a small unbalanced tree
levels: [coarse, middle, fine]
ignore_ids: [9]
classes:
  - {name: Background, ids: [0, 5]}
  - name: Vehicle
    color: [10, 20, 30]
    children:
      - {name: Bike, ids: 1}
      - name: Car
        children:
          - {name: Car-left, ids: 2}
          - {name: Car-right, ids: 3}
  - {name: Sky, ids: 4, color: [0, 0, 255]}
flip_pairs:
  - [Car-left, Car-right]
"""


@pytest.fixture()
def toy() -> Hierarchy:
    return hierarchy_from_yaml(TOY, "toy.yaml")


def write(tmp_path: Path, text: str, name: str = "bad.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def problems_of(tmp_path: Path, text: str) -> tuple[str, list[str]]:
    path = write(tmp_path, text)
    with pytest.raises(HierarchyError) as info:
        load_hierarchy(path)
    assert str(info.value) == "\n".join(info.value.problems)
    return str(path), info.value.problems


# ---------------------------------------------------------------------- semantics
def test_levels_and_continuation(toy):
    assert toy.name == "toy" and toy.description == "a small unbalanced tree"
    assert toy.level_names == ["coarse", "middle", "fine"] and toy.num_levels == 3
    assert toy.class_names(0) == ["Background", "Vehicle", "Sky"]
    assert toy.class_names(1) == ["Background", "Bike", "Car", "Sky"]
    assert toy.class_names(2) == ["Background", "Bike", "Car-left", "Car-right", "Sky"]
    assert toy.num_classes == [3, 4, 5]
    assert toy.class_names(-1) == toy.class_names(2)


def test_parents(toy):
    assert toy.parents(1) == [0, 1, 1, 2]
    assert toy.parents(2) == [0, 1, 2, 2, 3]
    assert toy.parents(-1) == toy.parents(2)


def test_label_table(toy):
    table = toy.label_table()
    assert table.dtype == torch.int64 and tuple(table.shape) == (3, 256)
    expected = torch.full((3, 256), 255, dtype=torch.int64)
    #                raw: 0  1  2  3  4  5
    expected[:, :6] = torch.tensor([[0, 1, 1, 1, 2, 0],
                                    [0, 1, 2, 2, 3, 0],
                                    [0, 1, 2, 3, 4, 0]])
    assert torch.equal(table, expected)
    assert toy.ignore_ids == [9]
    assert toy.declared_ids() == [0, 1, 2, 3, 4, 5, 9, 255]


def test_class_order_is_first_appearance_not_raw_id():
    h = hierarchy_from_yaml(
        "name: o\nlevels: [a, b]\nclasses:\n"
        "  - {name: G, children: [{name: Z, ids: 7}, {name: Y, ids: 1}]}\n"
        "  - {name: X, ids: 0}\n",
    )
    assert h.class_names(0) == ["G", "X"]
    assert h.class_names(1) == ["Z", "Y", "X"]
    assert h.label_table()[:, [0, 1, 7]].tolist() == [[1, 0, 0], [2, 1, 0]]


def test_custom_ignore_index():
    h = hierarchy_from_yaml("name: c\nignore_index: 200\nlevels: [a]\nclasses:\n  - {name: A, ids: 3}\n")
    table = h.label_table()
    assert h.ignore_index == 200
    assert table[0, 3] == 0 and (table[0, [0, 1, 2, 4, 200, 255]] == 200).all()
    assert h.to_raw(torch.tensor([0, 200])).tolist() == [3, 200]


def test_colors_declared_and_default(toy):
    # Declared on Vehicle (coarse only: it has children) and on Sky (continued to every level);
    # the rest take the VOC palette entry of their index at that level.
    assert toy.colors(0) == [(0, 0, 0), (10, 20, 30), (0, 0, 255)]
    assert toy.colors(1) == [(0, 0, 0), (128, 0, 0), (0, 128, 0), (0, 0, 255)]
    assert toy.colors(2) == [(0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0), (0, 0, 255)]


def test_voc_palette():
    known = {0: (0, 0, 0), 1: (128, 0, 0), 2: (0, 128, 0), 7: (128, 128, 128), 8: (64, 0, 0),
             15: (192, 128, 128), 20: (0, 64, 128), 255: (224, 224, 192)}
    for index, rgb in known.items():
        assert voc_palette(index) == rgb


def test_flip_permutation(toy):
    expected = list(range(256))
    expected[2], expected[3] = 3, 2
    assert toy.flip_permutation().tolist() == expected


def test_flip_of_multi_id_leaves_pairs_ids_in_order():
    h = hierarchy_from_yaml(
        "name: f\nlevels: [a]\nclasses:\n  - {name: L, ids: [1, 2]}\n  - {name: R, ids: [6, 5]}\n"
        "flip_pairs: [[L, R]]\n"
    )
    perm = h.flip_permutation().tolist()
    assert perm[:7] == [0, 6, 5, 3, 4, 2, 1] and perm[7:] == list(range(7, 256))


def test_to_raw(toy):
    # Background covers ids [0, 5]: its first id is written.
    assert toy.fine_to_raw().tolist() == [0, 1, 2, 3, 4]
    out = toy.to_raw(torch.tensor([[4, 0, 255], [1, 2, 3]]))
    assert out.dtype == torch.uint8 and out.tolist() == [[4, 0, 255], [1, 2, 3]]
    arr = toy.to_raw(np.array([3, 255], dtype=np.int64))
    assert isinstance(arr, np.ndarray) and arr.dtype == np.uint8 and arr.tolist() == [3, 255]


@pytest.mark.parametrize("bad", [5, -1, 254])
def test_to_raw_rejects_indices_outside_the_fine_level(toy, bad):
    with pytest.raises(ValueError, match=rf"fine class index {bad} is outside 0\.\.4 of hierarchy 'toy'"):
        toy.to_raw(torch.tensor([0, bad]))


def test_levels_out_of_range(toy):
    with pytest.raises(ValueError, match="has 3 levels; level 3 does not exist"):
        toy.class_names(3)
    with pytest.raises(ValueError, match="level -4 does not exist"):
        toy.colors(-4)
    with pytest.raises(ValueError, match="coarsest level"):
        toy.parents(0)


def test_round_trip_and_equality(toy, tmp_path):
    again = hierarchy_from_yaml(toy.to_yaml())
    assert again == toy
    assert torch.equal(again.label_table(), toy.label_table())
    assert [again.colors(level) for level in range(3)] == [toy.colors(level) for level in range(3)]
    assert again.flip_pairs == toy.flip_pairs == [("Car-left", "Car-right")]
    toy.save(tmp_path / "saved.yaml")
    assert load_hierarchy(tmp_path / "saved.yaml") == toy
    changed = hierarchy_from_yaml(TOY.replace("color: [10, 20, 30]", "color: [10, 20, 31]"))
    assert changed != toy
    assert hierarchy_from_yaml(TOY.replace("ignore_ids: [9]", "ignore_ids: [8]")) != toy
    assert toy != "toy"


def test_load_by_path_name_or_instance(toy, tmp_path):
    yml = write(tmp_path, TOY, "toy.yml")
    assert load_hierarchy(yml) == toy
    assert load_hierarchy(str(yml)) == toy
    assert load_hierarchy(yml).source == str(yml)
    assert load_hierarchy(toy) is toy
    lip = load_hierarchy("lip")
    assert lip.source == str(BUILTIN_DIR / "lip.yaml")
    assert load_hierarchy(BUILTIN_DIR / "lip.yaml") == lip


def test_missing_file_and_unknown_name(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(FileNotFoundError, match=f"^{missing}: hierarchy file not found$"):
        load_hierarchy(missing)
    with pytest.raises(FileNotFoundError) as info:
        load_hierarchy("no_such_tree")
    message = str(info.value)
    assert message.startswith("no_such_tree: neither a hierarchy file nor a built-in hierarchy")
    assert "lip" in message and "cityscapes" in message and "\n" not in message
    with pytest.raises(FileNotFoundError, match="cannot read hierarchy file"):
        load_hierarchy(tmp_path)  # a directory
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00name")
    with pytest.raises(FileNotFoundError, match="binary.yaml: cannot read hierarchy file"):
        load_hierarchy(binary)


# ---------------------------------------------------------------------- validation errors
BASE = """\
name: toy
levels: [coarse, fine]
classes:
  - {name: Background, ids: 0}
  - name: Person
    children:
      - {name: Left-arm, ids: 1}
      - {name: Right-arm, ids: 2}
      - {name: Torso, ids: [3, 4]}
flip_pairs: [[Left-arm, Right-arm]]
"""
P = "classes[1] (Person)"
LEFT = f"{P}.children[0] (Left-arm)"
TORSO = f"{P}.children[2] (Torso)"


def test_base_is_valid():
    h = hierarchy_from_yaml(BASE)
    assert h.class_names(1) == ["Background", "Left-arm", "Right-arm", "Torso"]


# (id, old text in BASE, new text, [(place, message fragment containing the value)] in order)
CASES = [
    ("top-level-unknown-key", "name: toy\n", "name: toy\ncolour_map: voc\n",
     [("top level", "unknown key 'colour_map'")]),
    ("class-unknown-key", "{name: Left-arm, ids: 1}", "{name: Left-arm, id: 1}",
     [(LEFT, "unknown key 'id' (allowed: children, color, ids, name)"),
      (LEFT, "a class needs 'ids' (a leaf) or 'children' (a group)")]),
    ("duplicate-class-name", "{name: Torso, ids: [3, 4]}", "{name: Left-arm, ids: [3, 4]}",
     [(f"{P}.children[2] (Left-arm)", f"duplicate class name 'Left-arm' (first used at {LEFT})")]),
    ("group-and-leaf-share-a-name", "name: Person", "name: Torso",
     [(f"classes[1] (Torso).children[2] (Torso)", "duplicate class name 'Torso' (first used at classes[1] (Torso))")]),
    ("id-claimed-twice", "{name: Right-arm, ids: 2}", "{name: Right-arm, ids: 1}",
     [(f"{P}.children[1] (Right-arm)", f"raw id 1 is already claimed by 'Left-arm' at {LEFT}")]),
    ("id-listed-twice-in-a-leaf", "ids: [3, 4]", "ids: [3, 3]", [(TORSO, "raw id 3 is listed twice")]),
    ("id-in-ignore-ids", "name: toy\n", "name: toy\nignore_ids: [4]\n",
     [(TORSO, "raw id 4 is also listed in ignore_ids")]),
    ("id-equals-ignore-index", "ids: [3, 4]", "ids: [3, 255]", [(TORSO, "raw id 255 equals ignore_index")]),
    ("id-above-255", "ids: [3, 4]", "ids: [3, 256]", [(TORSO, "raw id 256 is outside 0..255")]),
    ("id-negative", "{name: Left-arm, ids: 1}", "{name: Left-arm, ids: -1}", [(LEFT, "raw id -1 is outside 0..255")]),
    ("ignore-id-outside", "name: toy\n", "name: toy\nignore_ids: [300]\n", [("ignore_ids", "raw id 300 is outside 0..255")]),
    ("id-string", "ids: [3, 4]", "ids: [3, '4']", [(TORSO, "raw id '4' is not an integer")]),
    ("id-float", "ids: [3, 4]", "ids: [3, 4.5]", [(TORSO, "raw id 4.5 is not an integer")]),
    ("id-bool", "{name: Left-arm, ids: 1}", "{name: Left-arm, ids: true}", [(LEFT, "raw id True is not an integer")]),
    ("id-null", "{name: Left-arm, ids: 1}", "{name: Left-arm, ids: }", [(LEFT, "raw id None is not an integer")]),
    ("ignore-id-string", "name: toy\n", "name: toy\nignore_ids: [x]\n", [("ignore_ids", "raw id 'x' is not an integer")]),
    ("tree-deeper-than-levels", "levels: [coarse, fine]", "levels: [coarse]",
     [(LEFT, "deeper than 'levels': this class would be level 2, but 'levels' names only 1"),
      (f"{P}.children[1] (Right-arm)", "would be level 2"),
      (TORSO, "would be level 2")]),
    ("empty-group", "{name: Torso, ids: [3, 4]}", "{name: Torso, children: []}",
     [(TORSO, "empty group: 'children' must list at least one class, got []")]),
    ("null-group", "{name: Torso, ids: [3, 4]}", "{name: Torso, children: }",
     [(TORSO, "empty group: 'children' must list at least one class, got None")]),
    ("leaf-with-empty-ids", "ids: [3, 4]", "ids: []", [(TORSO, "'ids' must list at least one raw id")]),
    ("class-without-ids-or-children", "{name: Torso, ids: [3, 4]}", "{name: Torso}",
     [(TORSO, "a class needs 'ids' (a leaf) or 'children' (a group)")]),
    ("group-id-claimed-by-a-leaf", "name: Person\n", "name: Person\n    ids: 1\n",
     [(LEFT, f"raw id 1 is already claimed by 'Person' at {P}")]),
    ("class-not-a-mapping", "{name: Torso, ids: [3, 4]}", "Torso",
     [(f"{P}.children[2]", "expected a class mapping with a name, got 'Torso'")]),
    ("class-without-name", "{name: Torso, ids: [3, 4]}", "{ids: [3, 4]}",
     [(f"{P}.children[2]", "expected a non-empty class name, got None")]),
    ("class-name-not-a-string", "{name: Torso, ids: [3, 4]}", "{name: 7, ids: [3, 4]}",
     [(f"{P}.children[2]", "expected a non-empty class name, got 7")]),
    ("flip-unknown-class", "[[Left-arm, Right-arm]]", "[[Left-arm, Right-leg]]",
     [("flip_pairs[0]", "unknown class 'Right-leg'")]),
    ("flip-group", "[[Left-arm, Right-arm]]", "[[Left-arm, Right-arm], [Background, Person]]",
     [("flip_pairs[1]", "class 'Person' is a group, not a leaf")]),
    ("flip-different-id-counts", "[[Left-arm, Right-arm]]", "[[Left-arm, Torso]]",
     [("flip_pairs[0]", "'Left-arm' and 'Torso' cover different numbers of raw ids (1 and 2)")]),
    ("flip-class-in-two-pairs", "[[Left-arm, Right-arm]]", "[[Left-arm, Right-arm], [Background, Left-arm]]",
     [("flip_pairs[1]", "class 'Left-arm' is already paired in flip_pairs[0]")]),
    ("flip-with-itself", "[[Left-arm, Right-arm]]", "[[Left-arm, Left-arm]]",
     [("flip_pairs[0]", "class 'Left-arm' is paired with itself")]),
    ("flip-not-a-pair", "[[Left-arm, Right-arm]]", "[[Left-arm, Right-arm, Torso]]",
     [("flip_pairs[0]", "expected [left, right] class names, got ['Left-arm', 'Right-arm', 'Torso']")]),
    ("flip-not-a-list", "[[Left-arm, Right-arm]]", "Left-arm",
     [("flip_pairs", "expected a list of [left, right] pairs, got 'Left-arm'")]),
    ("color-two-values", "{name: Left-arm, ids: 1}", "{name: Left-arm, ids: 1, color: [1, 2]}",
     [(LEFT, "color must be [R, G, B] with integers 0..255, got [1, 2]")]),
    ("color-above-255", "{name: Left-arm, ids: 1}", "{name: Left-arm, ids: 1, color: [0, 0, 256]}",
     [(LEFT, "got [0, 0, 256]")]),
    ("color-name", "{name: Left-arm, ids: 1}", "{name: Left-arm, ids: 1, color: red}", [(LEFT, "got 'red'")]),
    ("color-float", "{name: Left-arm, ids: 1}", "{name: Left-arm, ids: 1, color: [1.0, 2, 3]}",
     [(LEFT, "got [1.0, 2, 3]")]),
    ("ignore-index-collides", "name: toy\n", "name: toy\nignore_index: 3\n",
     [(TORSO, "raw id 3 equals ignore_index"), ("ignore_index", "3 collides with class index 3")]),
    ("ignore-index-not-int", "name: toy\n", "name: toy\nignore_index: none\n",
     [("ignore_index", "expected an integer, got 'none'")]),
    ("ignore-index-negative", "name: toy\n", "name: toy\nignore_index: -100\n",
     [("ignore_index", "-100 is outside 0..255")]),
    ("missing-name", "name: toy\n", "", [("name", "expected a non-empty string, got None")]),
    ("empty-name", "name: toy\n", "name: ''\n", [("name", "expected a non-empty string, got ''")]),
    ("missing-levels", "levels: [coarse, fine]\n", "", [("levels", "expected a non-empty list of level names, got None")]),
    ("empty-levels", "levels: [coarse, fine]", "levels: []", [("levels", "got []")]),
    ("levels-not-names", "levels: [coarse, fine]", "levels: [coarse, 2]", [("levels", "got ['coarse', 2]")]),
    ("duplicate-level-name", "levels: [coarse, fine]", "levels: [coarse, coarse]",
     [("levels[1]", "duplicate level name 'coarse'")]),
    ("missing-classes", BASE[BASE.index("classes:"):BASE.index("flip_pairs")], "",
     [("classes", "expected a non-empty list of classes, got None"),
      ("flip_pairs[0]", "unknown class 'Left-arm'"), ("flip_pairs[0]", "unknown class 'Right-arm'")]),
    ("empty-classes", BASE[BASE.index("classes:"):BASE.index("flip_pairs")], "classes: []\n",
     [("classes", "got []"), ("flip_pairs[0]", "unknown class 'Left-arm'"),
      ("flip_pairs[0]", "unknown class 'Right-arm'")]),
]


@pytest.mark.parametrize("old,new,expected", [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_validation_error(tmp_path, old, new, expected):
    assert old in BASE
    path, problems = problems_of(tmp_path, BASE.replace(old, new, 1))
    assert len(problems) == len(expected), problems
    for problem, (place, fragment) in zip(problems, expected):
        assert "\n" not in problem
        assert problem.startswith(f"{path}: {place}: "), problem
        assert fragment in problem, problem


@pytest.mark.parametrize(
    "text,fragment",
    [
        ("name: toy\nlevels: [coarse\n", "line 3, column 1: malformed YAML: expected ',' or ']'"),
        ("name: toy\n\tlevels: [a]\n", "line 2, column 1: malformed YAML: found character '\\t'"),
        ("name: toy\nlevels: [a]\nclasses:\n  - {name: A, ids: 1, ids: 2}\n",
         "line 4, column 23: malformed YAML: duplicate key 'ids'"),
        ("name: toy\nname: again\n", "line 2, column 1: malformed YAML: duplicate key 'name'"),
        ("- name: toy\n", "top level: expected a mapping of fields, got list"),
        ("", "top level: expected a mapping of fields, got NoneType"),
    ],
    ids=["unclosed-list", "tab", "duplicate-class-key", "duplicate-top-key", "a-list", "empty-file"],
)
def test_malformed_yaml(tmp_path, text, fragment):
    path, problems = problems_of(tmp_path, text)
    assert len(problems) == 1 and problems[0].startswith(f"{path}: {fragment}"), problems


def test_ignore_index_colliding_with_a_class_index_only(tmp_path):
    text = BASE.replace("ids: [3, 4]", "ids: [7, 8]").replace("name: toy\n", "name: toy\nignore_index: 3\n")
    path, problems = problems_of(tmp_path, text)
    assert problems == [f"{path}: ignore_index: 3 collides with class index 3"]
    # The finest level has 4 classes (0..3): 4 is free.
    assert hierarchy_from_yaml(text.replace("ignore_index: 3", "ignore_index: 4")).ignore_index == 4


def test_yaml_merge_keys_still_work():
    h = hierarchy_from_yaml(
        "name: m\nlevels: [a]\nclasses:\n  - &a {name: A, ids: 1, color: [1, 2, 3]}\n"
        "  - <<: *a\n    name: B\n    ids: 2\n"
    )
    assert h.class_names(0) == ["A", "B"] and h.colors(0) == [(1, 2, 3), (1, 2, 3)]


def test_several_problems_are_reported_together(tmp_path):
    text = BASE.replace("name: toy\n", "name: toy\nextra: 1\n").replace("ids: [3, 4]", "ids: [3, 999]")
    text = text.replace("{name: Right-arm, ids: 2}", "{name: Left-arm, ids: 2}").replace("[[Left-arm, Right-arm]]", "[[Left-arm, Nope]]")
    path, problems = problems_of(tmp_path, text)
    assert problems == [
        f"{path}: top level: unknown key 'extra' (allowed: classes, description, flip_pairs, ignore_ids, "
        "ignore_index, levels, name)",
        f"{path}: {TORSO}: raw id 999 is outside 0..255",
        f"{path}: {P}.children[1] (Left-arm): duplicate class name 'Left-arm' (first used at {LEFT})",
        f"{path}: flip_pairs[0]: unknown class 'Nope'",
    ]


def test_strings_name_their_source():
    with pytest.raises(HierarchyError, match="^<string>: top level"):
        hierarchy_from_yaml("[]")
    with pytest.raises(HierarchyError, match="^mine: top level"):
        hierarchy_from_yaml("[]", "mine")


# ---------------------------------------------------------------------- random trees
@st.composite
def trees(draw):
    """A random valid tree as plain data, with distinct names and disjoint raw ids."""
    num_levels = draw(st.integers(1, 4))
    ids = iter(draw(st.permutations(range(255))))  # 255 is ignore_index
    counter = iter(range(10_000))

    def node(depth):
        name = f"c{next(counter)}"
        if depth + 1 < num_levels and draw(st.booleans()):
            return {"name": name, "children": [node(depth + 1) for _ in range(draw(st.integers(1, 3)))]}
        return {"name": name, "ids": [next(ids) for _ in range(draw(st.integers(1, 3)))]}

    roots = [node(0) for _ in range(draw(st.integers(1, 4)))]
    return {"name": "random", "levels": [f"l{i}" for i in range(num_levels)], "classes": roots}


def reference(data):
    """Classes per level (name, raw ids) and parent names, by plain recursion over the data."""
    levels = len(data["levels"])

    def ids_of(item):
        return item["ids"] if "ids" in item else [i for c in item["children"] for i in ids_of(c)]

    def at(item, depth, level, parent):
        if depth == level or "ids" in item:
            return [(item["name"], sorted(ids_of(item)), parent)]
        return [entry for c in item["children"] for entry in at(c, depth + 1, level, item["name"])]

    result = []
    for level in range(levels):
        result.append([entry for root in data["classes"] for entry in at(root, 0, level, None)])
    return result


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(trees())
def test_random_trees_match_the_reference(data):
    h = hierarchy_from_yaml(yaml.safe_dump(data))
    expected = reference(data)
    table = h.label_table()
    for level, classes in enumerate(expected):
        assert h.class_names(level) == [name for name, _, _ in classes]
        for index, (_, ids, _) in enumerate(classes):
            assert (table[level, ids] == index).all()
        covered = sorted(i for _, ids, _ in classes for i in ids)
        uncovered = sorted(set(range(256)) - set(covered))
        assert (table[level, uncovered] == 255).all()
        if level:
            coarse = h.class_names(level - 1)
            # A class's parent is the class one level up, or itself when it is continued.
            want = [coarse.index(parent if name not in coarse else name) for name, _, parent in classes]
            assert h.parents(level) == want
    assert hierarchy_from_yaml(h.to_yaml()) == h


# ---------------------------------------------------------------------- the schema document
def test_readme_example_is_valid_and_as_described():
    readme = (BUILTIN_DIR / "README.md").read_text()
    start = readme.index("```yaml\n") + len("```yaml\n")
    h = hierarchy_from_yaml(readme[start : readme.index("```", start)], "README example")
    assert h.class_names(0) == ["sky", "ground", "things"]
    assert h.class_names(1) == ["sky", "road", "sidewalk", "person", "mirror"]
    assert h.class_names(2) == ["sky", "road", "sidewalk", "person", "left-mirror", "right-mirror"]
    assert h.parents(1) == [0, 1, 1, 2, 2] and h.parents(2) == [0, 1, 2, 3, 4, 4]
    table = h.label_table()
    assert table[:, :8].T.tolist() == [
        [255, 255, 255], [0, 0, 0], [1, 1, 1], [1, 2, 2], [2, 3, 3], [2, 3, 3], [2, 4, 4], [2, 4, 5],
    ]
    assert h.declared_ids() == [0, 1, 2, 3, 4, 5, 6, 7, 255]
    assert h.colors(0)[0] == h.colors(2)[0] == (70, 130, 180) and h.colors(0)[2] == (220, 20, 60)
    assert h.flip_permutation()[:9].tolist() == [0, 1, 2, 3, 4, 5, 7, 6, 8]
    assert h.to_raw(torch.tensor([3])).tolist() == [4]


# ---------------------------------------------------------------------- groups with raw ids (coarse labels)
COARSE = """\
name: coarse
levels: [object, part, detail]
classes:
  - {name: Background, ids: 0}
  - name: Person
    ids: 10
    children:
      - name: Upper
        ids: 11
        children:
          - {name: Left-arm, ids: 1}
          - {name: Right-arm, ids: 2}
          - {name: Chest, ids: 3}
      - {name: Legs, ids: 4}
  - name: Things
    ids: 12
    children:
      - {name: Left-glove, ids: 5}
      - {name: Hat, ids: 6}
  - {name: Right-glove, ids: 7}
flip_pairs: [[Left-arm, Right-arm]]
"""


def test_group_ids_are_classes_at_and_above_their_level_and_sets_below():
    h = hierarchy_from_yaml(COARSE)
    assert h.class_names(1) == ["Background", "Upper", "Legs", "Left-glove", "Hat", "Right-glove"]
    assert h.class_names(2) == ["Background", "Left-arm", "Right-arm", "Chest", "Legs", "Left-glove", "Hat",
                                "Right-glove"]
    table, members = h.label_table(), h.set_members()
    # Person (10): class 1 at level 0, set {Upper, Legs} at level 1, set {arms, chest, legs} at level 2
    assert table[:, 10].tolist() == [1, 6 + 0, 8 + 0]
    assert table[:, 11].tolist() == [1, 1, 8 + 1]  # Upper: exact at its own level and above
    assert table[:, 12].tolist() == [2, 6 + 1, 8 + 2]
    assert table[:, 3].tolist() == [1, 1, 3]
    assert members.shape == (3, 3, 8)
    assert members[0].sum() == 0  # no set at the coarsest level
    assert members[1, 0].nonzero().flatten().tolist() == [1, 2]
    assert members[1, 1].nonzero().flatten().tolist() == [3, 4]
    assert members[2, 0].nonzero().flatten().tolist() == [1, 2, 3, 4]
    assert members[2, 1].nonzero().flatten().tolist() == [1, 2, 3]
    assert members[2, 2].nonzero().flatten().tolist() == [5, 6]
    exact = h.exact_table()
    assert exact[:, 10].tolist() == [1, 255, 255] and exact[:, 11].tolist() == [1, 1, 255]
    assert torch.equal(exact[:, :8], table[:, :8])
    assert h.declared_ids() == [0, 1, 2, 3, 4, 5, 6, 7, 10, 11, 12, 255]


def test_group_ids_survive_a_round_trip_and_flip_onto_their_mirror():
    h = hierarchy_from_yaml(COARSE)
    again = hierarchy_from_yaml(h.to_yaml())
    assert again == h and torch.equal(again.label_table(), h.label_table())
    perm = h.flip_permutation()
    assert perm[[1, 2, 10, 11, 12]].tolist() == [2, 1, 10, 11, 12]  # symmetric groups map to themselves


def test_coarsening_relabels_below_a_level_with_the_group_id():
    h = hierarchy_from_yaml(COARSE)
    part = h.coarsening("part")
    assert part[[0, 1, 2, 3, 4, 5, 10, 11, 12, 200]].tolist() == [0, 11, 11, 11, 4, 5, 10, 11, 12, 200]
    obj = h.coarsening(0)
    assert obj[[1, 4, 11, 5, 6, 7]].tolist() == [10, 10, 10, 12, 12, 7]
    with pytest.raises(ValueError, match="no level 'region'"):
        h.coarsening("region")
    no_ids = COARSE.replace("        ids: 11\n", "")
    with pytest.raises(ValueError, match="group 'Upper' at level 'part' has no raw ids"):
        hierarchy_from_yaml(no_ids).coarsening("part")


@pytest.mark.parametrize("things, message", [
    ("[{name: Left-glove, ids: 5}, {name: Hat, ids: 6}]", "this group has raw ids but no mirror image"),
    ("[{name: Left-glove, ids: 5}]", "this group and its mirror image 'Right-glove' cover different numbers of raw ids"),
])
def test_a_group_with_ids_needs_a_mirror_image(things, message):
    text = COARSE.replace("ids: 12\n", "ids: [12, 13]\n").replace(
        "    children:\n      - {name: Left-glove, ids: 5}\n      - {name: Hat, ids: 6}\n", f"    children: {things}\n")
    text = text.replace("[[Left-arm, Right-arm]]", "[[Left-arm, Right-arm], [Left-glove, Right-glove]]")
    with pytest.raises(HierarchyError, match=f"classes\\[2\\] \\(Things\\): {message}"):
        hierarchy_from_yaml(text)
