"""Per-level parsing metrics from confusion matrices: IoU, accuracy, F1, merged levels, consistency.

``ParsingMetrics`` accumulates one confusion matrix per level of a hierarchy (rows: ground truth,
columns: prediction, ``torch.bincount`` in int64 on the device of the inputs) and scores

- ``levels[l]``: level ``l``'s own predictions (the output of module ``l``);
- ``merged[l]``: the finest prediction merged up the tree to level ``l``, from block sums of the
  finest confusion matrix. This is how the official Cityscapes evaluation computes category IoU.

``consistency`` is the share of valid pixels (finest label not ignored) at which the predictions of
all levels agree with the tree: at every coarser level, the prediction equals the ancestor of the
finest prediction. This equals requiring every level's prediction to be the parent of the next
finer level's prediction. All counts live in one int64 vector (``state()``), so merging across
processes is one sum (``all_reduce()``).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.distributed as dist

from hierparse.hierarchy import NUM_RAW_IDS, Hierarchy, fine_ancestors, load_hierarchy

__all__ = ["ConfusionCounts", "ParsingMetrics", "format_metrics", "scores_from_confusion"]


def scores_from_confusion(confusion: torch.Tensor) -> dict[str, Any]:
    """IoU, accuracy and F1 per class and their averages from a ``[C, C]`` (ground truth, prediction) matrix.

    A per-class score is NaN where its denominator is zero (for IoU and F1: the class is absent from
    both prediction and ground truth); averages skip NaN entries.
    """
    counts = confusion.to(device="cpu", dtype=torch.float64)
    true_pos = counts.diagonal()
    in_truth = counts.sum(dim=1)
    in_pred = counts.sum(dim=0)
    nan = torch.tensor(math.nan, dtype=torch.float64)

    def ratio(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
        return torch.where(denominator > 0, numerator / denominator.clamp(min=1), nan)

    iou = ratio(true_pos, in_truth + in_pred - true_pos)
    accuracy = ratio(true_pos, in_truth)
    f1 = ratio(2 * true_pos, in_truth + in_pred)
    return {
        "iou": iou.tolist(),
        "miou": iou.nanmean().item(),
        "pixel_acc": ratio(true_pos.sum(), counts.sum()).item(),
        "mean_acc": accuracy.nanmean().item(),
        "f1": f1.tolist(),
        "mean_f1": f1.nanmean().item(),
    }


class ConfusionCounts:
    """The counts behind :class:`ParsingMetrics`: one confusion matrix per level of a hierarchy and
    three pixel counters, all in one int64 vector, so merging across processes is one sum."""

    def __init__(self, hierarchy: Hierarchy | str):
        self.hierarchy = load_hierarchy(hierarchy)
        self.num_classes = self.hierarchy.num_classes
        # Layout of the count vector: one C*C block per level, then the three scalars below.
        self._offsets = [0]
        for classes in self.num_classes:
            self._offsets.append(self._offsets[-1] + classes * classes)
        self._counts = torch.zeros(self._offsets[-1] + 3, dtype=torch.int64)

    def state(self) -> torch.Tensor:
        """All counts as one int64 vector (the live buffer): sum it across processes to merge."""
        return self._counts

    def load_state(self, state: torch.Tensor) -> None:
        """Replace all counts with ``state``, a vector shaped like ``state()``."""
        self._check_state(state)
        self._counts = state.to(torch.int64).clone()

    def merge(self, other: "ConfusionCounts") -> None:
        """Add the counts of ``other`` (same hierarchy) to these."""
        self._check_state(other.state())
        self._counts += other.state().to(self._counts.device)

    def _check_state(self, state: torch.Tensor) -> None:
        if state.shape != self._counts.shape:
            raise ValueError(
                f"metrics state for hierarchy {self.hierarchy.name!r} has shape "
                f"{tuple(self._counts.shape)}, got {tuple(state.shape)}"
            )

    def all_reduce(self, group: Any = None) -> None:
        """Sum the counts over all processes of ``group`` when torch.distributed is initialised."""
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self._counts, op=dist.ReduceOp.SUM, group=group)

    def reset(self) -> None:
        """Forget everything accumulated so far."""
        self._counts.zero_()

    @property
    def confusion_matrices(self) -> list[torch.Tensor]:
        """Per level: int64 ``[C, C]``, rows ground truth, columns that level's own prediction."""
        return [
            self._counts[start:end].view(classes, classes)
            for start, end, classes in zip(self._offsets, self._offsets[1:], self.num_classes)
        ]

    @property
    def _per_level_pixels(self) -> torch.Tensor:
        """Pixels seen with per-level predictions (ignored ones included)."""
        return self._counts[-3]

    @property
    def _fine_only_pixels(self) -> torch.Tensor:
        """Pixels seen with finest-only predictions (ignored ones included)."""
        return self._counts[-2]

    @property
    def _consistent_pixels(self) -> torch.Tensor:
        return self._counts[-1]


class ParsingMetrics(ConfusionCounts):
    """Confusion matrices per level of ``hierarchy``, mergeable across processes.

    ``update(preds, labels)`` takes ``preds`` as a list of class-index maps, one per level (coarse to
    fine), or as a single finest-level map (e.g. from a flat model), and ``labels`` as raw ids; all of
    one shape (usually ``[N, H, W]``). Pixels whose label is ignored at a level, or is coarser than it (a group above it), do not count at that
    level. Do not mix the two forms of ``preds`` between resets.
    """

    def __init__(self, hierarchy: Hierarchy | str):
        super().__init__(hierarchy)
        self._label_table = self.hierarchy.exact_table()  # a coarse label counts at its own level and above
        self._fine_to_level = fine_ancestors(self.hierarchy)

    # ------------------------------------------------------------------ accumulation
    @torch.no_grad()
    def update(self, preds: torch.Tensor | Sequence[torch.Tensor], labels: torch.Tensor) -> None:
        """Add one batch: ``preds`` per level (coarse to fine) or finest only, ``labels`` raw ids."""
        per_level = not isinstance(preds, torch.Tensor)
        pred_list = list(preds) if per_level else [preds]
        levels = range(self.hierarchy.num_levels) if per_level else [self.hierarchy.num_levels - 1]
        check_update_inputs(self.hierarchy, pred_list, labels, levels)
        if (self._fine_only_pixels if per_level else self._per_level_pixels).item() > 0:
            given, earlier = ("per-level predictions", "finest-only ones")
            if not per_level:
                given, earlier = "a finest-only prediction", "per-level ones"
            raise ValueError(f"update() got {given} after {earlier}; call reset() before switching")

        device = labels.device
        if self._counts.device != device:
            self._counts = self._counts.to(device)
        if self._label_table.device != device:
            self._label_table = self._label_table.to(device)
            self._fine_to_level = [ancestors.to(device) for ancestors in self._fine_to_level]

        targets = self._label_table[:, labels.reshape(-1).long()]
        flat_preds = [pred.reshape(-1).long() for pred in pred_list]
        confusions = self.confusion_matrices
        for level, pred in zip(levels, flat_preds):
            classes = self.num_classes[level]
            valid = targets[level] != self.hierarchy.ignore_index
            pairs = targets[level][valid] * classes + pred[valid]
            confusions[level] += torch.bincount(pairs, minlength=classes * classes).view(classes, classes)

        if per_level:
            self._per_level_pixels.add_(labels.numel())
            fine_valid = targets[-1] != self.hierarchy.ignore_index
            fine_pred = flat_preds[-1][fine_valid]
            agree = torch.ones_like(fine_pred, dtype=torch.bool)
            for level in range(self.hierarchy.num_levels - 1):
                agree &= self._fine_to_level[level][fine_pred] == flat_preds[level][fine_valid]
            self._consistent_pixels.add_(agree.sum())
        else:
            self._fine_only_pixels.add_(labels.numel())

    # ------------------------------------------------------------------ results
    def merged_confusion(self, level: int) -> torch.Tensor:
        """int64 ``[C, C]``: block sums of the finest confusion matrix over the classes of ``level``."""
        classes = len(self.hierarchy.class_names(level))
        fine = self.confusion_matrices[-1].cpu()
        ancestors = self._fine_to_level[level].cpu()
        rows_merged = torch.zeros(classes, fine.shape[1], dtype=torch.int64).index_add_(0, ancestors, fine)
        return torch.zeros(classes, classes, dtype=torch.int64).index_add_(1, ancestors, rows_merged)

    def compute(self) -> dict[str, Any]:
        """``{"levels": [...], "merged": [...], "consistency": float}``; see the module docstring.

        ``levels`` has one entry per level after per-level updates and only the finest level's entry
        after finest-only updates; each entry names its ``level``. ``consistency`` is NaN after
        finest-only updates, for a one-level hierarchy, and when no pixel was valid.
        """
        per_level = self._per_level_pixels.item() > 0
        if per_level and self._fine_only_pixels.item() > 0:
            raise ValueError("merged metrics mix per-level and finest-only predictions")
        # merged levels come from the finest confusion: they count the pixels exact at the finest level
        finest = self.hierarchy.num_levels - 1
        confusions = self.confusion_matrices
        module_levels = range(self.hierarchy.num_levels) if per_level else [finest]
        valid_pixels = confusions[finest].sum().item()
        consistency = math.nan
        if per_level and finest > 0 and valid_pixels:
            consistency = self._consistent_pixels.item() / valid_pixels
        return {
            "levels": [self._entry(level, confusions[level]) for level in module_levels],
            "merged": [self._entry(level, self.merged_confusion(level)) for level in range(finest + 1)],
            "consistency": consistency,
        }

    def _entry(self, level: int, confusion: torch.Tensor) -> dict[str, Any]:
        return {
            "name": self.hierarchy.level_names[level],
            "level": level,
            "classes": self.hierarchy.class_names(level),
            "pixels": int(confusion.sum()),  # scored at this level: labels exact here (coarser ones are not)
            **scores_from_confusion(confusion),
        }


def check_update_inputs(hierarchy: Hierarchy, preds: list[torch.Tensor], labels: torch.Tensor,
                        levels: Sequence[int]) -> None:
    """Raise a one-line ValueError for a wrong level count, shape, dtype, device or value."""
    if not isinstance(labels, torch.Tensor) or labels.is_floating_point() or labels.is_complex():
        raise ValueError(f"labels must be an integer tensor of raw ids, got {_describe(labels)}")
    bad = _first_outside(labels, NUM_RAW_IDS)
    if bad is not None:
        raise ValueError(f"labels hold raw id {bad}, outside 0..{NUM_RAW_IDS - 1}")
    if len(preds) != len(levels):
        raise ValueError(
            f"hierarchy {hierarchy.name!r} has {hierarchy.num_levels} levels "
            f"({', '.join(hierarchy.level_names)}); got {len(preds)} prediction maps"
        )
    for level, pred in zip(levels, preds):
        level_name = hierarchy.level_names[level]
        if not isinstance(pred, torch.Tensor) or pred.is_floating_point() or pred.is_complex():
            raise ValueError(
                f"prediction for level {level} ({level_name}) must be an integer tensor of class "
                f"indices (take argmax of the scores), got {_describe(pred)}"
            )
        if pred.shape != labels.shape:
            raise ValueError(
                f"prediction for level {level} ({level_name}) has shape {tuple(pred.shape)}, "
                f"labels have shape {tuple(labels.shape)}"
            )
        if pred.device != labels.device:
            raise ValueError(
                f"prediction for level {level} ({level_name}) is on {pred.device}, "
                f"labels on {labels.device}"
            )
        classes = hierarchy.num_classes[level]
        bad = _first_outside(pred, classes)
        if bad is not None:
            raise ValueError(
                f"prediction for level {level} ({level_name}) holds class index {bad}, "
                f"outside 0..{classes - 1}"
            )


def _first_outside(values: torch.Tensor, stop: int) -> int | None:
    """The first value of an integer tensor outside ``0..stop-1``, or None."""
    if not values.numel() or (values.min().item() >= 0 and values.max().item() < stop):
        return None
    wide = values.long()
    return wide[(wide < 0) | (wide >= stop)].reshape(-1)[0].item()


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor"
    return type(value).__name__


def format_metrics(result: dict[str, Any]) -> str:
    """A plain-text table of ``ParsingMetrics.compute()``: class IoU, mIoU, accuracy per level, in percent.

    Each level shows its module's scores and, for coarser levels, those of the finest prediction
    merged up to that level.
    """
    modules = {entry["level"]: entry for entry in result["levels"]}
    finest = len(result["merged"]) - 1
    blocks = ["scores in percent; module: each level's own output, merged: the finest output merged up"]
    for merged in result["merged"]:
        level = merged["level"]
        columns = []
        if level in modules:
            columns.append(("module", modules[level]))
        if level < finest or not columns:
            columns.append(("merged", merged))
        width = max(len(name) for name in [*merged["classes"], "pixel acc"]) + 2
        lines = [
            f"level {level} ({merged['name']}, {len(merged['classes'])} classes)".ljust(width)
            + "".join(f"{title:>9}" for title, _ in columns)
        ]
        for index, class_name in enumerate(merged["classes"]):
            scores = "".join(_percent(entry["iou"][index]) for _, entry in columns)
            lines.append(f"  {class_name}".ljust(width) + scores)
        for label, key in [("mIoU", "miou"), ("pixel acc", "pixel_acc"), ("mean acc", "mean_acc")]:
            lines.append(label.ljust(width) + "".join(_percent(e[key]) for _, e in columns))
        lines.append("pixels".ljust(width) + "".join(f"{e['pixels']:>9}" for _, e in columns))
        blocks.append("\n".join(lines))
    blocks.append(f"consistency (all levels agree with the tree){_percent(result['consistency'])}")
    return "\n\n".join(blocks)


def _percent(value: float) -> str:
    return f"{'-':>9}" if math.isnan(value) else f"{100 * value:9.2f}"
