"""Pure-PyTorch reference of the fused ops: the obvious code, one level at a time.

Used by the tests as ground truth, by the benchmarks as the naive baseline, and as a fallback
when the native extension ``hierparse._C`` is not built.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

REDUCTIONS = ("none", "mean", "sum")


def check_labels(labels: torch.Tensor, table: torch.Tensor) -> None:
    """Raise ValueError unless ``labels`` are integer raw ids inside the table's 0..K-1."""
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor of raw ids, got {labels.dtype}")
    if table.dim() != 2:
        raise ValueError(f"table must be [L, K], got {list(table.shape)}")
    if labels.numel():
        low, high = int(labels.min()), int(labels.max())
        for raw in (low, high):
            if not 0 <= raw < table.shape[1]:
                raise ValueError(
                    f"labels contain raw id {raw} but the table covers 0..{table.shape[1] - 1}"
                )


def remap_labels(labels: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """int64 ``[L, N, H, W]``: each level's class index (or the table's ignore value) per pixel."""
    check_labels(labels, table)
    return table.to(labels.device, torch.int64)[:, labels.long()]


def multilevel_cross_entropy(
    logits: Sequence[torch.Tensor],
    labels: torch.Tensor,
    table: torch.Tensor,
    *,
    ignore_index: int = 255,
    level_weights: Sequence[float] | None = None,
    class_weights: Sequence[torch.Tensor | None] | None = None,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """Per-level ``F.cross_entropy`` on remapped labels; same contract as the fused op."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    targets = remap_labels(labels, table)
    out_dtype = torch.float64 if logits[0].dtype == torch.float64 else torch.float32
    losses = []
    for level, x in enumerate(logits):
        weight = class_weights[level] if class_weights is not None else None
        x = x.to(out_dtype)
        target = targets[level]
        loss = F.cross_entropy(
            x,
            target,
            weight=None if weight is None else weight.to(out_dtype),
            ignore_index=ignore_index,
            label_smoothing=label_smoothing,
            reduction=reduction,
        )
        if reduction == "mean" and not bool((target != ignore_index).any()):
            loss = (x * 0).sum()  # no valid pixel: 0 and a zero gradient instead of NaN
        scale = 1.0 if level_weights is None else float(level_weights[level])
        losses.append(loss * scale)
    return torch.stack(losses)
