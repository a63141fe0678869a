"""Build a dataset from the few words a training config holds: a name, a root, a split, a size."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Callable, Sequence

import torch.utils.data

from hierparse.data.dataset import ParsingDataset, Transform
from hierparse.data.layouts import LAYOUTS
from hierparse.data.synthetic import SyntheticParsing
from hierparse.data.transforms import eval_transform, train_transform
from hierparse.hierarchy import Hierarchy

DatasetFactory = Callable[..., torch.utils.data.Dataset]


def _synthetic(root: str | Path | None, split: str, hierarchy, size, **options: Any) -> SyntheticParsing:
    return SyntheticParsing(hierarchy or "lip", size=size or 128, split=split, **options)


def _on_disk(layout: str, root: str | Path | None, split: str, hierarchy, size, **options: Any) -> ParsingDataset:
    if root is None:
        raise ValueError(f"dataset {layout!r} reads files from disk and needs a root folder")
    return ParsingDataset(root, layout, split, hierarchy=hierarchy, **options)


DATASETS: dict[str, DatasetFactory] = {
    "synthetic": _synthetic,
    **{name: functools.partial(_on_disk, name) for name in LAYOUTS},
}


def register_dataset(name: str, factory: DatasetFactory) -> None:
    """Make ``build_dataset(name, ...)`` call ``factory(root, split, hierarchy, size, **options)``."""
    if name in DATASETS:
        raise ValueError(f"a dataset called {name!r} is already registered")
    DATASETS[name] = factory


def build_dataset(
    name: str,
    root: str | Path | None = None,
    split: str = "train",
    *,
    hierarchy: Hierarchy | str | None = None,
    transform: str | Transform | None = None,
    size: int | Sequence[int] | None = None,
    **options: Any,
) -> torch.utils.data.Dataset:
    """A dataset by name (a layout such as ``lip``, or ``synthetic``) with its transform.

    ``transform`` is ``"train"`` (augment and crop to ``size``), ``"eval"`` (resize to ``size``,
    or only normalise without one), a callable, or None for raw arrays. ``options`` go to the
    dataset: ``variant``, ``list_file``, ``undeclared`` on disk; ``n``, ``seed`` for synthetic.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r} (known: {', '.join(DATASETS)})")
    dataset = DATASETS[name](root, split, hierarchy, size, **options)
    if transform == "train":
        if size is None:
            raise ValueError("transform 'train' crops to a fixed size; pass size=")
        dataset.transform = train_transform(dataset.hierarchy, size)
    elif transform == "eval":
        dataset.transform = eval_transform(dataset.hierarchy, size, mode="resize" if size is not None else "none")
    elif isinstance(transform, str):
        raise ValueError(f"unknown transform {transform!r} (use 'train', 'eval', a callable or None)")
    else:
        dataset.transform = transform
    return dataset
