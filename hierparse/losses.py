"""The training objective of a stacked parser: every level's cross-entropy from one fused op."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from hierparse import ops
from hierparse.hierarchy import Hierarchy, load_hierarchy


class HierarchicalLoss(nn.Module):
    """Per-level softmax cross-entropy of a stacked model's logits against raw uint8 labels.

    Each level's logits are upsampled (bilinear) to the label size, then all levels go through
    ``hierparse.ops.multilevel_cross_entropy`` with the hierarchy's label table. ``forward``
    returns the per-level losses ``[L]`` (level weights applied); the objective is their sum.
    A flat model (one output for the finest level) is scored on the finest level only.
    """

    def __init__(
        self,
        hierarchy: Hierarchy | str,
        *,
        level_weights: Sequence[float] | None = None,
        class_weights: Sequence[torch.Tensor | Sequence[float] | None] | None = None,
        label_smoothing: float = 0.0,
    ):
        super().__init__()
        self.hierarchy = load_hierarchy(hierarchy)
        levels = self.hierarchy.num_levels
        if level_weights is not None and len(level_weights) != levels:
            raise ValueError(f"got {len(level_weights)} level weights for the {levels} levels of {self.hierarchy.name!r}")
        if class_weights is not None and len(class_weights) != levels:
            raise ValueError(f"got {len(class_weights)} class-weight entries for the {levels} levels of {self.hierarchy.name!r}")
        self.level_weights = None if level_weights is None else [float(w) for w in level_weights]
        self.label_smoothing = float(label_smoothing)
        self.register_buffer("table", self.hierarchy.label_table(), persistent=False)
        self._class_weight_names = []
        for level, weights in enumerate(class_weights or []):
            count = self.hierarchy.num_classes[level]
            tensor = torch.ones(count) if weights is None else torch.as_tensor(weights, dtype=torch.float32)
            if tensor.shape != (count,):
                raise ValueError(
                    f"class weights of level {level} ({self.hierarchy.level_names[level]}) have "
                    f"{tensor.numel()} entries but the level has {count} classes"
                )
            name = f"class_weights_{level}"
            self.register_buffer(name, tensor, persistent=False)
            self._class_weight_names.append(name)

    def forward(self, logits: Sequence[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        levels = self.hierarchy.num_levels
        if len(logits) == levels:
            chosen = list(range(levels))
        elif len(logits) == 1:
            chosen = [levels - 1]
        else:
            raise ValueError(
                f"got {len(logits)} levels of logits; hierarchy {self.hierarchy.name!r} has {levels} "
                f"(or give 1 for a flat model)"
            )
        size = labels.shape[-2:]
        upsampled = [
            x if x.shape[-2:] == size else F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            for x in logits
        ]
        return ops.multilevel_cross_entropy(
            upsampled,
            labels,
            self.table[chosen],
            ignore_index=self.hierarchy.ignore_index,
            level_weights=None if self.level_weights is None else [self.level_weights[l] for l in chosen],
            class_weights=[getattr(self, self._class_weight_names[l]) for l in chosen]
            if self._class_weight_names
            else None,
            label_smoothing=self.label_smoothing,
        )
