"""Label maps: another dataset's raw ids read as classes of our tree, never by rewriting its files.

A map file (``hierarchies/maps/*.yaml``) names the dataset's own hierarchy (``source``: its raw ids),
the tree it maps onto (``target``) and, for every raw id the source declares, one class of the
target, a list of classes (their union: the label says "one of these"), or ``ignore``::

    name: atr_to_lip
    source: atr
    target: lip
    map:
      0: Background
      4: [Upper-clothes, Coat]   # ATR has no coat class: its upper-clothes covers both
      8: ignore                  # belt: LIP has no such class

A class with several descendants at a finer level (a group, or a union) becomes a class set there,
scored by its summed probability (see ``hierparse.hierarchy``). Loading checks every entry and
reports every problem in one line naming the file, the raw id and the class.
"""

from __future__ import annotations

from pathlib import Path
import numpy as np
import yaml

from hierparse.hierarchy import (NUM_RAW_IDS, BUILTIN_DIR, Hierarchy, HierarchyError, _UniqueKeyLoader, load_hierarchy,
                                 resolve_path)

MAPS_DIR = BUILTIN_DIR / "maps"
IGNORE = "ignore"
_KEYS = {"name", "description", "source", "target", "map"}


class LabelMap:
    """A validated map: ``entries[raw]`` is a tuple of target class names (one, or a union), or None (ignore)."""

    def __init__(self, name: str, source: Hierarchy, target: Hierarchy, entries: dict[int, tuple[str, ...] | None],
                 path: str = "<memory>"):
        self.name, self.source, self.target, self.entries, self.path = name, source, target, entries, path

    @property
    def unions(self) -> list[tuple[str, ...]]:
        """The entries that name several classes (they need raw ids of their own: Hierarchy.with_unions)."""
        return sorted({names for names in self.entries.values() if names is not None and len(names) > 1})

    def lookup(self, allocation: dict[tuple[str, ...], int]) -> np.ndarray:
        """uint8 ``[256]``: source raw id -> target raw id (a class's first id, a union's allocated id, or
        the target's ignore_index); ids the source does not declare stay themselves (the dataset has
        refused them already)."""
        ids = {node.name: node.ids for root in self.target.roots for node in root.walk()}
        table = np.arange(NUM_RAW_IDS, dtype=np.uint8)
        for raw, names in self.entries.items():
            if names is None:
                table[raw] = self.target.ignore_index
            elif len(names) == 1:
                table[raw] = ids[names[0]][0]
            else:
                table[raw] = allocation[tuple(sorted(names))]
        return table

    def describe(self) -> str:
        return f"label map {self.name} ({self.path}): {self.source.name} raw ids -> {self.target.name} classes"


def load_label_map(path_or_name: str | Path) -> LabelMap:
    """Load and check a label map by path or built-in name (``atr_to_lip``); HierarchyError lists
    every problem, one line each, naming the file and the raw id."""
    path = resolve_path(path_or_name, MAPS_DIR, "label map")
    where = str(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise FileNotFoundError(f"{path}: cannot read label map file: {error}") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        place = f"line {mark.line + 1}" if mark else "top level"
        raise HierarchyError([f"{where}: {place}: malformed YAML: {getattr(error, 'problem', None) or error}"]) from None
    if not isinstance(data, dict) or not isinstance(data.get("map"), dict):
        raise HierarchyError([f"{where}: expected a mapping with name, source, target and map (raw id -> class)"])
    problems = [f"{where}: unknown key {key!r} (allowed: {', '.join(sorted(_KEYS))})" for key in data if key not in _KEYS]
    source, target = (load_hierarchy(data.get(key, "")) for key in ("source", "target"))
    known = {node.name for root in target.roots for node in root.walk()}
    with_ids = {node.name for root in target.roots for node in root.walk() if node.ids}
    declared = set(source.declared_ids()) - set(source.ignore_ids) - {source.ignore_index}
    entries: dict[int, tuple[str, ...] | None] = {}
    for raw, value in data["map"].items():
        if isinstance(raw, bool) or not isinstance(raw, int) or not 0 <= raw < NUM_RAW_IDS:
            problems.append(f"{where}: map: key {raw!r} is not a raw id 0..{NUM_RAW_IDS - 1}")
            continue
        if raw not in declared:
            problems.append(f"{where}: raw id {raw}: {source.name!r} does not declare it as a class id")
        names = [value] if isinstance(value, str) else value
        if value == IGNORE:
            entries[raw] = None
            continue
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            problems.append(f"{where}: raw id {raw}: expected a class name, a list of class names or "
                            f"'ignore', got {value!r}")
            continue
        for name in names:
            if name not in known:
                problems.append(f"{where}: raw id {raw}: {target.name!r} has no class {name!r}")
            elif len(names) == 1 and name not in with_ids:
                problems.append(f"{where}: raw id {raw}: class {name!r} of {target.name!r} has no raw ids "
                                "(give the group ids in its hierarchy, or map to a list of its children)")
        if len(set(names)) != len(names):
            problems.append(f"{where}: raw id {raw}: a class is listed twice in {names}")
        entries[raw] = tuple(names)
    for raw in sorted(declared - set(entries)):
        problems.append(f"{where}: raw id {raw} of {source.name!r} is not mapped (map it to a class or to 'ignore')")
    if problems:
        raise HierarchyError(problems)
    label_map = LabelMap(str(data.get("name", path.stem)), source, target, entries, where)
    try:
        target.with_unions(label_map.unions)
    except ValueError as error:
        raise HierarchyError([f"{where}: {error}"]) from None
    return label_map


def hierarchy_for_maps(target: Hierarchy, maps: list[LabelMap]) -> tuple[Hierarchy, dict[tuple[str, ...], int]]:
    """The target tree with raw ids for every union the maps use (one allocation for all of them)."""
    for label_map in maps:
        if label_map.target != target:
            raise ValueError(f"{label_map.describe()}, but the run's hierarchy is {target.name!r}")
    return target.with_unions([union for label_map in maps for union in label_map.unions])


def id_names(hierarchy: Hierarchy) -> dict[int, str]:
    """Raw id -> the class it labels, names compared loosely (case, spaces, '-' and '_' ignored)."""
    return {raw: node.name.lower().replace("-", "").replace("_", "").replace(" ", "")
            for root in hierarchy.roots for node in root.walk() for raw in node.ids}


def builtin_map(source: Hierarchy, target: Hierarchy) -> str | None:
    """The name of a built-in map from ``source``'s raw ids to ``target``, if one exists."""
    for path in sorted(MAPS_DIR.glob("*.yaml")):
        data = yaml.safe_load(path.read_text()) or {}
        if data.get("source") == source.name and data.get("target") == target.name:
            return path.stem
    return None


def require_same_ids(files: Hierarchy, reader: Hierarchy, what: str) -> None:
    """A one-line ValueError unless ``reader`` reads every raw id as ``files``' own tree does (LIP's
    4 is sunglasses, ATR's 4 upper-clothes: such a dataset is read only through a label map)."""
    own, other = id_names(files), id_names(reader)
    differing = sorted(raw for raw in set(own) | set(other) if own.get(raw) != other.get(raw))
    if not differing:
        return
    raw = differing[0]
    named = {i: node.name for root in files.roots for node in root.walk() for i in node.ids}
    theirs = {i: node.name for root in reader.roots for node in root.walk() for i in node.ids}
    suggestion = builtin_map(files, reader)
    fix = f"map: {suggestion}" if suggestion else f"a label map from {files.name!r} to {reader.name!r} (hierarchies/maps/)"
    raise ValueError(f"{what} labels its files with the raw ids of hierarchy {files.name!r} (raw id {raw} is "
                     f"{named.get(raw, 'undeclared')!r} there, {theirs.get(raw, 'undeclared')!r} in {reader.name!r}); "
                     f"read it through {fix}")
