"""Pictures: parse maps in the hierarchy's colours, panel grids, training curves (matplotlib, no display)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from hierparse.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from hierparse.engine.io import atomic_write
from hierparse.hierarchy import Hierarchy


def new_figure(**options: Any):
    """A matplotlib ``Figure`` (no display needed); matplotlib loads only when a picture is made."""
    from matplotlib.figure import Figure

    return Figure(**options)


def denormalize(image: torch.Tensor) -> np.ndarray:
    """A normalised ``[3, H, W]`` image tensor (ImageNet mean and std) back to uint8 ``HxWx3``."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    pixels = (image.detach().float().cpu() * std + mean).clamp(0, 1) * 255
    return pixels.round().byte().permute(1, 2, 0).numpy()


def paint(classes: torch.Tensor | np.ndarray, hierarchy: Hierarchy, level: int) -> np.ndarray:
    """uint8 ``HxWx3``: a map of class indices of ``level`` in the hierarchy's colours."""
    palette = np.asarray(hierarchy.colors(level), dtype=np.uint8)
    return palette[np.asarray(classes, dtype=np.int64)]


def save_panels(rows: Sequence[Sequence[np.ndarray]], titles: Sequence[str], path: str | Path,
                panel_inches: float = 1.8) -> None:
    """A grid of RGB panels (one list per row, ``titles`` over the first row) saved as a PNG, atomically."""
    columns = len(titles)
    height, width = rows[0][0].shape[:2]
    figure = new_figure(figsize=(columns * panel_inches, len(rows) * panel_inches * height / width + 0.3))
    axes = figure.subplots(len(rows), columns, squeeze=False)
    for row_index, row in enumerate(rows):
        for column, panel in enumerate(row):
            axis = axes[row_index][column]
            axis.imshow(panel, interpolation="nearest")
            axis.set_axis_off()
            if row_index == 0:
                axis.set_title(titles[column], fontsize=8)
    figure.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 0.3 / figure.get_figheight(),
                           wspace=0.04, hspace=0.04)
    atomic_write(path, lambda temporary: figure.savefig(temporary, format="png", dpi=100))


def plot_curves(history: Sequence[dict[str, Any]], level_names: Sequence[str], out_dir: str | Path) -> None:
    """``loss.png`` (training loss per level and total) and ``miou.png`` (validation mIoU per level) over iterations."""
    out_dir = Path(out_dir)
    train = [record for record in history if record["type"] == "train"]
    evals = [record for record in history if record["type"] == "eval"]
    if train:
        figure = new_figure(figsize=(6, 4))
        axis = figure.add_subplot()
        steps = [record["iter"] for record in train]
        axis.plot(steps, [record["loss"] for record in train], color="black", label="total")
        for name in train[0]["losses"]:
            axis.plot(steps, [record["losses"][name] for record in train], label=name)
        axis.set(xlabel="iteration", ylabel="cross-entropy", title="training loss per level")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
        figure.tight_layout()
        atomic_write(out_dir / "loss.png", lambda temporary: figure.savefig(temporary, format="png", dpi=100))
    if evals:
        figure = new_figure(figsize=(6, 4))
        axis = figure.add_subplot()
        steps = [record["iter"] for record in evals]
        for index, name in enumerate(level_names):
            color = f"C{index}"
            module = [_nan_if_none(record["miou"].get(name)) for record in evals]
            if not all(math.isnan(value) for value in module):
                axis.plot(steps, module, "o-", color=color, label=f"{name} (module)")
            if name != level_names[-1] or all(math.isnan(value) for value in module):
                merged = [_nan_if_none(record["merged_miou"][name]) for record in evals]
                axis.plot(steps, merged, "x--", color=color, label=f"{name} (merged from finest)")
        axis.set(xlabel="iteration", ylabel="mIoU", title="validation mIoU per level", ylim=(0, 1))
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
        figure.tight_layout()
        atomic_write(out_dir / "miou.png", lambda temporary: figure.savefig(temporary, format="png", dpi=100))


def _nan_if_none(value: float | None) -> float:
    return math.nan if value is None else value
