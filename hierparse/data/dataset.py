"""Read parsing datasets from disk as they are: images and label maps of raw uint8 ids.

Every dataset in hierparse yields the same sample, a dict with ``image``, ``label`` and ``path``.
Without a transform ``image`` is a uint8 ``HxWx3`` array and ``label`` a uint8 ``HxW`` array of
raw ids; the transforms of :mod:`hierparse.data.transforms` turn them into a normalised float
tensor ``[3, H, W]`` and a uint8 tensor ``[H, W]``. Labels are never widened to int64: the fused
loss op maps raw ids to every level by table lookup.
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch.utils.data
from PIL import Image, ImageOps, UnidentifiedImageError

from hierparse.data.layouts import get_layout
from hierparse.hierarchy import Hierarchy, load_hierarchy
from hierparse.label_map import LabelMap, hierarchy_for_maps, load_label_map, require_same_ids

Sample = dict[str, Any]
Transform = Callable[[Sample], Sample]
UNDECLARED_POLICIES = ("error", "ignore")


def as_hierarchy(hierarchy: Hierarchy | str | Path) -> Hierarchy:
    """A Hierarchy object as given, or loaded by built-in name or YAML path."""
    return hierarchy if isinstance(hierarchy, Hierarchy) else load_hierarchy(hierarchy)


def open_image(path: Path, what: str) -> Image.Image:
    """A fully decoded PIL image; one-line errors naming the ``what`` file (missing, unreadable, truncated)."""
    if not path.exists():
        raise FileNotFoundError(f"missing {what} file {path}")
    try:
        image = Image.open(path)
        image.load()
    except (OSError, UnidentifiedImageError, ValueError) as error:
        raise ValueError(f"cannot read {what} file {path}: {error}") from None
    return image


SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def to_rgb(image: Image.Image, source: str | Path = "image") -> np.ndarray:
    """uint8 ``HxWx3`` RGB of any PIL image: gray, palette and CMYK converted; alpha dropped (the colour
    channels as stored, not composited); 16-bit gray scaled to 8 bits (``/257``, not clipped)."""
    if image.mode in SIXTEEN_BIT_MODES:
        values = np.asarray(image).astype(np.int64)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise ValueError(f"{source}: 32-bit integer image with values outside 0..65535 "
                             f"(min {values.min()}, max {values.max()})")
        gray = ((values * 255 + 32767) // 65535).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if image.mode == "F":
        raise ValueError(f"{source}: 32-bit float images are not supported; save it as 8- or 16-bit")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # a palette with a transparent entry: its colour, alpha dropped
    return np.array(image.convert("RGB"))


def read_image(path: str | Path, orient: bool = False) -> np.ndarray:
    """An image file as uint8 ``HxWx3`` RGB (see :func:`to_rgb`).

    ``orient``: apply the EXIF orientation, as a photo viewer shows it (prediction). Datasets read
    images as stored, because their label maps are aligned with the stored pixels.
    """
    image = open_image(Path(path), "image")
    if orient:
        image = ImageOps.exif_transpose(image)
    return to_rgb(image, path)


COLOUR_TOLERANCE = 8  # levels per channel a colour-rendered label may be off from its class's colour


def raw_id_colours(hierarchy: Hierarchy) -> tuple[np.ndarray, np.ndarray]:
    """(int32 ``[K, 3]`` colours, uint8 ``[K]`` raw ids): each raw id's class colour (a leaf's at the
    finest level, a group's at its own level), as :func:`hierparse.data.colorize` paints them; leaves
    first, so that a leaf wins where a group has the same colour."""
    colours, ids = [], []
    for level in reversed(range(hierarchy.num_levels)):
        for node, colour in zip(hierarchy.nodes(level), hierarchy.colors(level)):
            if node.ids and (node.depth == level if node.children else level == hierarchy.num_levels - 1):
                colours += [colour] * len(node.ids)
                ids += node.ids
    return np.asarray(colours, np.int32).reshape(-1, 3), np.asarray(ids, np.uint8)


def ids_from_colours(rgb: np.ndarray, hierarchy: Hierarchy, path: Path, tolerance: int = COLOUR_TOLERANCE) -> np.ndarray:
    """uint8 raw ids of a colour rendering: each pixel's nearest class colour, at most ``tolerance``
    levels off in every channel; a colour farther from every class is a one-line error naming the file."""
    colours, ids = raw_id_colours(hierarchy)
    packed = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
    unique, inverse = np.unique(packed, return_inverse=True)
    seen = np.stack([unique >> 16, (unique >> 8) & 255, unique & 255], axis=1)
    distance = np.abs(seen[:, None, :] - colours[None]).max(axis=2)  # [U, K]
    nearest = distance.argmin(axis=1)
    far = distance[np.arange(len(unique)), nearest] > tolerance
    if far.any():
        colour = seen[far.argmax()].tolist()
        y, x = np.unravel_index(int(np.flatnonzero(packed.ravel() == unique[far.argmax()])[0]), packed.shape)
        raise ValueError(f"label file {path}: colour {tuple(colour)} at x={x}, y={y} is more than {tolerance} "
                         f"levels from every class colour of hierarchy {hierarchy.name!r}")
    return ids[nearest][inverse.reshape(packed.shape)]


def read_label(path: str | Path, hierarchy: Hierarchy | None = None) -> np.ndarray:
    """A label PNG as uint8 ``HxW`` raw ids: single-channel (palette PNGs give their indices), or a
    colour rendering (RGB, RGBA) read through ``hierarchy``'s colours (:func:`ids_from_colours`)."""
    path = Path(path)
    image = open_image(path, "label")
    if image.mode in ("L", "P"):
        return np.array(image)
    if image.mode in ("RGB", "RGBA") and hierarchy is not None:
        return ids_from_colours(np.asarray(image.convert("RGB")), hierarchy, path)
    if image.mode in ("I", "I;16", "I;16B", "I;16L"):
        values = np.asarray(image)
        if values.min() < 0 or values.max() > 255:
            raise ValueError(
                f"label file {path} holds values outside 0..255 (min {values.min()}, max {values.max()})"
            )
        return values.astype(np.uint8)
    raise ValueError(
        f"label file {path} has mode {image.mode!r}; expected a single-channel map of raw ids "
        "(mode L or P), or an RGB rendering in the hierarchy's colours"
    )


def read_helen_maps(folder: str | Path) -> np.ndarray:
    """Helen (Smith et al.) labels: one map per class ``<stem>_lbl00.png`` ... ; argmax gives raw ids."""
    folder = Path(folder)
    maps = sorted(folder.glob(f"{folder.name}_lbl[0-9][0-9].png"))
    if not maps:
        raise FileNotFoundError(f"missing label maps {folder.name}_lbl00.png ... in {folder}")
    stack = np.stack([read_label(path) for path in maps])
    if any(int(path.stem[-2:]) != index for index, path in enumerate(maps)):
        raise ValueError(f"label maps in {folder} are not numbered 00..{len(maps) - 1:02d} without gaps")
    return stack.argmax(axis=0).astype(np.uint8)


def resized_to_label(image: np.ndarray, shape: tuple[int, int], image_path: Path, label_path: Path) -> np.ndarray:
    """``image`` resized (bilinear) to a label ``shape`` smaller by one whole factor on both sides."""
    factors = {image.shape[0] / shape[0], image.shape[1] / shape[1]}
    if len(factors) != 1 or not float(next(iter(factors))).is_integer():
        raise ValueError(f"image {image_path} is {image.shape[1]}x{image.shape[0]}, its label {label_path} "
                         f"{shape[1]}x{shape[0]}: not one whole scale factor on both sides")
    return np.asarray(Image.fromarray(image).resize(shape[::-1], Image.BILINEAR))


# CelebAMask-HQ's class folders in the order zllrunning/face-parsing.PyTorch's prepropess_data.py
# numbers them 1..18 (hierarchies/celebamask_hq.yaml); a later mask overwrites an earlier one, as there.
CELEBAMASK_CLASSES = ("skin", "l_brow", "r_brow", "l_eye", "r_eye", "eye_g", "l_ear", "r_ear", "ear_r", "nose",
                      "mouth", "u_lip", "l_lip", "neck", "neck_l", "cloth", "hair", "hat")


def read_celebamask_masks(stem: str | Path) -> np.ndarray:
    """CelebAMask-HQ's binary masks ``<stem>_<class>.png`` as one uint8 map of raw ids 0-18."""
    stem = Path(stem)
    label = None
    for raw, name in enumerate(CELEBAMASK_CLASSES, start=1):
        path = stem.parent / f"{stem.name}_{name}.png"
        if not path.exists():
            continue
        mask = np.asarray(open_image(path, "label").convert("L")) > 0
        if label is None:
            label = np.zeros(mask.shape, np.uint8)
        elif mask.shape != label.shape:
            raise ValueError(f"label file {path} is {mask.shape[1]}x{mask.shape[0]}, the other masks of "
                             f"{stem.name} {label.shape[1]}x{label.shape[0]}")
        label[mask] = raw
    if label is None:
        raise FileNotFoundError(f"missing label files {stem}_<class>.png")
    return label


LABEL_READERS: dict[str, Callable[[Path], np.ndarray]] = {"png": read_label, "helen_maps": read_helen_maps,
                                                          "celebamask_masks": read_celebamask_masks}


class LabelChecker:
    """Finds raw ids the hierarchy does not declare; raises, or maps them to ``ignore_index`` and warns once."""

    def __init__(self, hierarchy: Hierarchy, undeclared: str = "error"):
        if undeclared not in UNDECLARED_POLICIES:
            raise ValueError(f"undeclared must be one of {UNDECLARED_POLICIES}, got {undeclared!r}")
        self.hierarchy_name = hierarchy.name
        self.ignore_index = hierarchy.ignore_index
        self.undeclared = undeclared
        self.declared = np.zeros(256, dtype=bool)
        self.declared[hierarchy.declared_ids()] = True
        self.warned = False

    def __call__(self, label: np.ndarray, path: Path) -> np.ndarray:
        bad = ~self.declared[label]
        if not bad.any():
            return label
        values = np.unique(label[bad]).tolist()
        message = f"label file {path} holds raw ids {values} that hierarchy {self.hierarchy_name!r} does not declare"
        if self.undeclared == "error":
            raise ValueError(message + " (pass undeclared='ignore' to treat them as ignored)")
        if not self.warned:
            warnings.warn(message + f"; mapping them to ignore_index {self.ignore_index} (warned once)")
            self.warned = True
        label = label.copy()
        label[bad] = self.ignore_index
        return label


class ParsingDataset(torch.utils.data.Dataset):
    """One split of a parsing dataset in one of the known on-disk layouts.

    ``layout`` is ``lip``, ``cihp``, ``atr``, ``pascal_person_part``, ``helen``, ``cityscapes`` or
    ``generic``; ``variant`` picks an arrangement (``official``, ``schp``, ``ce2p``, ...) or detects
    it. ``hierarchy`` defaults to the layout's own; label values it does not declare raise, or
    become ``ignore_index`` with ``undeclared="ignore"``. ``list_file`` reads ``image label`` lines
    instead of the folders.

    A layout with a tree of its own is read with another tree only if both give every raw id the
    same class, or through ``label_map`` (a :class:`hierparse.label_map.LabelMap` or its name, e.g.
    ``atr_to_lip``): its files are checked against the map's source tree and their ids relabelled to
    the target's; ``self.hierarchy`` is then the target with raw ids for the map's unions.
    """

    def __init__(
        self,
        root: str | Path,
        layout: str,
        split: str = "train",
        transform: Transform | None = None,
        *,
        hierarchy: Hierarchy | str | Path | None = None,
        variant: str = "auto",
        list_file: str | Path | None = None,
        undeclared: str = "error",
        label_map: LabelMap | str | Path | None = None,
    ):
        self.layout = get_layout(layout)
        own = as_hierarchy(self.layout.hierarchy) if self.layout.hierarchy is not None else None
        if hierarchy is None and own is None and label_map is None:
            raise ValueError(f"layout {layout!r} has no hierarchy of its own; pass hierarchy=")
        self.relabel, self.label_map = None, None
        if label_map is not None:
            self.label_map = label_map if isinstance(label_map, LabelMap) else load_label_map(label_map)
            if own is not None:
                require_same_ids(own, self.label_map.source, f"layout {layout!r} (read through {self.label_map.name})")
            target = self.label_map.target if hierarchy is None else as_hierarchy(hierarchy)
            self.hierarchy, allocation = hierarchy_for_maps(target, [self.label_map])
            self.relabel = self.label_map.lookup(allocation)
            file_tree = self.label_map.source
        else:
            self.hierarchy = file_tree = as_hierarchy(hierarchy) if hierarchy is not None else own
            if own is not None:
                require_same_ids(own, self.hierarchy, f"layout {layout!r}")
        self.root = Path(root)
        self.split = split
        self.transform = transform
        self.check_labels = LabelChecker(file_tree, undeclared)
        self.pairs, self.variant = self.layout.find(self.root, split, variant, list_file)
        label_format = self.variant.label_format if self.variant is not None else "png"
        # colour renderings are read through the colours of the files' own tree
        self.read_label = (functools.partial(read_label, hierarchy=file_tree) if label_format == "png"
                           else LABEL_READERS[label_format])

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> Sample:
        image_path, label_path = self.pairs[index]
        image = read_image(image_path)
        label = self.read_label(label_path)
        if self.layout.images_to_label_size and image.shape[:2] != label.shape:
            image = resized_to_label(image, label.shape, image_path, label_path)
        if image.shape[:2] != label.shape:
            raise ValueError(
                f"image {image_path} is {image.shape[1]}x{image.shape[0]} but its label {label_path} "
                f"is {label.shape[1]}x{label.shape[0]} (width x height)"
            )
        label = self.check_labels(label, label_path)
        if self.relabel is not None:
            label = self.relabel[label]
        sample = {"image": image, "label": label, "path": str(image_path)}
        return self.transform(sample) if self.transform is not None else sample

    def __repr__(self) -> str:
        return (
            f"ParsingDataset({str(self.root)!r}, layout={self.layout.name!r}, split={self.split!r}, "
            f"hierarchy={self.hierarchy.name!r}, samples={len(self)})"
        )
