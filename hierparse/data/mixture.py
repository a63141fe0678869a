"""Training sets mixed from several sources and drawn by weight, e.g. a few finely labelled images
with many coarsely labelled ones (the config's ``datasets:`` list).

Each source is ``{dataset, root, split, weight, map, coarsen, n, first}``: ``dataset`` a name of
:data:`hierparse.data.DATASETS`, ``weight`` its share of every epoch's draws (default 1), ``map`` a
label map (:mod:`hierparse.label_map`, e.g. ``atr_to_lip``) through which a dataset with its own
tree (its raw ids, checked against its own hierarchy) is read as the run's classes,
``coarsen`` a level name whose nodes relabel everything below them (``Hierarchy.coarsening``:
part labels become region labels), ``n`` and ``first`` the synthetic pool's size and first image.
Without weights each source would be drawn in proportion to its size, and a small fine source
would be swamped by a large coarse one.
"""

from __future__ import annotations

import bisect
from typing import Any, Sequence

import numpy as np
import torch
import torch.utils.data

from hierparse.data.dataset import Sample, Transform
from hierparse.data.registry import DATASETS, build_dataset
from hierparse.data.transforms import Compose
from hierparse.hierarchy import Hierarchy
from hierparse.label_map import LabelMap, hierarchy_for_maps, load_label_map

SOURCE_KEYS = ("dataset", "root", "split", "weight", "map", "coarsen", "n", "first")
SYNTHETIC_ONLY = ("n", "first")


class RelabelIds:
    """A transform relabelling raw ids through a ``[256]`` lookup (``Hierarchy.coarsening``, ``LabelMap.lookup``)."""

    def __init__(self, lookup: np.ndarray):
        self.lookup = np.asarray(lookup, dtype=np.uint8)

    def __call__(self, sample: Sample) -> Sample:
        return {**sample, "label": self.lookup[sample["label"]]}


def check_sources(sources: Any, hierarchy: Hierarchy | None = None) -> list[dict[str, Any]]:
    """The ``datasets:`` entries with defaults filled in; a one-line ValueError naming the entry otherwise."""
    if not isinstance(sources, list) or not sources:
        raise ValueError(f"config key 'datasets' must be null or a non-empty list of sources, got {sources!r}")
    checked = []
    for i, source in enumerate(sources):
        where = f"datasets[{i}]"
        if not isinstance(source, dict) or "dataset" not in source:
            raise ValueError(f"{where} must be a mapping with at least 'dataset', got {source!r}")
        unknown = sorted(set(source) - set(SOURCE_KEYS))
        if unknown:
            raise ValueError(f"{where}: unknown key {unknown[0]!r} (allowed: {', '.join(SOURCE_KEYS)})")
        if source["dataset"] not in DATASETS:
            raise ValueError(f"{where}: unknown dataset {source['dataset']!r} (known: {', '.join(DATASETS)})")
        if source["dataset"] != "synthetic" and any(key in source for key in SYNTHETIC_ONLY):
            raise ValueError(f"{where}: 'n' and 'first' are for dataset synthetic only")
        weight = source.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight > 0:
            raise ValueError(f"{where}: weight must be a positive number, got {weight!r}")
        for key in SYNTHETIC_ONLY:
            value = source.get(key, 1 if key == "n" else 0)
            if isinstance(value, bool) or not isinstance(value, int) or value < (1 if key == "n" else 0):
                raise ValueError(f"{where}: {key} must be a whole number >= {1 if key == 'n' else 0}, got {value!r}")
        coarsen = source.get("coarsen")
        if coarsen is not None and hierarchy is not None:
            hierarchy.coarsening(coarsen)  # raises naming the level or the group without ids
        if source.get("map") is not None and coarsen is not None:
            raise ValueError(f"{where}: 'coarsen' and 'map' do not go together (coarsen the dataset in its own tree)")
        checked.append({"root": None, "split": None, "coarsen": None, "map": None, **source, "weight": float(weight)})
    return checked


def source_maps(sources: Sequence[dict[str, Any]] | None) -> list[LabelMap]:
    """The label maps the sources name (loaded and checked), in order; none without sources."""
    if not sources:
        return []
    return [load_label_map(source["map"]) for source in check_sources(list(sources)) if source["map"] is not None]


def label_hierarchy(sources: Sequence[dict[str, Any]] | None, hierarchy: Hierarchy,
                    label_map: str | None = None) -> Hierarchy:
    """The tree the training labels live in: ``hierarchy``, with raw ids for the unions its sources'
    label maps (and the config's ``map``) use (what the loss and the transforms must know; the model
    uses ``hierarchy``)."""
    maps = source_maps(sources) + ([load_label_map(label_map)] if label_map is not None else [])
    return hierarchy_for_maps(hierarchy, maps)[0] if maps else hierarchy


class MixedDataset(torch.utils.data.Dataset):
    """The sources one after another (index ``i`` is image ``i - offset`` of its source), with
    :meth:`epoch_order`, which :class:`hierparse.engine.sampling.EpochSampler` uses to draw by weight."""

    def __init__(self, sources: Sequence[torch.utils.data.Dataset], weights: Sequence[float],
                 hierarchy: Hierarchy | None):
        if len(sources) != len(weights) or not sources:
            raise ValueError(f"got {len(sources)} sources and {len(weights)} weights")
        self.sources, self.weights = list(sources), torch.tensor([float(w) for w in weights], dtype=torch.float64)
        self.offsets = np.cumsum([0, *(len(source) for source in self.sources)]).tolist()
        self.hierarchy = hierarchy

    def __len__(self) -> int:
        return self.offsets[-1]

    def __getitem__(self, index: int) -> Sample:
        source = bisect.bisect_right(self.offsets, index) - 1
        return self.sources[source][index - self.offsets[source]]

    def epoch_order(self, generator: torch.Generator, count: int) -> list[int]:
        """``count`` indices: each position's source drawn by weight, each source's images in a fresh
        random order (cycled when a source is drawn more often than it has images)."""
        choices = torch.multinomial(self.weights, count, replacement=True, generator=generator).tolist()
        orders = [torch.randperm(len(source), generator=generator).tolist() for source in self.sources]
        drawn = [0] * len(self.sources)
        indices = []
        for source in choices:
            order = orders[source]
            indices.append(self.offsets[source] + order[drawn[source] % len(order)])
            drawn[source] += 1
        return indices


def exact_pixel_counts(dataset: torch.utils.data.Dataset) -> torch.Tensor:
    """int64 ``[256]``: pixels per raw id over the sources of a mixture that are neither coarsened nor
    mapped (one pass over their label maps, without augmentation): the class shares of exact labels."""
    sources = dataset.sources if isinstance(dataset, MixedDataset) else [dataset]
    counts = torch.zeros(256, dtype=torch.int64)
    for source, relabelled in zip(sources, getattr(dataset, "relabelled", [False] * len(sources))):
        if relabelled:
            continue
        transform, source.transform = source.transform, None
        try:
            for index in range(len(source)):
                counts += torch.from_numpy(np.bincount(np.asarray(source[index]["label"]).ravel(), minlength=256))
        finally:
            source.transform = transform
    return counts


def build_mixture(sources: Sequence[dict[str, Any]], hierarchy: Hierarchy, transform: Transform, size: int,
                  default_split: str) -> MixedDataset:
    """The training set of a ``datasets:`` list (checked by :func:`check_sources`), every source
    through the same ``transform`` after its label map or coarsening, if any. ``hierarchy`` is the
    run's tree; a mapped source reads its files with the map's source tree."""
    checked = check_sources(list(sources), hierarchy)
    maps = source_maps(checked)
    allocation = hierarchy_for_maps(hierarchy, maps)[1] if maps else {}
    mapped = iter(maps)
    built = []
    for source in checked:
        options = {key: source[key] for key in SYNTHETIC_ONLY if key in source}
        own_tree, steps = hierarchy, [transform]
        if source["map"] is not None:
            label_map = next(mapped)
            own_tree, steps = label_map.source, [RelabelIds(label_map.lookup(allocation)), transform]
        elif source["coarsen"] is not None:
            steps = [RelabelIds(hierarchy.coarsening(source["coarsen"])), transform]
        split = source["split"] or default_split
        built.append(build_dataset(source["dataset"], source["root"], split, hierarchy=own_tree,
                                   transform=Compose(steps), size=size, **options))

    mixture = MixedDataset(built, [source["weight"] for source in checked], hierarchy)
    mixture.relabelled = [source["map"] is not None or source["coarsen"] is not None for source in checked]
    return mixture
