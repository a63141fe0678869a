"""The training objective of a stacked parser, from one fused op over all levels: every level's
softmax cross-entropy (optionally on the hard pixels only, OHEM), or HSSN's tree-min loss."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from hierparse import ops
from hierparse.hierarchy import Hierarchy, load_hierarchy


LOSSES = ("softmax", "tree_min")
# What a label naming a group does at the levels finer than the group (see HierarchicalLoss).
COARSE_LABELS = ("marginal", "balanced", "ignore")
# The decodings that read a model's scores the way its loss trained them: "consistent" multiplies
# per-level softmax probabilities, "tree" adds per-node sigmoid scores (hierparse.predict.decode).
DECODES_OF_LOSS = {"softmax": ("independent", "consistent"), "tree_min": ("independent", "tree")}


def check_decode(loss: str, decode: str) -> None:
    """Raise a one-line ValueError unless ``decode`` fits a model trained with ``loss``."""
    if decode not in DECODES_OF_LOSS[loss]:
        raise ValueError(f"decode {decode!r} does not fit a model trained with loss {loss!r}; "
                         f"use {' or '.join(DECODES_OF_LOSS[loss])}")


def check_loss_options(loss: str, *, focal_gamma: float = 0.0, class_weights: Any = None,
                       label_smoothing: float = 0.0, ohem: Any = None) -> None:
    """Raise a one-line ValueError for an unknown loss or an option that the loss does not take."""
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")
    if focal_gamma < 0 or (focal_gamma and loss != "tree_min"):
        raise ValueError(f"focal_gamma must be >= 0 and applies to loss tree_min only, got {focal_gamma!r} "
                         f"with loss {loss!r}")
    if loss == "tree_min":
        unused = [name for name, value in (("class_weights", class_weights), ("label_smoothing", label_smoothing),
                                           ("ohem", ohem)) if value]
        if unused:
            hint = "; set ohem null (it is on by default)" if "ohem" in unused else ""
            raise ValueError(f"{' and '.join(unused)}: for loss softmax only, not tree_min{hint}")


def fine_level_weights(num_levels: int) -> list[float]:
    """Each level weighs half as much as the next finer one: ``[0.25, 0.5, 1]`` for three levels.

    The finest level carries over half of the objective and the coarse levels still supervise the
    shared encoder; measured in benchmarks/RESULTS.md ("Study").
    """
    return [0.5 ** (num_levels - 1 - level) for level in range(num_levels)]


def balanced_members(hierarchy: Hierarchy, class_pixels: torch.Tensor) -> torch.Tensor:
    """``Hierarchy.set_members()`` with each member weighed by ``min share / its share`` of its set's
    pixels, shares counted (plus one) from ``class_pixels`` (``[256]``: pixels per raw id)."""
    if class_pixels.shape != (256,):
        raise ValueError(f"class_pixels must hold one count per raw id (256), got {list(class_pixels.shape)}")
    members = hierarchy.set_members()
    exact = hierarchy.exact_table()
    for level in range(hierarchy.num_levels):
        classes = hierarchy.num_classes[level]
        valid = exact[level] < classes
        counts = torch.zeros(classes, dtype=torch.float64).index_add_(0, exact[level][valid],
                                                                      class_pixels[valid].double()) + 1
        for row in members[level]:
            inside = row[:classes] > 0
            if inside.any():
                share = counts / counts[inside].sum()
                row[:classes] = torch.where(inside, share[inside].min() / share, 0).float()
    return members


@dataclass(frozen=True)
class OHEM:
    """Online hard example mining of pixels, as mmsegmentation's ``OHEMPixelSampler``, inside the
    fused op (``hierparse.ops.ohem_cross_entropy``).

    Per level, a valid pixel is kept when the softmax probability of its target class is below
    ``max(threshold, p_k)``, where ``p_k`` is the ``k``-th smallest target probability of the batch
    and ``k = min_kept * batch size`` (so at least ``k`` pixels are kept when there are that many).
    The probabilities are the plain softmax, whatever the class weights or label smoothing; for a
    pixel labelled with a class set, the summed probability of the set (weighed by its member
    weights, for ``coarse_labels="balanced"``).
    """

    threshold: float = 0.7
    min_kept: int = 3000   # the config's default too (tests/test_losses.py holds them equal)

    @classmethod
    def from_config(cls, options: dict[str, Any] | None) -> "OHEM | None":
        """``{threshold: 0.7, min_kept: 3000}`` (a key left out takes that default) or None; one-line errors."""
        if options is None:
            return None
        if not isinstance(options, dict) or set(options) - {"threshold", "min_kept"}:
            raise ValueError(f"ohem must be null or a mapping with threshold and min_kept, got {options!r}")
        ohem = cls(**options)
        threshold, kept = ohem.threshold, ohem.min_kept
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold <= 1:
            raise ValueError(f"ohem threshold must be a probability in (0, 1], got {threshold!r}")
        if isinstance(kept, bool) or not isinstance(kept, int) or kept < 0:
            raise ValueError(f"ohem min_kept must be a whole number >= 0, got {kept!r}")
        return ohem


def resolve_level_weights(level_weights: Sequence[float] | str | None, hierarchy: Hierarchy) -> list[float] | None:
    """One float per level from a list, ``"fine"`` (:func:`fine_level_weights`) or None (all 1)."""
    levels = hierarchy.num_levels
    if isinstance(level_weights, str):
        if level_weights != "fine":
            raise ValueError(f"level_weights must be a list, null or 'fine', got {level_weights!r}")
        level_weights = fine_level_weights(levels)
    if level_weights is not None and len(level_weights) != levels:
        raise ValueError(f"got {len(level_weights)} level weights for the {levels} levels of {hierarchy.name!r}")
    return None if level_weights is None else [float(w) for w in level_weights]


def class_weight_tensors(class_weights: Sequence[torch.Tensor | Sequence[float] | None] | None,
                         hierarchy: Hierarchy) -> list[torch.Tensor]:
    """float32 ``[C_l]`` per level on the CPU (ones for a None entry); an empty list for no class weights."""
    if class_weights is None:
        return []
    if len(class_weights) != hierarchy.num_levels:
        raise ValueError(f"got {len(class_weights)} class-weight entries for the {hierarchy.num_levels} levels "
                         f"of {hierarchy.name!r}")
    tensors = []
    for level, weights in enumerate(class_weights):
        count = hierarchy.num_classes[level]
        tensor = torch.ones(count) if weights is None else torch.as_tensor(weights).to("cpu", torch.float32)
        if tensor.shape != (count,):
            raise ValueError(f"class weights of level {level} ({hierarchy.level_names[level]}) have "
                             f"{tensor.numel()} entries but the level has {count} classes")
        tensors.append(tensor)
    return tensors


class HierarchicalLoss(nn.Module):
    """Per-level losses of a stacked model's logits against raw uint8 labels.

    All levels go through one fused op with the hierarchy's label table, each level's logits scored
    as if upsampled (bilinear, ``align_corners=False``) to the label size: ``loss="softmax"``, the
    per-level softmax cross-entropy (``hierparse.ops.multilevel_cross_entropy``, which upsamples
    inside the op, so no full-resolution logits are stored); ``loss="tree_min"``, HSSN's tree-min
    loss over the hierarchy's class tree (``hierparse.ops.tree_min_loss``, every level's logits read
    as per-node sigmoid scores, ``focal_gamma`` its focal exponent; it needs one output per level and
    takes no class weights, label smoothing or OHEM). ``forward`` returns the per-level losses ``[L]``
    (level weights applied); the objective is their sum.
    ``level_weights``: one per level, None for all 1, or ``"fine"`` (:func:`fine_level_weights`).
    A flat model (one output for the finest level) is scored on the finest level only.
    ``ohem``: train every level on its hard pixels only (:class:`OHEM`); each level's loss is then
    the mean over the pixels it keeps.
    ``coarse_labels``: what a label naming a group (a coarse label) does at the finer levels:
    ``"marginal"``, the softmax loss scores the summed probability of the group's classes there;
    ``"balanced"``, the same sum with each class weighed by the inverse of its share of the set's
    pixels in exactly labelled data (``class_pixels``, raw id -> pixel count; the rarest member
    weighs 1): ``-log sum_c a_c p_c``, so the rich-get-richer pull of the plain marginal towards
    the set's majority class is undone; ``"ignore"``, nothing (it trains its own level and the
    coarser ones only).
    """

    def __init__(
        self,
        hierarchy: Hierarchy | str,
        *,
        level_weights: Sequence[float] | str | None = None,
        class_weights: Sequence[torch.Tensor | Sequence[float] | None] | None = None,
        label_smoothing: float = 0.0,
        ohem: OHEM | None = None,
        loss: str = "softmax",
        focal_gamma: float = 0.0,
        coarse_labels: str = "marginal",
        class_pixels: Sequence[int] | torch.Tensor | None = None,
    ):
        super().__init__()
        if coarse_labels not in COARSE_LABELS:
            raise ValueError(f"coarse_labels must be one of {', '.join(COARSE_LABELS)}, got {coarse_labels!r}")
        check_loss_options(loss, focal_gamma=focal_gamma, class_weights=class_weights,
                           label_smoothing=label_smoothing, ohem=ohem)
        self.kind, self.focal_gamma, self.ohem = loss, float(focal_gamma), ohem
        self.hierarchy = load_hierarchy(hierarchy)
        levels = self.hierarchy.num_levels
        self.parents = [self.hierarchy.parents(level) for level in range(1, levels)]
        self.level_weights = resolve_level_weights(level_weights, self.hierarchy)
        self.label_smoothing = float(label_smoothing)
        # The tables stay on the CPU whatever the module's device: the op reads them on the host
        # anyway and copies them to the logits' device itself, without a host sync.
        self.table = self.hierarchy.exact_table() if coarse_labels == "ignore" else self.hierarchy.label_table()
        self.set_members = self.hierarchy.set_members()
        if coarse_labels == "balanced":
            if class_pixels is None:
                raise ValueError("coarse_labels balanced needs the pixel counts of exactly labelled data (class_pixels)")
            self.set_members = balanced_members(self.hierarchy, torch.as_tensor(class_pixels))
        self.class_weights = class_weight_tensors(class_weights, self.hierarchy)

    def forward(self, logits: Sequence[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        levels = self.hierarchy.num_levels
        if len(logits) == levels:
            chosen = list(range(levels))
        elif len(logits) == 1 and self.kind == "softmax":
            chosen = [levels - 1]
        else:
            raise ValueError(
                f"got {len(logits)} levels of logits; hierarchy {self.hierarchy.name!r} has {levels} "
                + ("(or give 1 for a flat model)" if self.kind == "softmax" else
                   "(loss tree_min needs one output per level: stacked true)")
            )
        table, set_members = self.table[chosen], self.set_members[chosen] if self.set_members.shape[1] else None
        # The tree-min op takes logits at the labels' size only (for now).
        if self.kind == "tree_min":
            size = labels.shape[-2:]
            logits = [
                x if x.shape[-2:] == size else F.interpolate(x, size=size, mode="bilinear", align_corners=False)
                for x in logits
            ]
        if self.kind == "tree_min":
            return ops.tree_min_loss(logits, labels, table, self.parents, ignore_index=self.hierarchy.ignore_index,
                                     focal_gamma=self.focal_gamma, level_weights=self.level_weights,
                                     set_members=set_members)
        options = dict(
            ignore_index=self.hierarchy.ignore_index,
            level_weights=None if self.level_weights is None else [self.level_weights[l] for l in chosen],
            class_weights=[self.class_weights[l] for l in chosen] if self.class_weights else None,
            label_smoothing=self.label_smoothing,
            set_members=set_members,
        )
        if self.ohem is None:
            return ops.multilevel_cross_entropy(logits, labels, table, **options)
        return ops.ohem_cross_entropy(logits, labels, table, threshold=self.ohem.threshold,
                                      min_kept=self.ohem.min_kept, **options)
