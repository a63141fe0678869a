"""Prediction: from a model's per-level logits to class maps at the image size; ``hierparse predict``."""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from hierparse.data import eval_transform, read_image
from hierparse.engine import distributed
from hierparse.engine.checkpoint import model_from_checkpoint
from hierparse.engine.io import atomic_write, writable_dir
from hierparse.engine.visualize import paint, save_panels
from hierparse.hierarchy import Hierarchy
from hierparse.losses import check_decode
from hierparse.models import StackedParser

DECODE_MODES = ("independent", "consistent", "tree")


def ancestors(hierarchy: Hierarchy) -> list[torch.Tensor]:
    """int64 per level: for each finest class, the index of the class containing it at that level."""
    chain = [torch.arange(hierarchy.num_classes[-1])]
    for level in range(hierarchy.num_levels - 1, 0, -1):
        chain.insert(0, torch.tensor(hierarchy.parents(level))[chain[0]])
    return chain


def decode(
    logits: Sequence[torch.Tensor],
    hierarchy: Hierarchy,
    size: int | tuple[int, int],
    mode: str = "independent",
) -> list[torch.Tensor]:
    """Per-level class maps (int64 ``[N, H, W]``, coarse -> fine) from per-level logits.

    Each ``[N, C_level, h, w]`` logit map is first resized bilinearly to ``size``.

    ``independent``: argmax at every level on its own; levels may disagree.

    ``consistent``: the most probable root-to-leaf path. Each finest class scores the sum of the
    log-softmax of every level at its ancestor (a product of probabilities down the tree), the
    best finest class wins and the coarse maps are its ancestors, so a fine class's parent always
    equals the prediction above it. Chosen over restricting each level to the children of the
    coarser argmax because that greedy rule can never undo a coarse mistake: a pixel the coarse
    module puts, at 51%, in the wrong region has no chance even when the fine module is sure; the
    path product weighs all levels' evidence at the same cost (one gather and sum per level).

    ``tree``: for models trained with the tree-min loss (``loss: tree_min``), whose logits are
    per-node sigmoid scores ``s``: HSSN's top-scoring root-to-leaf path, each finest class scoring
    the sum of ``s`` over its path. The same path search as ``consistent`` with per-node sigmoid
    scores added instead of per-level log-softmax probabilities: the tree-min loss trains every node
    as its own yes/no question (a child's score bounded by its parent's), not the classes of a level
    against each other.

    A single logit map for the finest level (a flat model) is also accepted: the coarse maps are
    then its prediction merged up the tree, in every mode.
    """
    if mode not in DECODE_MODES:
        raise ValueError(f"unknown decode mode {mode!r}; choices: {', '.join(DECODE_MODES)}")
    logits = list(logits)
    flat = len(logits) == 1 and hierarchy.num_levels > 1
    expected = hierarchy.num_classes[-1:] if flat else hierarchy.num_classes
    if len(logits) != len(expected):
        raise ValueError(
            f"hierarchy {hierarchy.name!r} has {hierarchy.num_levels} levels; got {len(logits)} "
            f"logit maps (expected one per level, or one for the finest level)"
        )
    for level, (scores, classes) in enumerate(zip(logits, expected)):
        if scores.dim() != 4 or scores.shape[1] != classes:
            raise ValueError(
                f"logits of level {level} have shape {tuple(scores.shape)}; expected "
                f"[N, {classes}, h, w] for hierarchy {hierarchy.name!r}"
            )
    size = (size, size) if isinstance(size, int) else tuple(size)
    resized = [F.interpolate(scores.float(), size=size, mode="bilinear", align_corners=False)
               for scores in logits]
    if mode == "independent" and not flat:
        return [scores.argmax(dim=1) for scores in resized]
    chain = [index.to(resized[0].device) for index in ancestors(hierarchy)]
    if flat:
        fine = resized[0].argmax(dim=1)
    else:
        node_scores = torch.sigmoid if mode == "tree" else partial(F.log_softmax, dim=1)
        path_scores = sum(node_scores(scores).index_select(1, index) for scores, index in zip(resized, chain))
        fine = path_scores.argmax(dim=1)
    return [index[fine] for index in chain]


@torch.no_grad()
def predict_batch(model: StackedParser, images: torch.Tensor, hierarchy: Hierarchy, size: tuple[int, int],
                  mode: str = "independent") -> list[torch.Tensor]:
    """Per-level class maps ``[N, H, W]`` (coarse -> fine) of a batch of normalised images, decoded at ``size``."""
    return decode(model(images), hierarchy, size, mode)


def save_png(array: np.ndarray, path: Path) -> None:
    """An RGB or single-channel uint8 array as a PNG, atomically."""
    atomic_write(path, lambda temporary: Image.fromarray(array).save(temporary, format="PNG"))


# ---------------------------------------------------------------------- command
def add_predict(subparsers) -> None:
    p = subparsers.add_parser(
        "predict", help="parse images with a checkpoint: colour PNG per level, raw-id PNG, side-by-side figure")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    p.add_argument("--checkpoint", required=True, help="a checkpoint written by hierparse train")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created if needed)")
    p.add_argument("--decode", choices=DECODE_MODES, help="decoding (default: the run's)")
    p.add_argument("--size", type=int, metavar="N",
                   help="the network sees the image resized to NxN (default: the run's eval_size; 0: native); "
                        "outputs always have the image's own size")
    p.add_argument("--hierarchy", help="expected hierarchy; a checkpoint trained for another one is an error")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.set_defaults(func=run_predict)


def run_predict(args: argparse.Namespace) -> int:
    device = distributed.resolve_device(args.device)
    model, hierarchy, checkpoint = model_from_checkpoint(args.checkpoint, device, args.hierarchy)
    decode_mode = args.decode or checkpoint["config"]["decode"]
    check_decode(checkpoint["config"].get("loss", "softmax"), decode_mode)
    paths = [Path(image) for image in args.images]
    stems = [path.stem for path in paths]
    repeated = sorted({stem for stem in stems if stems.count(stem) > 1})
    if repeated:
        raise ValueError(f"several images are named {repeated[0]!r}; their outputs would overwrite each other")
    images = [read_image(path) for path in paths]  # every input is readable before anything is written
    out = writable_dir(args.out)
    size = checkpoint["config"]["eval_size"] if args.size is None else args.size or None
    transform = eval_transform(hierarchy, size, mode="resize" if size else "none")

    for path, image in zip(paths, images):
        sample = transform({"image": image, "label": np.zeros(image.shape[:2], np.uint8), "path": str(path)})
        preds = predict_batch(model, sample["image"][None].to(device), hierarchy, image.shape[:2], decode_mode)
        painted = [paint(pred[0].cpu(), hierarchy, level) for level, pred in enumerate(preds)]
        for name, picture in zip(hierarchy.level_names, painted):
            save_png(picture, out / f"{path.stem}_{name}.png")
        save_png(hierarchy.to_raw(preds[-1][0].cpu()).numpy(), out / f"{path.stem}_raw.png")
        save_panels([[image, *painted]], ["image", *hierarchy.level_names], out / f"{path.stem}_figure.png",
                    panel_inches=2.5)
        print(f"{path}: {', '.join(f'{path.stem}_{name}.png' for name in hierarchy.level_names)}, "
              f"{path.stem}_raw.png, {path.stem}_figure.png")
    print(f"wrote {len(paths) * (hierarchy.num_levels + 2)} files to {out}")
    return 0
