"""``hierparse check-data``: one pass over a dataset folder before a long run: what it holds and what is wrong.

Reports image/label pairs and label files without an image, image modes and sizes, the raw ids seen
against those the tree (or the label map's source tree) declares, each class's share of pixels, and
unreadable files; draws a contact sheet of a few images with their labels painted. Exit status 0
when the folder is ready to train on, 1 with every problem listed.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from hierparse.data.dataset import ParsingDataset, open_image, resized_to_label, to_rgb
from hierparse.data.layouts import LAYOUTS
from hierparse.data.synthetic import colorize
from hierparse.engine.visualize import save_panels

SHEET_SAMPLES = 6
SHOWN_PER_PROBLEM = 3  # files named per kind of problem; the rest are counted


def unmatched_labels(dataset: ParsingDataset) -> list[Path]:
    """Label files in the split's label folder that no image has (none for list files)."""
    return dataset.variant.unpaired_labels(dataset.root, dataset.split) if dataset.variant is not None else []


def scan(dataset: ParsingDataset, progress: bool = True) -> dict[str, Any]:
    """One pass over the pairs: modes, sizes, raw-id pixel counts, and the problems of each file."""
    modes, sizes, counts = Counter(), Counter(), np.zeros(256, np.int64)
    problems: dict[str, list[str]] = {}
    sheet = []
    declared = dataset.check_labels.declared
    for image_path, label_path in tqdm(dataset.pairs, desc="checking", unit="pair", disable=not progress):
        try:
            image = open_image(image_path, "image")  # decodes every pixel: a truncated file fails here
            mode, (width, height), picture = image.mode, image.size, to_rgb(image, image_path)
            label = dataset.read_label(label_path)
        except (ValueError, FileNotFoundError, OSError) as error:
            problems.setdefault("unreadable", []).append(str(error).splitlines()[0])
            continue
        modes[mode] += 1
        sizes[(width, height)] += 1
        if dataset.layout.images_to_label_size and label.shape != (height, width):
            try:
                picture = resized_to_label(picture, label.shape, image_path, label_path)
                height, width = label.shape
            except ValueError as error:
                problems.setdefault("size", []).append(str(error))
                continue
        if label.shape != (height, width):
            problems.setdefault("size", []).append(
                f"image {image_path} is {width}x{height} but its label {label_path} is {label.shape[1]}x{label.shape[0]}")
            continue
        undeclared = np.unique(label[~declared[label]]).tolist()
        if undeclared:
            problems.setdefault("undeclared", []).append(f"label file {label_path} holds raw ids {undeclared} that "
                                                          f"hierarchy {dataset.check_labels.hierarchy_name!r} does not declare")
        counts += np.bincount(label.ravel(), minlength=256)
        if len(sheet) < SHEET_SAMPLES:
            shown = dataset.relabel[label] if dataset.relabel is not None else label
            sheet.append([picture, colorize(np.where(declared[label], shown, dataset.hierarchy.ignore_index),
                                             dataset.hierarchy, -1)])
    return {"modes": modes, "sizes": sizes, "counts": counts, "problems": problems, "sheet": sheet}


def class_shares(dataset: ParsingDataset, counts: np.ndarray) -> list[tuple[str, float]]:
    """(finest class, share of labelled pixels), by the tree the labels are read as; coarse labels as 'set'."""
    mapped = np.zeros(256, np.int64)
    ids = np.arange(256)
    np.add.at(mapped, dataset.relabel[ids] if dataset.relabel is not None else ids, counts)
    table = dataset.hierarchy.label_table()[-1].numpy()
    names = dataset.hierarchy.class_names(-1)
    total = mapped[table != dataset.hierarchy.ignore_index].sum()
    shares = Counter()
    for raw in np.flatnonzero(mapped):
        entry = table[raw]
        if entry != dataset.hierarchy.ignore_index:
            shares[names[entry] if entry < len(names) else "(coarse label: a set of classes)"] += mapped[raw]
    return [(name, count / max(total, 1)) for name, count in shares.most_common()]


def report(dataset: ParsingDataset, result: dict[str, Any], orphans: list[Path]) -> tuple[list[str], list[str]]:
    """(lines describing the folder, one line per problem)."""
    lines = [f"{len(dataset.pairs)} image/label pairs, layout {dataset.layout.name}, split {dataset.split!r}, read as "
             f"hierarchy {dataset.hierarchy.name!r}" + (f" through {dataset.label_map.describe()}"
                                                         if dataset.label_map is not None else "")]
    lines.append("image modes: " + ", ".join(f"{mode} {count}" for mode, count in result["modes"].most_common()))
    lines.append("image sizes (WxH): " + ", ".join(f"{w}x{h} {count}" for (w, h), count
                                                    in result["sizes"].most_common(5))
                 + (f", {len(result['sizes']) - 5} more sizes" if len(result["sizes"]) > 5 else ""))
    seen = np.flatnonzero(result["counts"]).tolist()
    declared = np.flatnonzero(dataset.check_labels.declared).tolist()
    never = sorted(set(declared) - set(seen) - {dataset.hierarchy.ignore_index})
    lines.append(f"raw ids seen: {seen}" + (f"; declared but never seen: {never}" if never else ""))
    lines.append("pixel shares: " + ", ".join(f"{name} {100 * share:.1f}%" for name, share
                                              in class_shares(dataset, result["counts"])))
    problems = []
    for kind, found in result["problems"].items():
        problems += found[:SHOWN_PER_PROBLEM]
        if len(found) > SHOWN_PER_PROBLEM:
            problems.append(f"... and {len(found) - SHOWN_PER_PROBLEM} more files like that ({kind})")
    problems += [f"label file {path} has no image" for path in orphans[:SHOWN_PER_PROBLEM]]
    if len(orphans) > SHOWN_PER_PROBLEM:
        problems.append(f"... and {len(orphans) - SHOWN_PER_PROBLEM} more label files without an image")
    return lines, problems


# ---------------------------------------------------------------------- command
def add_check_data(subparsers) -> None:
    p = subparsers.add_parser("check-data", help="check a dataset folder before training: pairs, modes, sizes, ids",
                              description=__doc__.splitlines()[0])
    p.add_argument("root", help="dataset folder")
    p.add_argument("--layout", required=True, choices=sorted(LAYOUTS), help="how the folder is arranged")
    p.add_argument("--split", default="train", help="split to check (default train)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--hierarchy", help="the tree the labels are read as (default: the layout's own)")
    group.add_argument("--map", help="a label map reading the layout's ids as another tree (e.g. atr_to_lip)")
    p.add_argument("--sheet", metavar="PNG", help="contact sheet path (default check_<layout>_<split>.png)")
    p.set_defaults(func=run_check_data)


def run_check_data(args: argparse.Namespace) -> int:
    dataset = ParsingDataset(args.root, args.layout, args.split, hierarchy=args.hierarchy, label_map=args.map)
    result = scan(dataset)
    lines, problems = report(dataset, result, unmatched_labels(dataset))
    print("\n".join(lines))
    if result["sheet"]:
        sheet = Path(args.sheet or f"check_{args.layout}_{args.split}.png")
        save_panels(result["sheet"], ["image", f"label ({dataset.hierarchy.level_names[-1]})"], sheet)
        print(f"contact sheet: {sheet}")
    for problem in problems:
        print(f"problem: {problem}")
    print(f"{len(problems)} problems" if problems else "ready to train on")
    return 1 if problems else 0
