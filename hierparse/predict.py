"""Prediction: from a model's per-level logits to class maps at the image size."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from hierparse.hierarchy import Hierarchy

DECODE_MODES = ("independent", "consistent")


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

    A single logit map for the finest level (a flat model) is also accepted: the coarse maps are
    then its prediction merged up the tree, in both modes.
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
        path_scores = sum(F.log_softmax(scores, dim=1).index_select(1, index)
                          for scores, index in zip(resized, chain))
        fine = path_scores.argmax(dim=1)
    return [index[fine] for index in chain]
