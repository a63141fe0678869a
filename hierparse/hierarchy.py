"""Class trees declared in YAML: validation, per-level classes, label-merging tables.

A hierarchy file lists named classes as a tree; leaves name the raw label ids they cover in the
annotation files. Level ``l`` holds every class at depth ``l`` plus every leaf shallower than
``l`` (a class with no children continues unchanged to the finer levels). At every level, classes
keep the order in which they first appear in the file.

A group may name raw ids too: a pixel with such an id is labelled "somewhere in this subtree" (a
coarse label). At the group's level and above it is an ordinary class; at each finer level it is
the *set* of the group's descendants there, which the losses score by its summed probability.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import yaml

NUM_RAW_IDS = 256
BUILTIN_DIR = Path(__file__).resolve().parent.parent / "hierarchies"

_TOP_KEYS = {"name", "description", "ignore_index", "levels", "ignore_ids", "classes", "flip_pairs"}
_NODE_KEYS = {"name", "ids", "color", "children"}


class HierarchyError(ValueError):
    """An invalid hierarchy file; one line per problem, each naming the file, place and value."""

    def __init__(self, problems: Sequence[str] | str):
        # a str: one problem per line (as when a DataLoader worker re-raises the error with its traceback)
        self.problems = problems.splitlines() if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


@dataclasses.dataclass
class ClassNode:
    """One named class of the tree; ``ids`` are the raw label ids of pixels labelled with this node
    (every leaf has some; a group may, for coarse labels)."""

    name: str
    depth: int
    ids: list[int] = dataclasses.field(default_factory=list)
    color: tuple[int, int, int] | None = None
    children: list["ClassNode"] = dataclasses.field(default_factory=list)
    where: str = dataclasses.field(default="", compare=False, repr=False)  # path in the file

    @property
    def is_leaf(self) -> bool:
        return not self.children

    def walk(self) -> Iterator["ClassNode"]:
        """This node and its descendants in file order (pre-order)."""
        yield self
        for child in self.children:
            yield from child.walk()

    def leaves(self) -> Iterator["ClassNode"]:
        return (node for node in self.walk() if node.is_leaf)


def classes_at_level(roots: Sequence[ClassNode], level: int) -> list[ClassNode]:
    """Classes of ``level`` in file order: nodes at that depth and shallower leaves, continued."""
    return [
        node
        for root in roots
        for node in root.walk()
        if node.depth == level or (node.is_leaf and node.depth < level)
    ]


def _walk_with_ancestors(node: ClassNode, ancestors: tuple[ClassNode, ...] = ()):
    """(node, its ancestors nearest first) for ``node`` and its descendants, in file order."""
    yield node, ancestors
    for child in node.children:
        yield from _walk_with_ancestors(child, (node, *ancestors))


def mirror_image(node: ClassNode, nodes: Sequence[ClassNode], flip_pairs: Sequence[tuple[str, str]]
                 ) -> ClassNode | None:
    """The class whose leaves are ``node``'s with the flip pairs swapped: ``node`` itself when they are
    mirror-symmetric, else another class with raw ids (a leaf, or a group with ids), else None."""
    swap = {name: other for pair in flip_pairs for name, other in (pair, pair[::-1])}
    own = frozenset(leaf.name for leaf in node.leaves())
    mirrored = frozenset(swap.get(name, name) for name in own)
    if mirrored == own:
        return node
    candidates = [other for other in nodes if other.ids and frozenset(leaf.name for leaf in other.leaves()) == mirrored]
    candidates.sort(key=lambda other: other.is_leaf != node.is_leaf)  # a leaf mirrors onto a leaf where it can
    return candidates[0] if candidates else None


def level_mirrors(classes: Sequence[ClassNode], flip_pairs: Sequence[tuple[str, str]]) -> list[int | None]:
    """For each class of one level, the index of the class of that level covering its leaves with the
    flip pairs swapped (itself when symmetric), or None where no class of the level does."""
    swap = {name: other for pair in flip_pairs for name, other in (pair, pair[::-1])}
    position = {frozenset(leaf.name for leaf in node.leaves()): index for index, node in enumerate(classes)}
    return [position.get(frozenset(swap.get(leaf.name, leaf.name) for leaf in node.leaves())) for node in classes]


def voc_palette(index: int) -> tuple[int, int, int]:
    """The PASCAL VOC colour of ``index``: a fixed, distinguishable default palette."""
    rgb = [0, 0, 0]
    for shift in range(8):
        for channel in range(3):
            rgb[channel] |= ((index >> (channel + 3 * shift)) & 1) << (7 - shift)
    return (rgb[0], rgb[1], rgb[2])


class LabelTables:
    """Part of :class:`Hierarchy`: the tables between raw label ids and the classes of each level
    (what the fused loss, the metrics and the writers of label files read)."""

    def level_targets(self, level: int) -> list[tuple[list[int], list[int]]]:
        """(raw ids, the classes of ``level`` they stand for) for every class with raw ids, then every
        union of :meth:`with_unions`: one class (the class that is or contains it) or, for a group above
        ``level``, its descendants there; a union stands for all its classes' classes, in class order."""
        level = self._level(level)
        members = {id(node): i for i, node in enumerate(self._level_nodes[level])}
        nodes = {}
        for root in self.roots:
            for node, ancestors in _walk_with_ancestors(root):
                holder = next((n for n in (node, *ancestors) if id(n) in members), None)
                nodes[node.name] = (node, [members[id(holder)]] if holder is not None else
                                    sorted({members[id(d)] for d in node.walk() if id(d) in members}))
        targets = [(node.ids, classes) for node, classes in nodes.values() if node.ids]
        for raw, names in self.unions.items():
            targets.append(([raw], sorted({c for name in names for c in nodes[name][1]})))
        return targets

    def label_table(self) -> torch.Tensor:
        """int64 ``[num_levels, 256]``: raw id -> class index per level, ``ignore_index`` elsewhere.

        A raw id whose node stands for several classes of a level (a group above it) has the entry
        ``num_classes[level] + s`` there: row ``s`` of that level in :meth:`set_members`.
        """
        table = torch.full((self.num_levels, NUM_RAW_IDS), self.ignore_index, dtype=torch.int64)
        for level in range(self.num_levels):
            sets: list[list[int]] = []
            for ids, classes in self.level_targets(level):
                if len(classes) == 1:
                    table[level, ids] = classes[0]
                else:
                    table[level, ids] = self.num_classes[level] + len(sets)
                    sets.append(classes)
            if self.num_classes[level] <= self.ignore_index < self.num_classes[level] + len(sets):
                raise ValueError(f"{self.source}: ignore_index {self.ignore_index} collides with class set "
                                 f"{self.ignore_index - self.num_classes[level]} of level {self.level_names[level]!r} "
                                 f"(entries {self.num_classes[level]}..{self.num_classes[level] + len(sets) - 1}); "
                                 "choose a larger ignore_index")
        return table

    def set_members(self) -> torch.Tensor:
        """float32 ``[num_levels, S, max classes]``: row ``s`` of a level is 1 at the classes of its
        set ``s`` (see :meth:`label_table`), 0 elsewhere; ``S`` is the most sets of any level (0 when
        every raw id is an exact class at every level)."""
        per_level = [[classes for _, classes in self.level_targets(level) if len(classes) > 1]
                     for level in range(self.num_levels)]
        members = torch.zeros(self.num_levels, max(map(len, per_level)), max(self.num_classes))
        for level, sets in enumerate(per_level):
            for s, classes in enumerate(sets):
                members[level, s, classes] = 1.0
        return members

    def exact_table(self) -> torch.Tensor:
        """:meth:`label_table` with set entries ignored: what a level is scored on (metrics)."""
        table = self.label_table()
        counts = torch.tensor(self.num_classes).unsqueeze(1)
        return torch.where((table >= counts) & (table != self.ignore_index), self.ignore_index, table)

    def declared_ids(self) -> list[int]:
        """Raw ids that may appear in annotation files: node ids, ignored ids and ``ignore_index``."""
        ids = {i for root in self.roots for node in root.walk() for i in node.ids} | set(self.ignore_ids)
        ids |= set(self.unions)
        if 0 <= self.ignore_index < NUM_RAW_IDS:
            ids.add(self.ignore_index)
        return sorted(ids)

    def fine_to_raw(self) -> torch.Tensor:
        """uint8 ``[num_fine_classes]``: the first raw id of each finest-level class."""
        return torch.tensor([node.ids[0] for node in self._level_nodes[-1]], dtype=torch.uint8)

    def to_raw(self, fine_indices):
        """Map finest-level class indices to raw ids (uint8), as a tensor or a numpy array.

        Pixels equal to ``ignore_index`` stay ``ignore_index``.
        """
        as_numpy = isinstance(fine_indices, np.ndarray)
        indices = torch.as_tensor(fine_indices).long()
        lookup = self.fine_to_raw().to(indices.device)
        ignored = indices == self.ignore_index
        valid = indices[~ignored]
        if valid.numel() and (valid.min() < 0 or valid.max() >= len(lookup)):
            bad = valid[(valid < 0) | (valid >= len(lookup))][0].item()
            raise ValueError(
                f"fine class index {bad} is outside 0..{len(lookup) - 1} of hierarchy {self.name!r}"
            )
        raw = lookup[indices.clamp(0, len(lookup) - 1)]
        raw[ignored] = self.ignore_index % NUM_RAW_IDS
        return raw.numpy() if as_numpy else raw


class Relabelling:
    """Part of :class:`Hierarchy`: trees and id maps derived from it: raw ids for unions of classes,
    coarsened labels, and what mirroring an image does to raw ids and classes."""

    def with_unions(self, unions: Sequence[Sequence[str]]) -> tuple["Hierarchy", dict[tuple[str, ...], int]]:
        """A copy of this tree in which each union of classes (by name) has a raw id of its own, and
        that allocation: ids from 254 down among those the tree leaves free. Label maps use it for
        another dataset's classes that are unions of ours; the copy saves and compares as this tree."""
        known = {node.name for root in self.roots for node in root.walk()}
        wanted = sorted({tuple(sorted(set(union))) for union in unions})
        free = [raw for raw in range(NUM_RAW_IDS - 2, -1, -1) if raw not in set(self.declared_ids())]
        if len(wanted) > len(free):
            raise ValueError(f"hierarchy {self.name!r} has {len(free)} free raw ids for {len(wanted)} unions")
        for union in wanted:
            unknown = [name for name in union if name not in known]
            if unknown:
                raise ValueError(f"hierarchy {self.name!r} has no class {unknown[0]!r} (in the union {list(union)})")
        extended = copy.copy(self)
        allocation = dict(zip(wanted, free))
        extended.unions = {**self.unions, **{raw: union for union, raw in allocation.items()}}
        nodes = [node for root in self.roots for node in root.walk()]
        for union in wanted:
            mirrors = {node.name: mirror_image(node, nodes, self.flip_pairs) for node in nodes if node.name in union}
            lost = [name for name, mirror in mirrors.items() if mirror is None]
            if lost:
                raise ValueError(f"class {lost[0]!r} (in the union {list(union)}) of hierarchy {self.name!r} has no "
                                 "mirror image with raw ids under its flip pairs")
            mirrored = tuple(sorted({mirror.name for mirror in mirrors.values()}))
            if mirrored != union and mirrored not in allocation:
                raise ValueError(f"the union {list(union)} of hierarchy {self.name!r} has no mirror image "
                                 f"{list(mirrored)} among the unions")
        return extended, allocation

    def coarsening(self, level: int | str) -> np.ndarray:
        """uint8 ``[256]``: each raw id relabelled with the first raw id of its node's ancestor at
        ``level`` (name or index) when the node lies below that level; other ids unchanged.

        Turns fine annotations into coarse ones (e.g. parts into regions) for studies and tests;
        raises ValueError naming the group when an ancestor needed has no raw ids.
        """
        if isinstance(level, str):
            if level not in self.level_names:
                raise ValueError(f"hierarchy {self.name!r} has no level {level!r} (levels: "
                                 f"{', '.join(self.level_names)})")
            level = self.level_names.index(level)
        level = self._level(level)
        lookup = np.arange(NUM_RAW_IDS, dtype=np.uint8)
        for root in self.roots:
            for node, ancestors in _walk_with_ancestors(root):
                if node.depth <= level or not node.ids:
                    continue
                holder = next(a for a in ancestors if a.depth == level)
                if not holder.ids:
                    raise ValueError(f"{self.source}: group {holder.name!r} at level {self.level_names[level]!r} "
                                     "has no raw ids, so labels cannot be coarsened to it; give it 'ids'")
                lookup[node.ids] = holder.ids[0]
        return lookup

    def flip_permutation(self) -> torch.Tensor:
        """int64 ``[256]``: the raw id each raw id becomes when the image is mirrored.

        A group's ids go to the group whose leaves are its leaves mirrored (itself when they are
        mirror-symmetric, as every group of the built-in trees is).
        """
        perm = torch.arange(NUM_RAW_IDS, dtype=torch.int64)
        nodes = [node for root in self.roots for node in root.walk()]
        for node in nodes:
            if node.ids:
                perm[node.ids] = torch.tensor(mirror_image(node, nodes, self.flip_pairs).ids)
        union_ids = {union: raw for raw, union in self.unions.items()}
        for raw, union in self.unions.items():  # with_unions checked that every mirror image exists
            perm[raw] = union_ids[tuple(sorted({mirror_image(node, nodes, self.flip_pairs).name
                                                for node in nodes if node.name in union}))]
        return perm

    def class_flip(self, level: int) -> torch.Tensor:
        """int64 ``[C_level]``: the class of ``level`` each class becomes when the image is mirrored
        (the swap of leaves that ``flip_pairs`` declares, induced on their ancestors)."""
        return torch.tensor(level_mirrors(self._level_nodes[self._level(level)], self.flip_pairs), dtype=torch.int64)


class Hierarchy(LabelTables, Relabelling):
    """A validated class tree and everything derived from it, coarse level first."""

    def __init__(
        self,
        name: str,
        levels: Sequence[str],
        roots: Sequence[ClassNode],
        *,
        description: str = "",
        ignore_index: int = 255,
        ignore_ids: Sequence[int] = (),
        flip_pairs: Sequence[tuple[str, str]] = (),
        source: str = "<memory>",
    ):
        self.name = name
        self.description = description
        self.level_names = list(levels)
        self.ignore_index = ignore_index
        self.ignore_ids = sorted(set(ignore_ids))
        self.flip_pairs = [tuple(pair) for pair in flip_pairs]
        self.roots = list(roots)
        self.source = source
        self._level_nodes = [classes_at_level(self.roots, level) for level in range(self.num_levels)]
        self.unions: dict[int, tuple[str, ...]] = {}  # raw id -> class names (with_unions; not saved)

    # ------------------------------------------------------------------ structure
    @property
    def num_levels(self) -> int:
        return len(self.level_names)

    @property
    def num_classes(self) -> list[int]:
        return [len(nodes) for nodes in self._level_nodes]

    def _level(self, level: int) -> int:
        if not -self.num_levels <= level < self.num_levels:
            raise ValueError(
                f"hierarchy {self.name!r} has {self.num_levels} levels; level {level} does not exist"
            )
        return level % self.num_levels

    def nodes(self, level: int) -> list[ClassNode]:
        return list(self._level_nodes[self._level(level)])

    def class_names(self, level: int) -> list[str]:
        return [node.name for node in self._level_nodes[self._level(level)]]

    def leaves(self) -> list[ClassNode]:
        return [leaf for root in self.roots for leaf in root.leaves()]

    def class_of_leaf(self, level: int) -> dict[str, int]:
        """Leaf name -> index of the class containing it at ``level``."""
        level = self._level(level)
        index = {}
        for position, node in enumerate(self._level_nodes[level]):
            for leaf in node.leaves():
                index[leaf.name] = position
        return index

    def parents(self, level: int) -> list[int]:
        """For each class of ``level``, the index of its parent (or itself, continued) at ``level-1``."""
        level = self._level(level)
        if level == 0:
            raise ValueError("the coarsest level (0) has no parents")
        coarse = {id(node): i for i, node in enumerate(self._level_nodes[level - 1])}
        result = []
        for root in self.roots:
            self._collect_parents(root, None, level, coarse, result)
        return result

    def _collect_parents(self, node, parent, level, coarse, out) -> None:
        if node.depth == level or (node.is_leaf and node.depth < level):
            holder = node if id(node) in coarse else parent
            out.append(coarse[id(holder)])
            return
        for child in node.children:
            self._collect_parents(child, node, level, coarse, out)

    def colors(self, level: int) -> list[tuple[int, int, int]]:
        """RGB per class of ``level``: the declared colour, else the VOC palette entry of its index."""
        return [
            node.color if node.color is not None else voc_palette(index)
            for index, node in enumerate(self._level_nodes[self._level(level)])
        ]

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        def node_dict(node: ClassNode) -> dict[str, Any]:
            out: dict[str, Any] = {"name": node.name}
            if node.ids:
                out["ids"] = list(node.ids)
            if node.color is not None:
                out["color"] = list(node.color)
            if node.children:
                out["children"] = [node_dict(child) for child in node.children]
            return out

        data: dict[str, Any] = {"name": self.name}
        if self.description:
            data["description"] = self.description
        data["ignore_index"] = self.ignore_index
        data["levels"] = list(self.level_names)
        if self.ignore_ids:
            data["ignore_ids"] = list(self.ignore_ids)
        data["classes"] = [node_dict(root) for root in self.roots]
        if self.flip_pairs:
            data["flip_pairs"] = [list(pair) for pair in self.flip_pairs]
        return data

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_yaml())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Hierarchy) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"Hierarchy({self.name!r}, levels={self.level_names}, classes={self.num_classes})"


# ---------------------------------------------------------------------- loading and validation
class _Validator:
    """Builds a Hierarchy from parsed YAML, collecting every problem before raising."""

    def __init__(self, source: str):
        self.source = source
        self.problems: list[str] = []

    def problem(self, where: str, message: str) -> None:
        self.problems.append(f"{self.source}: {where}: {message}")

    def unknown_keys(self, mapping: dict, allowed: set[str], where: str) -> None:
        for key in mapping:
            if key not in allowed:
                self.problem(where, f"unknown key {key!r} (allowed: {', '.join(sorted(allowed))})")

    def build(self, data: Any) -> Hierarchy:
        if not isinstance(data, dict):
            self.problem("top level", f"expected a mapping of fields, got {type(data).__name__}")
            raise HierarchyError(self.problems)
        self.unknown_keys(data, _TOP_KEYS, "top level")
        name = data.get("name")
        if not isinstance(name, str) or not name:
            self.problem("name", f"expected a non-empty string, got {name!r}")
        levels = data.get("levels")
        if not isinstance(levels, list) or not levels or not all(isinstance(x, str) for x in levels):
            self.problem("levels", f"expected a non-empty list of level names, got {levels!r}")
            levels = []
        for i, level_name in enumerate(levels):
            if level_name in levels[:i]:
                self.problem(f"levels[{i}]", f"duplicate level name {level_name!r}")
        ignore_index = data.get("ignore_index", 255)
        if not isinstance(ignore_index, int) or isinstance(ignore_index, bool):
            self.problem("ignore_index", f"expected an integer, got {ignore_index!r}")
            ignore_index = 255
        elif not 0 <= ignore_index < NUM_RAW_IDS:
            # It is also the raw id of ignored pixels in label PNGs and in to_raw() output (uint8).
            self.problem("ignore_index", f"{ignore_index} is outside 0..{NUM_RAW_IDS - 1}")
            ignore_index = 255
        ignore_ids = self.raw_ids(data.get("ignore_ids", []), "ignore_ids")

        classes = data.get("classes")
        roots: list[ClassNode] = []
        if not isinstance(classes, list) or not classes:
            self.problem("classes", f"expected a non-empty list of classes, got {classes!r}")
        else:
            roots = [self.node(item, 0, f"classes[{i}]", len(levels)) for i, item in enumerate(classes)]
            roots = [root for root in roots if root is not None]
        check_names_and_ids(roots, ignore_ids, ignore_index, len(levels), self.problem)
        flip_pairs = read_flip_pairs(data.get("flip_pairs", []), roots, self.problem)
        check_mirrored_groups(roots, flip_pairs, self.problem)
        if self.problems:
            raise HierarchyError(self.problems)
        return Hierarchy(
            name,
            levels,
            roots,
            description=str(data.get("description", "")),
            ignore_index=ignore_index,
            ignore_ids=ignore_ids,
            flip_pairs=flip_pairs,
            source=self.source,
        )

    def raw_ids(self, value: Any, where: str) -> list[int]:
        items = value if isinstance(value, list) else [value]
        ids = []
        for item in items:
            if not isinstance(item, int) or isinstance(item, bool):
                self.problem(where, f"raw id {item!r} is not an integer")
            elif not 0 <= item < NUM_RAW_IDS:
                self.problem(where, f"raw id {item} is outside 0..{NUM_RAW_IDS - 1}")
            else:
                ids.append(item)
        return ids

    def node(self, item: Any, depth: int, where: str, num_levels: int) -> ClassNode | None:
        if not isinstance(item, dict):
            self.problem(where, f"expected a class mapping with a name, got {item!r}")
            return None
        name = item.get("name")
        if not isinstance(name, str) or not name:
            self.problem(where, f"expected a non-empty class name, got {name!r}")
            name = f"<unnamed {where}>"
        else:
            where = f"{where} ({name})"
        self.unknown_keys(item, _NODE_KEYS, where)
        if depth == num_levels > 0:  # reported once per branch, not again for each descendant
            self.problem(
                where,
                f"the tree is deeper than 'levels': this class would be level {depth + 1}, "
                f"but 'levels' names only {num_levels}",
            )
        node = ClassNode(name=name, depth=depth, color=self.color(item.get("color"), where), where=where)
        has_children = "children" in item
        if has_children:
            children = item["children"]
            if not isinstance(children, list) or not children:
                self.problem(where, f"empty group: 'children' must list at least one class, got {children!r}")
            else:
                for i, child in enumerate(children):
                    built = self.node(child, depth + 1, f"{where}.children[{i}]", num_levels)
                    if built is not None:
                        node.children.append(built)
        elif "ids" not in item:
            self.problem(where, "a class needs 'ids' (a leaf) or 'children' (a group)")
        if "ids" in item:
            if item["ids"] == []:
                self.problem(where, "'ids' must list at least one raw id (leave it out of a group without ids)")
            node.ids = self.raw_ids(item["ids"], where)
        return node

    def color(self, value: Any, where: str) -> tuple[int, int, int] | None:
        if value is None:
            return None
        if (
            isinstance(value, list)
            and len(value) == 3
            and all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in value)
        ):
            return (value[0], value[1], value[2])
        self.problem(where, f"color must be [R, G, B] with integers 0..255, got {value!r}")
        return None


def check_names_and_ids(roots: list[ClassNode], ignore_ids: list[int], ignore_index: int, num_levels: int,
                        problem: Callable[[str, str], None]) -> None:
    """Report duplicate class names, raw ids claimed twice or colliding with ignored ids, and an
    ignore_index that is also a class index."""
    first: dict[str, ClassNode] = {}
    owner: dict[int, ClassNode] = {}
    for root in roots:
        for node in root.walk():
            if node.name in first:
                problem(
                    node.where,
                    f"duplicate class name {node.name!r} (first used at {first[node.name].where})",
                )
            first.setdefault(node.name, node)
            for raw in node.ids:
                if raw in owner and owner[raw] is node:
                    problem(node.where, f"raw id {raw} is listed twice")
                elif raw in owner:
                    problem(
                        node.where,
                        f"raw id {raw} is already claimed by {owner[raw].name!r} at {owner[raw].where}",
                    )
                elif raw in ignore_ids:
                    problem(node.where, f"raw id {raw} is also listed in ignore_ids")
                elif raw == ignore_index:
                    problem(node.where, f"raw id {raw} equals ignore_index")
                owner.setdefault(raw, node)
    most_classes = max((len(classes_at_level(roots, level)) for level in range(num_levels)), default=0)
    if 0 <= ignore_index < most_classes:
        problem("ignore_index", f"{ignore_index} collides with class index {ignore_index}")

def read_flip_pairs(value: Any, roots: list[ClassNode], problem: Callable[[str, str], None]) -> list[tuple[str, str]]:
    """The valid [left, right] leaf pairs of ``flip_pairs``; every invalid one reported."""
    if not isinstance(value, list):
        problem("flip_pairs", f"expected a list of [left, right] pairs, got {value!r}")
        return []
    nodes: dict[str, ClassNode] = {}
    for root in roots:
        for node in root.walk():
            nodes.setdefault(node.name, node)  # a duplicate name is reported on its own
    pairs = []
    paired: dict[str, str] = {}  # class name -> where it was first paired
    for i, pair in enumerate(value):
        where = f"flip_pairs[{i}]"
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(p, str) for p in pair)):
            problem(where, f"expected [left, right] class names, got {pair!r}")
            continue
        ok = True
        if pair[0] == pair[1]:
            problem(where, f"class {pair[0]!r} is paired with itself")
            continue
        for name in pair:
            if name in paired:
                # A class in two pairs would make the flip map a non-permutation.
                problem(where, f"class {name!r} is already paired in {paired[name]}")
                ok = False
            else:
                paired[name] = where
        for name in pair:
            if name not in nodes:
                problem(where, f"unknown class {name!r}")
                ok = False
            elif not nodes[name].is_leaf:
                problem(where, f"class {name!r} is a group, not a leaf")
                ok = False
        if ok:
            left, right = len(nodes[pair[0]].ids), len(nodes[pair[1]].ids)
            # A leaf left without valid ids has been reported already; comparing counts adds noise.
            if left and right and left != right:
                problem(
                    where,
                    f"{pair[0]!r} and {pair[1]!r} cover different numbers of raw ids ({left} and {right})",
                )
                ok = False
        if ok:
            pairs.append((pair[0], pair[1]))
    return pairs


def check_mirrored_groups(roots: list[ClassNode], flip_pairs: list[tuple[str, str]],
                          problem: Callable[[str, str], None]) -> None:
    """Every class of every level must have a mirror image in that level (so that a flipped
    prediction can be swapped back), and a group with raw ids one with as many ids (so that
    mirroring can relabel its pixels)."""
    depth = max((node.depth for root in roots for node in root.walk()), default=0)
    for level in range(depth + 1):
        classes = classes_at_level(roots, level)
        for node, mirror in zip(classes, level_mirrors(classes, flip_pairs)):
            if mirror is None:
                problem(node.where, "mirroring swaps part of this class's leaves with leaves of other "
                             "classes (flip_pairs must pair leaves whose ancestors are mirror images at every level)")
    nodes = [node for root in roots for node in root.walk()]
    for node in nodes:
        if not (node.ids and node.children):
            continue
        mirror = mirror_image(node, nodes, flip_pairs)
        if mirror is None:
            problem(node.where, "this group has raw ids but no mirror image under flip_pairs (no class "
                         "covers its leaves with left and right swapped)")
        elif len(mirror.ids) != len(node.ids):
            problem(node.where, f"this group and its mirror image {mirror.name!r} cover different "
                         f"numbers of raw ids ({len(node.ids)} and {len(mirror.ids)})")


def fine_ancestors(hierarchy: Hierarchy) -> list[torch.Tensor]:
    """int64 per level: for each finest class, the index of the class containing it at that level."""
    chain = [torch.arange(hierarchy.num_classes[-1])]
    for level in range(hierarchy.num_levels - 1, 0, -1):
        chain.insert(0, torch.tensor(hierarchy.parents(level))[chain[0]])
    return chain


def builtin_names() -> list[str]:
    """Names of the hierarchies shipped in ``hierarchies/``."""
    return sorted(path.stem for path in BUILTIN_DIR.glob("*.yaml"))


def resolve_path(path_or_name: str | Path, folder: Path = BUILTIN_DIR, what: str = "hierarchy") -> Path:
    """A file path as given, or the built-in file of that name in ``folder`` (hierarchies, label maps)."""
    path = Path(path_or_name)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.exists():
            raise FileNotFoundError(f"{path}: {what} file not found")
        return path
    builtin = folder / f"{path_or_name}.yaml"
    if builtin.is_file():
        return builtin
    names = ", ".join(sorted(p.stem for p in folder.glob("*.yaml")))
    raise FileNotFoundError(f"{path_or_name}: neither a {what} file nor a built-in {what} (built-ins: {names})")


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe loader that rejects a key repeated in one mapping (PyYAML keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen: set = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (str, int, float, bool)) or key is None:
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r}", key_node.start_mark
                    )
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def hierarchy_from_yaml(text: str, source: str = "<string>") -> Hierarchy:
    """Parse and validate YAML text; raises HierarchyError naming ``source``."""
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "top level"
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise HierarchyError([f"{source}: {where}: malformed YAML: {problem}"]) from None
    return _Validator(source).build(data)


def load_hierarchy(path_or_name: str | Path | Hierarchy) -> Hierarchy:
    """Load a hierarchy from a YAML file or by built-in name (``"lip"``, ``"cityscapes"``, …)."""
    if isinstance(path_or_name, Hierarchy):
        return path_or_name
    path = resolve_path(path_or_name)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise FileNotFoundError(f"{path}: cannot read hierarchy file: {error}") from None
    return hierarchy_from_yaml(text, str(path))
