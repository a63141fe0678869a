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


def set_cross_entropy(x: torch.Tensor, entry: torch.Tensor, members: torch.Tensor, *, ignore_index: int,
                      weight: torch.Tensor | None, label_smoothing: float) -> torch.Tensor:
    """Per-pixel loss ``[N, H, W]`` of one level whose targets ``entry`` may name class sets
    (``C + s``): ``-log sum_c members[s, c] softmax(x)_c`` for a set, weighed by its members' mean class
    weight, plus the smoothing term of ``F.cross_entropy``; 0 at ignored pixels."""
    classes = x.shape[1]
    rows, weight, target_weight = _target_rows(x, members, weight)
    valid = entry != ignore_index
    safe = torch.where(valid, entry, 0)
    member = rows[safe].permute(0, 3, 1, 2)  # [N, C, H, W]
    log_p = torch.log_softmax(x, 1)
    nll = -torch.logsumexp(log_p + torch.log(member), 1)
    smooth = -(log_p * weight.view(1, -1, 1, 1)).sum(1) / classes
    loss = (1 - label_smoothing) * target_weight[safe] * nll
    if label_smoothing:  # as F.cross_entropy: no smoothing term at all without smoothing (0 * inf is NaN)
        loss = loss + label_smoothing * smooth
    return torch.where(valid, loss, 0)


def _target_rows(x: torch.Tensor, members: torch.Tensor, weight: torch.Tensor | None):
    """Member weights of every table entry ``[C + S, C]`` (one-hot classes, then the sets), the class
    weights ``[C]`` and each entry's class weight ``[C + S]``, in the logits' type."""
    classes = x.shape[1]
    weight = torch.ones(classes, dtype=x.dtype, device=x.device) if weight is None else weight.to(x)
    rows = torch.cat([torch.eye(classes, dtype=x.dtype, device=x.device), members[:, :classes].to(x)])
    return rows, weight, (rows @ weight) / rows.sum(1)


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
    align_corners: bool = False,
    set_members: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-level ``F.cross_entropy`` on remapped labels, after ``F.interpolate`` (bilinear) of logits
    smaller than the labels; levels whose table names class sets go through :func:`set_cross_entropy`
    (mean: divided by the targets' summed class weights); same contract as the fused op."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    targets = remap_labels(labels, table)
    out_dtype = torch.float64 if logits[0].dtype == torch.float64 else torch.float32
    size = labels.shape[-2:]
    losses = []
    for level, x in enumerate(logits):
        weight = class_weights[level] if class_weights is not None else None
        if x.shape[-2:] != size:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=align_corners)
        x = x.to(out_dtype)
        target = targets[level]
        if bool(((target >= x.shape[1]) & (target != ignore_index)).any()):
            if set_members is None:
                raise ValueError(f"level {level}: the table names class sets but no set_members were given")
            loss = _set_level_loss(x, target, set_members[level], weight, ignore_index=ignore_index,
                                   label_smoothing=label_smoothing, reduction=reduction)
            scale = 1.0 if level_weights is None else float(level_weights[level])
            losses.append(loss * scale)
            continue
        loss = F.cross_entropy(
            x,
            target,
            weight=None if weight is None else weight.to(x),
            ignore_index=ignore_index,
            label_smoothing=label_smoothing,
            reduction=reduction,
        )
        if reduction == "mean" and not bool((target != ignore_index).any()):
            loss = (x * 0).sum()  # no valid pixel: 0 and a zero gradient instead of NaN
        scale = 1.0 if level_weights is None else float(level_weights[level])
        losses.append(loss * scale)
    return torch.stack(losses)


def ohem_kept(target_probability: torch.Tensor, valid: torch.Tensor, threshold: float, min_kept: int) -> torch.Tensor:
    """Boolean mask ``[N, H, W]`` of the pixels OHEM keeps at one level: the valid pixels whose target
    probability is below ``max(threshold, p_k)``, ``p_k`` the ``min(min_kept * N, valid - 1)``-th
    smallest (from 0) of the valid pixels' probabilities."""
    valid_probability = target_probability[valid]
    if valid_probability.numel() == 0:
        return valid
    position = min(min_kept * target_probability.shape[0], valid_probability.numel() - 1)
    floor = valid_probability.kthvalue(position + 1).values
    return valid & (target_probability < torch.clamp(floor, min=threshold))


def ohem_cross_entropy(
    logits: Sequence[torch.Tensor],
    labels: torch.Tensor,
    table: torch.Tensor,
    *,
    threshold: float,
    min_kept: int,
    ignore_index: int = 255,
    set_members: torch.Tensor | None = None,
    cross_entropy=multilevel_cross_entropy,
    **options,
) -> torch.Tensor:
    """Per level, the mean per-pixel loss of ``cross_entropy`` (``options``: its level weights, class
    weights, label smoothing, align_corners) over the pixels :func:`ohem_kept` keeps (0 if none),
    the target probabilities from the plain softmax of the same function."""
    with torch.no_grad():
        nll = cross_entropy(logits, labels, table, ignore_index=ignore_index, reduction="none",
                            set_members=set_members, align_corners=options.get("align_corners", False))
        valid = remap_labels(labels, table) != ignore_index
        kept = torch.stack([ohem_kept(torch.exp(-nll[level]), valid[level], threshold, min_kept)
                            for level in range(len(logits))])
    per_pixel = cross_entropy(logits, labels, table, ignore_index=ignore_index, reduction="none",
                              set_members=set_members, **options)
    counts = kept.flatten(1).sum(1).clamp(min=1)
    return (per_pixel * kept).flatten(1).sum(1) / counts


def _set_level_loss(x, target, members, weight, *, ignore_index, label_smoothing, reduction):
    per_pixel = set_cross_entropy(x, target, members, ignore_index=ignore_index, weight=weight,
                                  label_smoothing=label_smoothing)
    if reduction == "none":
        return per_pixel
    if reduction == "sum":
        return per_pixel.sum()
    valid = target != ignore_index
    divisor = _target_rows(x, members, weight)[2][target[valid]].sum()
    return per_pixel.sum() / divisor if bool(valid.any()) else (x * 0).sum()


def check_parents(parents: Sequence[Sequence[int]], num_classes: Sequence[int]) -> None:
    """Raise ValueError unless ``parents[l-1]`` gives a class of level ``l-1`` for each class of level ``l``."""
    if len(parents) != len(num_classes) - 1:
        raise ValueError(f"got {len(parents)} parents entries for {len(num_classes)} levels")
    for level, entry in enumerate(parents, start=1):
        if len(entry) != num_classes[level]:
            raise ValueError(
                f"parents entry for level {level} has {len(entry)} classes but level {level} logits have "
                f"{num_classes[level]}"
            )
        for c, p in enumerate(entry):
            if not 0 <= p < num_classes[level - 1]:
                raise ValueError(
                    f"class {c} of level {level} has parent {p}, but level {level - 1} has "
                    f"{num_classes[level - 1]} classes"
                )


def tree_min_loss(
    logits: Sequence[torch.Tensor],
    labels: torch.Tensor,
    table: torch.Tensor,
    parents: Sequence[Sequence[int]],
    *,
    ignore_index: int = 255,
    focal_gamma: float = 0.0,
    level_weights: Sequence[float] | None = None,
    reduction: str = "mean",
    set_members: torch.Tensor | None = None,
) -> torch.Tensor:
    """HSSN's tree-min loss by ancestor/descendant masks and masked min/max; same contract as the fused op
    (at a level where the label names a class set, its members have no term, the rest are negatives)."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if focal_gamma < 0:
        raise ValueError(f"focal_gamma must be >= 0, got {focal_gamma}")
    num_classes = [x.shape[1] for x in logits]
    check_parents(parents, num_classes)
    targets = remap_labels(labels, table)
    valid = (targets != ignore_index).all(0)
    out_dtype = torch.float64 if logits[0].dtype == torch.float64 else torch.float32
    x = torch.cat([level.to(out_dtype) for level in logits], 1)  # [N, V, H, W], nodes level after level
    offsets = [sum(num_classes[:level]) for level in range(len(logits))]
    parent = [-1] * num_classes[0] + [offsets[l] + p for l, entry in enumerate(parents) for p in entry]
    lineage = torch.eye(len(parent), dtype=torch.bool, device=x.device)  # [v, u]: u is v or an ancestor of v
    for v, p in enumerate(parent):
        if p >= 0:
            lineage[v] |= lineage[p]
    nodes = x.unsqueeze(1)  # [N, 1, V, H, W]
    low = torch.where(lineage[None, :, :, None, None], nodes, torch.inf).amin(2)
    high = torch.where(lineage.T[None, :, :, None, None], nodes, -torch.inf).amax(2)
    on_path, no_term = [], []
    for level, c in enumerate(num_classes):
        entry = torch.where(valid, targets[level], 0)
        is_set = entry >= c
        if bool(is_set.any()) and set_members is None:
            raise ValueError(f"level {level}: the table names class sets but no set_members were given")
        on_path.append(F.one_hot(torch.where(is_set, 0, entry), c).permute(0, 3, 1, 2).bool() & ~is_set.unsqueeze(1))
        members = torch.zeros(*entry.shape, c, dtype=torch.bool, device=x.device)
        if bool(is_set.any()):
            members[is_set] = set_members[level].to(x.device)[entry[is_set] - c, :c] > 0
        no_term.append(members.permute(0, 3, 1, 2))
    on_path, no_term = torch.cat(on_path, 1), torch.cat(no_term, 1)
    positive = F.softplus(-low) * (1 - torch.sigmoid(low)) ** focal_gamma
    negative = F.softplus(high) * torch.sigmoid(high) ** focal_gamma
    terms = torch.where(valid.unsqueeze(1) & ~no_term, torch.where(on_path, positive, negative), 0)
    losses = torch.stack([terms[:, o:o + c].sum(1) for o, c in zip(offsets, num_classes)])  # [L, N, H, W]
    if reduction != "none":
        losses = losses.sum((1, 2, 3))
    if reduction == "mean":
        losses = losses / max(int(valid.sum()), 1)  # no valid pixel: 0 and a zero gradient
    weights = torch.tensor([1.0] * len(logits) if level_weights is None else list(level_weights), dtype=out_dtype,
                           device=x.device)
    return losses * weights.view(-1, *[1] * (losses.dim() - 1))


DECODE_MODES = ("independent", "consistent", "tree")


def upsample_logits(x: torch.Tensor, size: Sequence[int], align_corners: bool = False,
                    covered: Sequence[float] | None = None) -> torch.Tensor:
    """``x`` resized bilinearly to ``size``; with ``covered`` ``(h, w)`` fractions, only that top-left
    part of ``x`` is stretched over the output (``upsample_bilinear2d`` with explicit scale factors)."""
    if covered is None:
        return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=align_corners)
    height, width = size
    return torch.ops.aten.upsample_bilinear2d.default(
        x, [height, width], False, height / (covered[0] * x.shape[2]), width / (covered[1] * x.shape[3]))


def decode_dtypes(logits: Sequence[torch.Tensor], ancestors: torch.Tensor) -> list[torch.dtype]:
    """Per output level, the dtype of its class map: uint8 where the level's classes fit (a flat
    model's coarse levels: as many as its finest level at most), else int64."""
    levels, fine_classes = ancestors.shape
    flat = len(logits) == 1 and levels > 1
    classes = [fine_classes] * levels if flat else [x.shape[1] for x in logits]
    return [torch.uint8 if c <= 256 else torch.int64 for c in classes]


def upsample_decode(logits: Sequence[torch.Tensor], ancestors: torch.Tensor, size: Sequence[int],
                    mode: str = "independent", *, align_corners: bool = False,
                    covered: Sequence[float] | None = None) -> list[torch.Tensor]:
    """:func:`hierparse.ops.upsample_decode` in standard PyTorch operators (full-resolution logits):
    the decomposition that export falls back to. Consistent decoding sums raw logits along each path:
    log-softmax subtracts one constant per level and pixel, which never changes the winner."""
    logits = list(logits)
    flat = len(logits) == 1 and ancestors.shape[0] > 1
    chain = ancestors.to(logits[0].device)
    upsampled = [upsample_logits(x, size, align_corners, covered) for x in logits]
    if mode == "independent" and not flat:
        maps = [u.argmax(dim=1) for u in upsampled]
    else:
        if flat:
            fine = upsampled[0].argmax(dim=1)
        else:
            scores = [torch.sigmoid(u) if mode == "tree" else u for u in upsampled]
            fine = sum(s.index_select(1, index) for s, index in zip(scores, chain)).argmax(dim=1)
        maps = [index[fine] for index in chain]
    return [m.to(dtype) for m, dtype in zip(maps, decode_dtypes(logits, ancestors))]
