"""The built-in hierarchies agree with issue 2's groupings and with the official Cityscapes table.

Every expectation here is written out by hand from the issue text (class names by raw id, groups
by raw id, flip pairs) or copied from cityscapesScripts' ``helpers/labels.py``; none is read from
the YAML files under test.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hierparse import load_hierarchy
from hierparse.hierarchy import builtin_names, hierarchy_from_yaml

BUILTINS = ["atr", "celebamask_hq", "cihp", "cityscapes", "helen", "lip", "pascal_person_part"]

# ---------------------------------------------------------------------- class names by raw id
LIP_NAMES = [
    "Background", "Hat", "Hair", "Glove", "Sunglasses", "Upper-clothes", "Dress", "Coat", "Socks",
    "Pants", "Jumpsuits", "Scarf", "Skirt", "Face", "Left-arm", "Right-arm", "Left-leg",
    "Right-leg", "Left-shoe", "Right-shoe",
]
CIHP_NAMES = LIP_NAMES[:10] + ["Torso-skin"] + LIP_NAMES[11:]
ATR_NAMES = [
    "Background", "Hat", "Hair", "Sunglasses", "Upper-clothes", "Skirt", "Pants", "Dress", "Belt",
    "Left-shoe", "Right-shoe", "Face", "Left-leg", "Right-leg", "Left-arm", "Right-arm", "Bag",
    "Scarf",
]
HELEN_NAMES = [
    "Background", "Skin", "Left-brow", "Right-brow", "Left-eye", "Right-eye", "Nose", "Upper-lip",
    "Inner-mouth", "Lower-lip", "Hair",
]
# face-parsing.PyTorch's prepropess_data.py: 0 background, then its attribute list, 1..18
CELEBAMASK_ATTRIBUTES = ["skin", "l_brow", "r_brow", "l_eye", "r_eye", "eye_g", "l_ear", "r_ear", "ear_r", "nose",
                         "mouth", "u_lip", "l_lip", "neck", "neck_l", "cloth", "hair", "hat"]
CELEBAMASK_NAMES = ["Background", "Skin", "Left-brow", "Right-brow", "Left-eye", "Right-eye", "Eyeglasses", "Left-ear",
                    "Right-ear", "Earring", "Nose", "Inner-mouth", "Upper-lip", "Lower-lip", "Neck", "Necklace", "Cloth",
                    "Hair", "Hat"]
PPP_NAMES = [
    "Background", "Head", "Torso", "Upper Arms", "Lower Arms", "Upper Legs", "Lower Legs",
]

# ---------------------------------------------------------------------- groups by raw id, per level
# Each level lists its classes in index order, each class as the set of raw ids it covers.
LIP_REGIONS = [{0}, {1, 2, 4, 13}, {5, 6, 7, 10, 11, 12}, {3, 14, 15}, {8, 9, 16, 17, 18, 19}]
LIP_GROUPS = [
    [{0}, set(range(1, 20))],
    LIP_REGIONS,
    # Finest level: the regions in the order above, raw ids ascending inside each region.
    [{raw} for region in LIP_REGIONS for raw in sorted(region)],
]
ATR_MIDDLE = [{0}, {1, 2}, {3, 11}, {4}, {14, 15}, {5, 6, 7, 8}, {9, 10}, {12, 13}, {16, 17}]
ATR_GROUPS = [
    [{0}, {1, 2, 3, 11}, {4, 14, 15}, {5, 6, 7, 8, 9, 10, 12, 13}, {16, 17}],
    ATR_MIDDLE,
    [{raw} for group in ATR_MIDDLE for raw in sorted(group)],
]
HELEN_MIDDLE = [{0}, {1}, {2, 3, 4, 5}, {6}, {7, 8, 9}, {10}]
HELEN_GROUPS = [
    [{0}, set(range(1, 10)), {10}],
    HELEN_MIDDLE,
    [{raw} for group in HELEN_MIDDLE for raw in sorted(group)],
]
CELEBAMASK_MIDDLE = [{0}, {1, 2, 3, 4, 5, 6, 10}, {11, 12, 13}, {7, 8, 9}, {17}, {18}, {14}, {15}, {16}]
CELEBAMASK_GROUPS = [
    [{0}, {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 17, 18}, {14, 15, 16}],
    CELEBAMASK_MIDDLE,
    [{raw} for group in CELEBAMASK_MIDDLE for raw in sorted(group)],
]
PPP_GROUPS = [
    [{0}, {1, 2, 3, 4}, {5, 6}],
    [{0}, {1, 2}, {3, 4}, {5}, {6}],
    [{raw} for raw in range(7)],
]

# (names by raw id, groups per level, flip pairs by raw id)
HUMAN = {
    "lip": (LIP_NAMES, LIP_GROUPS, [(14, 15), (16, 17), (18, 19)]),
    "cihp": (CIHP_NAMES, LIP_GROUPS, [(14, 15), (16, 17), (18, 19)]),
    "atr": (ATR_NAMES, ATR_GROUPS, [(14, 15), (12, 13), (9, 10)]),
    "helen": (HELEN_NAMES, HELEN_GROUPS, [(2, 3), (4, 5)]),
    "celebamask_hq": (CELEBAMASK_NAMES, CELEBAMASK_GROUPS, [(2, 3), (4, 5), (7, 8)]),
    "pascal_person_part": (PPP_NAMES, PPP_GROUPS, []),
}

# ---------------------------------------------------------------------- official Cityscapes table
# cityscapesScripts, cityscapesscripts/helpers/labels.py, ids 0-33:
#   (name, id, trainId, category, catId, ignoreInEval, color)
CITYSCAPES_LABELS = [
    ("unlabeled",             0, 255, "void",         0, True,  (0, 0, 0)),
    ("ego vehicle",           1, 255, "void",         0, True,  (0, 0, 0)),
    ("rectification border",  2, 255, "void",         0, True,  (0, 0, 0)),
    ("out of roi",            3, 255, "void",         0, True,  (0, 0, 0)),
    ("static",                4, 255, "void",         0, True,  (0, 0, 0)),
    ("dynamic",               5, 255, "void",         0, True,  (111, 74, 0)),
    ("ground",                6, 255, "void",         0, True,  (81, 0, 81)),
    ("road",                  7,   0, "flat",         1, False, (128, 64, 128)),
    ("sidewalk",              8,   1, "flat",         1, False, (244, 35, 232)),
    ("parking",               9, 255, "flat",         1, True,  (250, 170, 160)),
    ("rail track",           10, 255, "flat",         1, True,  (230, 150, 140)),
    ("building",             11,   2, "construction", 2, False, (70, 70, 70)),
    ("wall",                 12,   3, "construction", 2, False, (102, 102, 156)),
    ("fence",                13,   4, "construction", 2, False, (190, 153, 153)),
    ("guard rail",           14, 255, "construction", 2, True,  (180, 165, 180)),
    ("bridge",               15, 255, "construction", 2, True,  (150, 100, 100)),
    ("tunnel",               16, 255, "construction", 2, True,  (150, 120, 90)),
    ("pole",                 17,   5, "object",       3, False, (153, 153, 153)),
    ("polegroup",            18, 255, "object",       3, True,  (153, 153, 153)),
    ("traffic light",        19,   6, "object",       3, False, (250, 170, 30)),
    ("traffic sign",         20,   7, "object",       3, False, (220, 220, 0)),
    ("vegetation",           21,   8, "nature",       4, False, (107, 142, 35)),
    ("terrain",              22,   9, "nature",       4, False, (152, 251, 152)),
    ("sky",                  23,  10, "sky",          5, False, (70, 130, 180)),
    ("person",               24,  11, "human",        6, False, (220, 20, 60)),
    ("rider",                25,  12, "human",        6, False, (255, 0, 0)),
    ("car",                  26,  13, "vehicle",      7, False, (0, 0, 142)),
    ("truck",                27,  14, "vehicle",      7, False, (0, 0, 70)),
    ("bus",                  28,  15, "vehicle",      7, False, (0, 60, 100)),
    ("caravan",              29, 255, "vehicle",      7, True,  (0, 0, 90)),
    ("trailer",              30, 255, "vehicle",      7, True,  (0, 0, 110)),
    ("train",                31,  16, "vehicle",      7, False, (0, 80, 100)),
    ("motorcycle",           32,  17, "vehicle",      7, False, (0, 0, 230)),
    ("bicycle",              33,  18, "vehicle",      7, False, (119, 11, 32)),
]
CITYSCAPES_CATEGORIES = ["flat", "construction", "object", "nature", "sky", "human", "vehicle"]

NUM_CLASSES = {
    "lip": [2, 5, 20],
    "cihp": [2, 5, 20],
    "atr": [5, 9, 18],
    "helen": [3, 6, 11],
    "celebamask_hq": [3, 9, 19],
    "pascal_person_part": [3, 5, 7],
    "cityscapes": [7, 19],
}
CLASS_RAW_IDS = {
    "lip": set(range(20)),
    "cihp": set(range(20)),
    "atr": set(range(18)),
    "helen": set(range(11)),
    "celebamask_hq": set(range(19)),
    "pascal_person_part": set(range(7)),
    "cityscapes": {label[1] for label in CITYSCAPES_LABELS if not label[5]},
}
FLIPS = {name: spec[2] for name, spec in HUMAN.items()} | {"cityscapes": []}

# The PASCAL VOC colour map (bitwise-interleaved index), first entries, as published with VOC.
VOC_COLORS = [
    (0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0), (0, 0, 128), (128, 0, 128), (0, 128, 128),
    (128, 128, 128), (64, 0, 0), (192, 0, 0), (64, 128, 0), (192, 128, 0), (64, 0, 128),
    (192, 0, 128), (64, 128, 128), (192, 128, 128), (0, 64, 0), (128, 64, 0), (0, 192, 0),
    (128, 192, 0),
]


def normalise(name: str) -> str:
    return name.lower().replace("-", " ")


@pytest.fixture(scope="module", params=BUILTINS)
def builtin(request):
    return request.param, load_hierarchy(request.param)


def test_the_seven_builtins_are_shipped():
    assert builtin_names() == BUILTINS


def test_class_counts_per_level(builtin):
    name, h = builtin
    assert h.num_classes == NUM_CLASSES[name]
    assert h.num_levels == len(NUM_CLASSES[name]) == len(h.level_names)
    assert h.ignore_index == 255
    for level, count in enumerate(NUM_CLASSES[name]):
        assert len(h.class_names(level)) == count
        assert len(set(h.class_names(level))) == count


# Raw ids of groups (coarse labels): not in the datasets' files, declared for coarsely labelled data.
GROUP_RAW_IDS = {"lip": {20, 21, 22, 23, 24}, "cihp": {20, 21, 22, 23, 24}}


def test_table_shape_dtype_and_ignored_ids(builtin):
    name, h = builtin
    table = h.label_table()
    assert table.dtype == torch.int64
    assert tuple(table.shape) == (len(NUM_CLASSES[name]), 256)
    group_ids = {i for root in h.roots for node in root.walk() if node.children for i in node.ids}
    assert group_ids == GROUP_RAW_IDS.get(name, set())
    ignored = sorted(set(range(256)) - CLASS_RAW_IDS[name] - group_ids)
    assert (table[:, ignored] == 255).all()
    for level, count in enumerate(NUM_CLASSES[name]):
        used = table[level, sorted(CLASS_RAW_IDS[name])]
        assert sorted(set(used.tolist())) == list(range(count)), "every class index is reachable"


@pytest.mark.parametrize("name", sorted(HUMAN))
def test_groups_per_level_match_the_issue(name):
    names_by_raw, groups, _ = HUMAN[name]
    h = load_hierarchy(name)
    table = h.label_table()
    for level, expected in enumerate(groups):
        got = [set() for _ in range(h.num_classes[level])]
        for raw in range(len(names_by_raw)):
            got[table[level, raw]].add(raw)
        assert got == expected, f"{name} level {level}"


@pytest.mark.parametrize("name", sorted(HUMAN))
def test_fine_class_names_by_raw_id(name):
    names_by_raw, _, _ = HUMAN[name]
    h = load_hierarchy(name)
    table = h.label_table()
    fine = h.class_names(-1)
    assert [normalise(fine[table[-1, raw]]) for raw in range(len(names_by_raw))] == [
        normalise(n) for n in names_by_raw
    ]


def test_cihp_differs_from_lip_only_at_raw_id_10():
    lip, cihp = load_hierarchy("lip"), load_hierarchy("cihp")
    assert torch.equal(lip.label_table(), cihp.label_table())
    lip_fine, cihp_fine = lip.class_names(-1), cihp.class_names(-1)
    index = cihp.label_table()[-1, 10]
    assert cihp_fine[index] == "Torso-skin" and lip_fine[index] == "Jumpsuits"
    assert [a for a, b in zip(lip_fine, cihp_fine) if a != b] == ["Jumpsuits"]
    # Torso-skin belongs to the torso region {5, 6, 7, 10, 11, 12}.
    assert cihp.label_table()[1, 10] == cihp.label_table()[1, 5]


def test_parents_agree_with_the_table(builtin):
    name, h = builtin
    table = h.label_table()
    for level in range(1, h.num_levels):
        parents = h.parents(level)
        assert len(parents) == h.num_classes[level]
        for raw in sorted(CLASS_RAW_IDS[name]):
            assert table[level - 1, raw] == parents[table[level, raw]], (name, level, raw)


def test_yaml_round_trip(builtin):
    _, h = builtin
    again = hierarchy_from_yaml(h.to_yaml(), "round-trip")
    assert again == h
    # Equality compares to_dict(); also compare what is derived, so a lossy to_dict would show.
    assert torch.equal(again.label_table(), h.label_table())
    assert torch.equal(again.flip_permutation(), h.flip_permutation())
    assert again.level_names == h.level_names
    assert again.ignore_ids == h.ignore_ids and again.description == h.description
    for level in range(h.num_levels):
        assert again.class_names(level) == h.class_names(level)
        assert again.colors(level) == h.colors(level)
        if level:
            assert again.parents(level) == h.parents(level)


def test_flip_permutation_swaps_exactly_the_declared_pairs(builtin):
    name, h = builtin
    perm = h.flip_permutation()
    assert perm.dtype == torch.int64 and tuple(perm.shape) == (256,)
    expected = list(range(256))
    for left, right in FLIPS[name]:
        expected[left], expected[right] = right, left
    assert perm.tolist() == expected
    assert torch.equal(perm[perm], torch.arange(256)), "an involution"


@pytest.mark.parametrize("name", ["lip", "cihp", "atr", "helen"])
def test_flipping_keeps_coarser_classes(name):
    """Left and right parts share their parent, so mirroring changes only the finest level."""
    h = load_hierarchy(name)
    table, perm = h.label_table(), h.flip_permutation()
    assert torch.equal(table[:-1, perm], table[:-1])
    assert not torch.equal(table[-1, perm], table[-1])


def test_to_raw_inverts_the_fine_column(builtin):
    name, h = builtin
    table = h.label_table()
    raws = sorted(CLASS_RAW_IDS[name])
    fine = table[-1, raws]
    assert h.to_raw(fine).tolist() == raws
    assert h.to_raw(fine).dtype == torch.uint8
    back = h.to_raw(np.arange(h.num_classes[-1]))
    assert isinstance(back, np.ndarray) and back.dtype == np.uint8
    assert table[-1, torch.from_numpy(back).long()].tolist() == list(range(h.num_classes[-1]))
    assert h.to_raw(torch.tensor([255])).tolist() == [255]


def test_colors(builtin):
    _, h = builtin
    for level in range(h.num_levels):
        colors = h.colors(level)
        assert len(colors) == h.num_classes[level]
        assert all(len(c) == 3 and all(0 <= v <= 255 for v in c) for c in colors)


@pytest.mark.parametrize("name", ["lip", "cihp"])
def test_lip_colours_default_to_the_voc_palette(name):
    h = load_hierarchy(name)
    for level in range(h.num_levels):
        assert h.colors(level) == VOC_COLORS[: h.num_classes[level]]


# ---------------------------------------------------------------------- Cityscapes
@pytest.fixture(scope="module")
def cityscapes():
    return load_hierarchy("cityscapes")


def test_cityscapes_fine_index_is_train_id(cityscapes):
    table = cityscapes.label_table()
    fine = cityscapes.class_names(1)
    for name, raw, train_id, _, _, _, _ in CITYSCAPES_LABELS:
        assert table[1, raw] == train_id, name
        if train_id != 255:
            assert fine[train_id] == name
    assert fine == [label[0] for label in sorted(CITYSCAPES_LABELS, key=lambda l: l[2])][:19]


def test_cityscapes_coarse_index_is_category_id_minus_one(cityscapes):
    table = cityscapes.label_table()
    assert cityscapes.class_names(0) == CITYSCAPES_CATEGORIES
    for name, raw, _, category, cat_id, ignored, _ in CITYSCAPES_LABELS:
        if ignored:
            assert table[0, raw] == 255, name
        else:
            assert table[0, raw] == cat_id - 1, name
            assert CITYSCAPES_CATEGORIES[cat_id - 1] == category


def test_cityscapes_ignored_ids_are_ignore_in_eval(cityscapes):
    ignore_in_eval = [label[1] for label in CITYSCAPES_LABELS if label[5]]
    assert ignore_in_eval == [0, 1, 2, 3, 4, 5, 6, 9, 10, 14, 15, 16, 18, 29, 30]
    assert cityscapes.ignore_ids == ignore_in_eval
    table = cityscapes.label_table()
    evaluated = [raw for raw in range(256) if (table[:, raw] != 255).any()]
    assert evaluated == [label[1] for label in CITYSCAPES_LABELS if not label[5]]
    assert cityscapes.declared_ids() == list(range(34)) + [255]


def test_cityscapes_colours_are_the_official_ones(cityscapes):
    by_train_id = {label[2]: label[6] for label in CITYSCAPES_LABELS if label[2] != 255}
    assert cityscapes.colors(1) == [by_train_id[i] for i in range(19)]


def test_cityscapes_to_raw_writes_label_ids(cityscapes):
    train_ids = torch.arange(19).reshape(1, 19)
    by_train_id = {label[2]: label[1] for label in CITYSCAPES_LABELS if label[2] != 255}
    assert cityscapes.to_raw(train_ids).tolist() == [[by_train_id[i] for i in range(19)]]


def test_celebamask_names_follow_the_attribute_order_of_the_combined_masks():
    short = {"skin": "Skin", "l_brow": "Left-brow", "r_brow": "Right-brow", "l_eye": "Left-eye", "r_eye": "Right-eye",
             "eye_g": "Eyeglasses", "l_ear": "Left-ear", "r_ear": "Right-ear", "ear_r": "Earring", "nose": "Nose",
             "mouth": "Inner-mouth", "u_lip": "Upper-lip", "l_lip": "Lower-lip", "neck": "Neck", "neck_l": "Necklace",
             "cloth": "Cloth", "hair": "Hair", "hat": "Hat"}
    assert CELEBAMASK_NAMES == ["Background"] + [short[attribute] for attribute in CELEBAMASK_ATTRIBUTES]
