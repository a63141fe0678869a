"""The ``hierparse`` command: one subcommand per job; user mistakes print one line and exit 2."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Callable, Sequence

from hierparse.engine.command import print_problems, run_command
from hierparse.check_data import add_check_data
from hierparse.evaluate import add_evaluate
from hierparse.export import add_export
from hierparse.hierarchy import Hierarchy, HierarchyError, load_hierarchy
from hierparse.models.stacked import DEFAULT_MODULE_WIDTH
from hierparse.predict import add_predict
from hierparse.train import add_train


# ---------------------------------------------------------------------- show
def node_indices(h: Hierarchy, node) -> dict[str, int]:
    """Level name -> the node's class index, for every level the node spans (a leaf continues)."""
    span = range(node.depth, h.num_levels) if node.is_leaf else [node.depth]
    first_leaf = next(node.leaves()).name
    return {h.level_names[level]: h.class_of_leaf(level)[first_leaf] for level in span}


def describe_hierarchy(h: Hierarchy) -> dict:
    """Everything ``hierparse show --json`` prints: levels, classes, tree and merging tables."""
    table = h.label_table()

    def node_dict(node):
        entry = {"name": node.name, "level": node.depth, "index": node_indices(h, node)}
        if node.ids:
            entry["ids"] = node.ids
        if node.children:
            entry["children"] = [node_dict(child) for child in node.children]
        return entry

    return {
        "name": h.name,
        "description": h.description,
        "source": h.source,
        "ignore_index": h.ignore_index,
        "levels": [
            {
                "name": h.level_names[level],
                "num_classes": h.num_classes[level],
                "classes": h.class_names(level),
                "parents": h.parents(level) if level else None,
            }
            for level in range(h.num_levels)
        ],
        "tree": [node_dict(root) for root in h.roots],
        "label_table": {str(raw): table[:, raw].tolist() for raw in h.declared_ids()},
        "sets": [[[names[c] for c in members.nonzero().flatten().tolist()] for members in level_sets
                  if members.any()] for level_sets, names in zip(h.set_members(), map(h.class_names, range(h.num_levels)))],
        "flip_pairs": [list(pair) for pair in h.flip_pairs],
    }


def format_hierarchy(h: Hierarchy) -> str:
    """Human-readable tree, classes per level and label-merging table."""
    lines = [f"{h.name}: {h.description}" if h.description else h.name, f"source: {h.source}", ""]
    lines.append("levels (coarse -> fine): " + ", ".join(
        f"{name} ({count})" for name, count in zip(h.level_names, h.num_classes)))
    lines.append(f"ignore_index: {h.ignore_index}")
    lines += ["", "tree (index at each level it spans; ids = raw label ids):"]

    def walk(node, indent):
        where = " ".join(f"{name}={index}" for name, index in node_indices(h, node).items())
        ids = f"  ids {node.ids}" if node.ids else ""
        lines.append(f"{'  ' * indent}{node.name}  [{where}]{ids}")
        for child in node.children:
            walk(child, indent + 1)

    for root in h.roots:
        walk(root, 1)
    table = h.label_table()
    lines += ["", "label-merging table (raw id -> class index per level, or set sN: a group's classes there, "
                  "scored by their summed probability; unlisted ids are ignored):"]
    header = f"  {'raw id':>6}  " + "  ".join(f"{name:>12}" for name in h.level_names) + "  label"
    lines.append(header)
    names = {node.name: node for root in h.roots for node in root.walk()}
    owner = {i: name for name, node in names.items() for i in node.ids}

    def cell(level, value):
        count = h.num_classes[level]
        return f"s{value - count}" if count <= value != h.ignore_index else str(value)

    for raw in h.declared_ids():
        row = table[:, raw].tolist()
        label = owner.get(raw, "(ignored)")
        lines.append(f"  {raw:>6}  " + "  ".join(f"{cell(level, v):>12}" for level, v in enumerate(row)) + f"  {label}")
    for level, level_sets in enumerate(h.set_members()):
        for s, members in enumerate(level_sets):
            if members.any():
                classes = [h.class_names(level)[c] for c in members.nonzero().flatten().tolist()]
                lines.append(f"  set s{s} of {h.level_names[level]}: {', '.join(classes)}")
    if h.flip_pairs:
        lines += ["", "flip pairs: " + ", ".join(f"{a} <-> {b}" for a, b in h.flip_pairs)]
    return "\n".join(lines)


def add_show(subparsers) -> None:
    p = subparsers.add_parser("show", help="print a hierarchy: tree, classes per level, merging tables")
    p.add_argument("hierarchy", help="a YAML file or a built-in name (lip, cihp, atr, helen, ...)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=run_show)


def run_show(args) -> int:
    try:
        h = load_hierarchy(args.hierarchy)
    except HierarchyError as error:
        print_problems(error)
        return 2
    print(json.dumps(describe_hierarchy(h), indent=2) if args.json else format_hierarchy(h))
    return 0


# ---------------------------------------------------------------------- validate
def add_validate(subparsers) -> None:
    p = subparsers.add_parser("validate", help="check hierarchy files; exit 2 listing every problem")
    p.add_argument("files", nargs="+", help="hierarchy YAML files")
    p.set_defaults(func=run_validate)


def run_validate(args) -> int:
    failed = False
    for path in args.files:
        try:
            h = load_hierarchy(path)
        except HierarchyError as error:
            failed = True
            print_problems(error)
        except FileNotFoundError as error:
            failed = True
            print(f"hierparse: error: {error}", file=sys.stderr)
        else:
            print(f"{path}: ok ({h.num_levels} levels, classes per level {h.num_classes})")
    return 2 if failed else 0


# ---------------------------------------------------------------------- build-model
def add_build_model(subparsers) -> None:
    p = subparsers.add_parser(
        "build-model", help="print the stacked model a hierarchy generates: modules, sizes, cost")
    p.add_argument("hierarchy", help="a YAML file or a built-in name (lip, cihp, atr, helen, ...)")
    p.add_argument("--backbone", default="resnet50", help="resnet18/34/50/101 or light (default resnet50)")
    p.add_argument("--head", default="psp", help="fcn, psp or aspp (default psp)")
    p.add_argument("--flat", action="store_true", help="the flat baseline: one module, finest level")
    p.add_argument("--input-size", default="473", metavar="H[xW]",
                   help="image size for shapes and multiply-adds (default 473)")
    p.add_argument("--output-stride", type=int, default=8, help="8 or 16 (default 8)")
    p.add_argument("--skips", metavar="STAGES",
                   help="skip stage per level after the first, comma-separated (layer1..layer3 or "
                        "none each), or 'none' for no skips; default: finest level <- layer1; "
                        "with --flat one stage (flat + skip), default none")
    p.add_argument("--module-width", type=int, default=DEFAULT_MODULE_WIDTH,
                   help=f"channels of each module's refinement branch (default {DEFAULT_MODULE_WIDTH})")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=run_build_model)


def parse_size(text: str) -> tuple[int, int]:
    """``"473"`` or ``"512x1024"`` -> (height, width), both positive."""
    parts = text.lower().split("x")
    if len(parts) not in (1, 2) or not all(part.strip().isdigit() and int(part) > 0 for part in parts):
        raise ValueError(f"--input-size: expected a positive size like 473 or 512x1024, got {text!r}")
    return (int(parts[0]), int(parts[-1]))


def run_build_model(args) -> int:
    import torch

    from hierparse.models import build_model, describe_model, format_model

    size = parse_size(args.input_size)
    if args.skips is None:
        skips = None
    elif args.skips.strip().lower() == "none":
        skips = False
    else:
        skips = [None if s.strip().lower() == "none" else s.strip() for s in args.skips.split(",")]
    try:
        h = load_hierarchy(args.hierarchy)
    except HierarchyError as error:
        print_problems(error)
        return 2
    with torch.device("meta"):  # shapes and counts only: no weights allocated, nothing computed
        model = build_model(h, args.backbone, args.head, stacked=not args.flat,
                            output_stride=args.output_stride, skips=skips, module_width=args.module_width)
    info = describe_model(model, size)
    if args.json:
        print(json.dumps({"model": info, "hierarchy": describe_hierarchy(h)}, indent=2))
    else:
        print(format_model(info) + "\n\n" + format_hierarchy(h))
    return 0


# ---------------------------------------------------------------------- entry point
PARSER_BUILDERS: list[Callable] = [add_show, add_validate, add_build_model, add_check_data, add_train, add_evaluate,
                                   add_predict, add_export]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hierparse", description="Coarse-to-fine image parsing driven by YAML class trees."
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in PARSER_BUILDERS:
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # only commands that take KEY VALUE overrides (train) accept arguments they do not declare
        if "overrides" not in vars(args):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = extra
    return run_command(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
