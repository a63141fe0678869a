"""The stacked coarse-to-fine parser that a hierarchy generates (Hu et al., arXiv 1804.08256).

Layout (``L`` levels, coarse -> fine)::

    images -> backbone -> layer1 .. layer4 (deep features)
                                      |
                                    head  (one context head, run once, shared by all levels)
                                      |
            module 1: 1x1 classifier on the context                              -> logits of level 0
            module k: 1x1 classifier on the context (the base network's own path)
                      + refinement( context projected to ``module_width`` channels,
                                    scores of module k-1      (stack connection),
                                    skip stage reduced        (skip connection) ) -> logits of level k

As in the authors' ``PSPNet_Stack``, every module sees the full context, so the finest module is
never narrower than the flat model's classifier: it *is* that classifier plus a residual
refinement (two 3x3 convolutions, last layer initialised to zero) at the skip stage's resolution
(stride 4 for ``layer1``, 8 for ``layer2``; the context's without a skip). The refinement starts as
a no-op, so the stacked model contains the flat model's function: at initialisation its finest
output is the flat classifier's scores, upsampled.

The flat baseline (``stacked=False``) is the same backbone and head with one module, the finest
level's classifier: PSPNet/DeepLab/FCN as published. ``stacked=False, skips=["layer1"]`` adds the
same skip refinement without the stack (a plain decoder), to tell skips and stacking apart.
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
# Channels of each refinement branch (measured in benchmarks/RESULTS.md, "Module width").
DEFAULT_MODULE_WIDTH = 64


class LevelModule(nn.Module):
    """One level's segmentation module: the base network's classifier, plus an optional refinement.

    ``classifier`` is the flat model's 1x1 classifier on the full context, unchanged. When the
    module also gets the previous module's scores (stack connection) and/or a skip stage, a
    refinement branch fuses ``[context projected to width, scores, skip projected to width/2]`` with
    two 3x3 convolutions at the skip's resolution (the context's without a skip) and *adds* its
    scores to the upsampled classifier scores. The branch's last convolution starts at zero, so the
    refinement starts as a no-op: stacking adds inputs and takes nothing away.
    """

    def __init__(self, context_channels: int, num_classes: int, *, previous_classes: int = 0,
                 skip_channels: int | None = None, width: int = DEFAULT_MODULE_WIDTH):
        super().__init__()
        self.classifier = nn.Conv2d(context_channels, num_classes, 1)
        self.takes_scores = previous_classes > 0
        self.takes_skip = bool(skip_channels)
        self.refine = None
        if self.takes_scores or self.takes_skip:
            skip_width = width // 2 if skip_channels else 0
            self.context_reduce = conv_bn_relu(context_channels, width)
            self.skip_reduce = conv_bn_relu(skip_channels, skip_width) if skip_channels else None
            self.refine = nn.Sequential(conv_bn_relu(width + previous_classes + skip_width, width, 3),
                                        conv_bn_relu(width, width, 3),
                                        nn.Conv2d(width, num_classes, 1))
            nn.init.zeros_(self.refine[-1].weight)
            nn.init.zeros_(self.refine[-1].bias)

    def forward(self, context: torch.Tensor, previous: torch.Tensor | None = None,
                skip: torch.Tensor | None = None) -> torch.Tensor:
        scores = self.classifier(context)
        if self.refine is None:
            return scores
        size = (skip if skip is not None else context).shape[-2:]
        parts = [resize(self.context_reduce(context), size)]
        if self.takes_scores:
            parts.append(resize(previous, size))
        if self.takes_skip:
            parts.append(self.skip_reduce(skip))
        return resize(scores, size) + self.refine(torch.cat(parts, dim=1))


def default_skips(num_levels: int) -> list[str]:
    """Skip stage per level 1..L-1: the finest gets ``layer1``, the next ``layer2``, then ``layer3``."""
    return [SKIP_STAGES[min(num_levels - 1 - level, len(SKIP_STAGES) - 1)]
            for level in range(1, num_levels)]


def resolve_skips(skips: Sequence[str | int | None] | bool | None, num_levels: int,
                  stacked: bool = True) -> list[str | None]:
    """Normalise ``skips`` to one stage name (or None) per module.

    Stacked: ``None`` or ``True`` give :func:`default_skips`; ``False`` or ``[]`` no skip
    connections (the "stacked without skips" ablation); otherwise one entry per level after the
    first, each a stage name (``"layer1"``), a stage number (``1``) or ``None`` for no skip. The
    first module never has one. Flat: no skip by default (the base network as published), or one
    entry for its only module (``["layer1"]``: the "flat + skip" decoder, the same skip without the
    stack).
    """
    count = num_levels - 1 if stacked else 1
    which = "level after the first" if stacked else "module of the flat model"
    if skips is None or skips is True:
        return [None, *default_skips(num_levels)] if stacked else [None]
    if skips is False or (not isinstance(skips, str) and len(skips) == 0):
        return [None] * (count + stacked)
    if isinstance(skips, str) or len(skips) != count:
        raise ValueError(f"skips needs one entry per {which} ({count}), got {skips!r}")
    resolved = []
    for level, stage in enumerate(skips, start=num_levels - count):
        if isinstance(stage, int) and not isinstance(stage, bool) and 1 <= stage <= len(SKIP_STAGES):
            stage = STAGE_NAMES[stage - 1]
        if stage is not None and stage not in SKIP_STAGES:
            raise ValueError(
                f"skip of level {level}: unknown stage {stage!r}; choices: "
                f"{', '.join(SKIP_STAGES)} (or 1-{len(SKIP_STAGES)}, or None for no skip)"
            )
        resolved.append(stage)
    return [None] * stacked + resolved


class StackedParser(nn.Module):
    """Backbone, shared context head and one module per predicted level, coarse to fine.

    ``forward(images)`` returns a list of logits, one per level (one, the finest, when flat), each
    at its module's own resolution; upsampling is left to the loss and to :func:`decode`.
    ``skips``: one stage name (or None) per module; the first module of a stacked model has none.
    """

    def __init__(self, hierarchy: Hierarchy, backbone: nn.Module, head: nn.Module, *,
                 stacked: bool = True, skips: Sequence[str | None] | None = None,
                 module_width: int = DEFAULT_MODULE_WIDTH, backbone_name: str = "", head_name: str = "",
                 output_stride: int = 8):
        super().__init__()
        self.hierarchy = hierarchy
        self.stacked = stacked
        levels = range(hierarchy.num_levels) if stacked else [hierarchy.num_levels - 1]
        self.level_names = [hierarchy.level_names[level] for level in levels]
        self.num_classes = [hierarchy.num_classes[level] for level in levels]
        self.skips = list(skips) if skips is not None else [None] * len(self.num_classes)
        if len(self.skips) != len(self.num_classes):
            raise ValueError(f"got {len(self.skips)} skip entries for {len(self.num_classes)} modules")
        self.module_width = module_width
        self.backbone_name, self.head_name, self.output_stride = backbone_name, head_name, output_stride
        self.backbone = backbone
        self.head = head
        stage_channels = dict(zip(STAGE_NAMES, backbone.stage_channels))
        self.levels = nn.ModuleList(
            LevelModule(head.out_channels, classes, previous_classes=self.num_classes[k - 1] if k else 0,
                        skip_channels=stage_channels[skip] if skip else None, width=module_width)
            for k, (classes, skip) in enumerate(zip(self.num_classes, self.skips))
        )

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        stages = dict(zip(STAGE_NAMES, self.backbone(images)))
        context = self.head(stages[STAGE_NAMES[-1]])
        logits: list[torch.Tensor] = []
        for module, skip in zip(self.levels, self.skips):
            logits.append(module(context, logits[-1] if logits else None, stages[skip] if skip else None))
        return logits
