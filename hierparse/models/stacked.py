"""The stacked coarse-to-fine parser that a hierarchy generates (Hu et al., arXiv 1804.08256).

Layout (``L`` levels, coarse -> fine)::

    images -> backbone -> layer1 .. layer4 (deep features)
                                      |
                                    head  (one context head, run once, shared by all levels)
                                      |
            module 1: 1x1 classifier on the context                   -> logits of level 0
            module k: context (1x1 reduced) + scores of module k-1 (stack connection)
                      + skip stage (1x1 reduced, skip connection) -> 3x3 fuse -> 1x1 -> logits k

Fusion: module ``k > 1`` works at its skip stage's resolution (stride 4 for ``layer1``, 8 for
``layer2``); the reduced context and the previous scores are bilinearly resized to it. Without a
skip it works at the context's resolution. Reducing the context to a narrow width *before*
resizing, and sharing the one heavy head, keeps the cost of stacking to a few percent of the
flat model (``benchmarks/test_models.py``).

The flat baseline (``stacked=False``) is the same backbone and head with one module, the finest
level's classifier: PSPNet/DeepLab/FCN as published.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from hierparse.hierarchy import Hierarchy
from hierparse.models.backbones import STAGE_NAMES
from hierparse.models.heads import conv_bn_relu, resize

# Stages a skip connection may come from: all but the deepest, which feeds the head anyway.
SKIP_STAGES = STAGE_NAMES[:-1]


class ClassifierModule(nn.Module):
    """Module 1 (or the flat model's only module): a 1x1 classifier on the context features."""

    def __init__(self, context_channels: int, num_classes: int):
        super().__init__()
        self.classifier = nn.Conv2d(context_channels, num_classes, 1)

    def forward(self, context: torch.Tensor) -> torch.Tensor:
        return self.classifier(context)


class RefineModule(nn.Module):
    """Module k > 1: context, previous scores and an optional skip stage -> scores of level k."""

    def __init__(self, context_channels: int, previous_classes: int, skip_channels: int | None,
                 num_classes: int, width: int):
        super().__init__()
        skip_width = width // 2 if skip_channels else 0
        self.context = conv_bn_relu(context_channels, width)
        self.skip = conv_bn_relu(skip_channels, skip_width) if skip_channels else None
        self.fuse = conv_bn_relu(width + previous_classes + skip_width, width, 3)
        self.classifier = nn.Conv2d(width, num_classes, 1)

    def forward(self, context: torch.Tensor, previous: torch.Tensor,
                skip: torch.Tensor | None = None) -> torch.Tensor:
        size = (skip if skip is not None else context).shape[-2:]
        parts = [resize(self.context(context), size), resize(previous, size)]
        if skip is not None:
            parts.append(self.skip(skip))
        return self.classifier(self.fuse(torch.cat(parts, dim=1)))


def default_skips(num_levels: int) -> list[str]:
    """Skip stage per level 1..L-1: the finest gets ``layer1``, the next ``layer2``, then ``layer3``."""
    return [SKIP_STAGES[min(num_levels - 1 - level, len(SKIP_STAGES) - 1)]
            for level in range(1, num_levels)]


def resolve_skips(skips: Sequence[str | int | None] | bool | None, num_levels: int) -> list[str | None]:
    """Normalise ``skips`` to one stage name (or None) per level 1..L-1.

    ``None`` or ``True``: :func:`default_skips`. ``False`` or ``[]``: no skip connections at all
    (the "stacked without skips" ablation). Otherwise one entry per level after the first, each a
    stage name (``"layer1"``), a stage number (``1``) or ``None`` for no skip at that level.
    """
    count = num_levels - 1
    if skips is None or skips is True:
        return default_skips(num_levels)
    if skips is False or (not isinstance(skips, str) and len(skips) == 0):
        return [None] * count
    if isinstance(skips, str) or len(skips) != count:
        raise ValueError(
            f"skips needs one entry per level after the first ({count}), got {skips!r}"
        )
    resolved = []
    for level, stage in enumerate(skips, start=1):
        if isinstance(stage, int) and not isinstance(stage, bool) and 1 <= stage <= len(SKIP_STAGES):
            stage = STAGE_NAMES[stage - 1]
        if stage is not None and stage not in SKIP_STAGES:
            raise ValueError(
                f"skip of level {level}: unknown stage {stage!r}; choices: "
                f"{', '.join(SKIP_STAGES)} (or 1-{len(SKIP_STAGES)}, or None for no skip)"
            )
        resolved.append(stage)
    return resolved


class StackedParser(nn.Module):
    """Backbone, shared context head and one module per predicted level, coarse to fine.

    ``forward(images)`` returns a list of logits, one per level (one, the finest, when flat), each
    at its module's own resolution; upsampling is left to the loss and to :func:`decode`.
    """

    def __init__(self, hierarchy: Hierarchy, backbone: nn.Module, head: nn.Module, *,
                 stacked: bool = True, skips: list[str | None] | None = None,
                 backbone_name: str = "", head_name: str = "", output_stride: int = 8):
        super().__init__()
        self.hierarchy = hierarchy
        self.stacked = stacked
        levels = range(hierarchy.num_levels) if stacked else [hierarchy.num_levels - 1]
        self.level_names = [hierarchy.level_names[level] for level in levels]
        self.num_classes = [hierarchy.num_classes[level] for level in levels]
        self.skips = [None] + list(skips or [None] * (len(self.num_classes) - 1))
        self.backbone_name, self.head_name, self.output_stride = backbone_name, head_name, output_stride
        self.backbone = backbone
        self.head = head
        width = min(64, head.out_channels // 2)
        stage_channels = dict(zip(STAGE_NAMES, backbone.stage_channels))
        modules: list[nn.Module] = [ClassifierModule(head.out_channels, self.num_classes[0])]
        for level in range(1, len(self.num_classes)):
            skip = self.skips[level]
            modules.append(RefineModule(head.out_channels, self.num_classes[level - 1],
                                        stage_channels[skip] if skip else None,
                                        self.num_classes[level], width))
        self.levels = nn.ModuleList(modules)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        stages = dict(zip(STAGE_NAMES, self.backbone(images)))
        context = self.head(stages[STAGE_NAMES[-1]])
        logits = [self.levels[0](context)]
        for module, skip in zip(self.levels[1:], self.skips[1:]):
            logits.append(module(context, logits[-1], stages[skip] if skip else None))
        return logits
