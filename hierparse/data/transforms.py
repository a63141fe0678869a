"""Joint image/label transforms on sample dicts; labels stay uint8 raw ids throughout.

Each transform maps a sample ``{"image", "label", "path"}`` to a new one. Geometry applies to the
image (bilinear) and the label (nearest, so every label value is one that was there, or
``ignore_index`` where padding adds pixels). Randomness comes from torch's generator, which
DataLoader seeds differently in every worker and epoch; transforms hold no other state, so they
pickle for worker processes and DistributedSampler runs.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image

from hierparse.data.dataset import Sample, Transform, as_hierarchy
from hierparse.hierarchy import Hierarchy

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    """``(height, width)`` from an int or a pair."""
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    if height <= 0 or width <= 0:
        raise ValueError(f"size must be positive, got {size!r}")
    return int(height), int(width)


def _uniform(low: float, high: float) -> float:
    return low + (high - low) * torch.rand(()).item()


def _randint(high_inclusive: int) -> int:
    return int(torch.randint(0, high_inclusive + 1, ()).item())


def resize_pair(image: np.ndarray, label: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Resize an image (bilinear) and its label (nearest: no new label values) to ``height x width``."""
    image = np.array(Image.fromarray(image).resize((width, height), Image.BILINEAR))
    label = np.array(Image.fromarray(label).resize((width, height), Image.NEAREST))
    return image, label


def pad_pair(
    image: np.ndarray, label: np.ndarray, height: int, width: int, ignore_index: int, fill: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Pad at the bottom and right to at least ``height x width``: image with ``fill``, label with ignore."""
    pad_h, pad_w = max(height - label.shape[0], 0), max(width - label.shape[1], 0)
    if pad_h == 0 and pad_w == 0:
        return image, label
    out_h, out_w = label.shape[0] + pad_h, label.shape[1] + pad_w
    padded_image = np.empty((out_h, out_w, 3), dtype=np.uint8)
    padded_image[:] = np.asarray(fill, dtype=np.uint8)
    padded_image[: image.shape[0], : image.shape[1]] = image
    padded_label = np.full((out_h, out_w), ignore_index, dtype=np.uint8)
    padded_label[: label.shape[0], : label.shape[1]] = label
    return padded_image, padded_label


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms: Sequence[Transform]):
        self.transforms = list(transforms)

    def __call__(self, sample: Sample) -> Sample:
        for transform in self.transforms:
            sample = transform(sample)
        return sample

    def __repr__(self) -> str:
        return "Compose(" + ", ".join(repr(t) for t in self.transforms) + ")"


class RandomScale:
    """Resize by a factor drawn uniformly from ``[min_scale, max_scale]``."""

    def __init__(self, min_scale: float = 0.5, max_scale: float = 2.0):
        if not 0 < min_scale <= max_scale:
            raise ValueError(f"need 0 < min_scale <= max_scale, got {min_scale}, {max_scale}")
        self.min_scale, self.max_scale = min_scale, max_scale

    def __call__(self, sample: Sample) -> Sample:
        scale = _uniform(self.min_scale, self.max_scale)
        height, width = sample["label"].shape
        new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
        image, label = resize_pair(sample["image"], sample["label"], new_h, new_w)
        return {**sample, "image": image, "label": label}

    def __repr__(self) -> str:
        return f"RandomScale({self.min_scale}, {self.max_scale})"


class RandomCrop:
    """Crop ``size`` at a random place, padding first (label with ``ignore_index``) when smaller."""

    def __init__(self, size: int | Sequence[int], ignore_index: int = 255, fill: Sequence[int] = (0, 0, 0)):
        self.height, self.width = _pair(size)
        self.ignore_index = ignore_index
        self.fill = tuple(fill)

    def __call__(self, sample: Sample) -> Sample:
        image, label = pad_pair(sample["image"], sample["label"], self.height, self.width, self.ignore_index, self.fill)
        top = _randint(label.shape[0] - self.height)
        left = _randint(label.shape[1] - self.width)
        rows, cols = slice(top, top + self.height), slice(left, left + self.width)
        return {**sample, "image": image[rows, cols], "label": label[rows, cols]}

    def __repr__(self) -> str:
        return f"RandomCrop(({self.height}, {self.width}), ignore_index={self.ignore_index})"


class RandomHorizontalFlip:
    """Mirror with probability ``p``; left/right raw ids swap through ``Hierarchy.flip_permutation()``."""

    def __init__(self, hierarchy: Hierarchy | str, p: float = 0.5):
        self.permutation = as_hierarchy(hierarchy).flip_permutation().numpy().astype(np.uint8)
        self.p = p

    def __call__(self, sample: Sample) -> Sample:
        if torch.rand(()).item() >= self.p:
            return sample
        image = np.ascontiguousarray(sample["image"][:, ::-1])
        label = self.permutation[sample["label"][:, ::-1]]
        return {**sample, "image": image, "label": label}

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class ColorJitter:
    """Random brightness, contrast and saturation, each a factor in ``[1 - amount, 1 + amount]``."""

    def __init__(self, brightness: float = 0.3, contrast: float = 0.3, saturation: float = 0.3):
        self.brightness, self.contrast, self.saturation = brightness, contrast, saturation

    def __call__(self, sample: Sample) -> Sample:
        image = sample["image"].astype(np.float32)
        image *= _uniform(1 - self.brightness, 1 + self.brightness)
        gray = image @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        contrast = _uniform(1 - self.contrast, 1 + self.contrast)
        image = contrast * image + (1 - contrast) * gray.mean()
        saturation = _uniform(1 - self.saturation, 1 + self.saturation)
        image = saturation * image + (1 - saturation) * gray[..., None]
        return {**sample, "image": np.clip(image, 0, 255).astype(np.uint8)}

    def __repr__(self) -> str:
        return f"ColorJitter({self.brightness}, {self.contrast}, {self.saturation})"


class Resize:
    """Resize to ``size`` (``(height, width)``); the label by nearest neighbour, so values stay exact."""

    def __init__(self, size: int | Sequence[int]):
        self.height, self.width = _pair(size)

    def __call__(self, sample: Sample) -> Sample:
        image, label = resize_pair(sample["image"], sample["label"], self.height, self.width)
        return {**sample, "image": image, "label": label}

    def __repr__(self) -> str:
        return f"Resize(({self.height}, {self.width}))"


class Pad:
    """Pad at the bottom and right to ``size``, or up to a multiple of ``divisor``; label with ignore."""

    def __init__(
        self,
        size: int | Sequence[int] | None = None,
        divisor: int | None = None,
        ignore_index: int = 255,
        fill: Sequence[int] = (0, 0, 0),
    ):
        if (size is None) == (divisor is None):
            raise ValueError("Pad needs exactly one of size= or divisor=")
        self.size = None if size is None else _pair(size)
        self.divisor = divisor
        self.ignore_index = ignore_index
        self.fill = tuple(fill)

    def __call__(self, sample: Sample) -> Sample:
        height, width = sample["label"].shape
        if self.size is not None:
            target_h, target_w = self.size
        else:
            target_h = -(-height // self.divisor) * self.divisor
            target_w = -(-width // self.divisor) * self.divisor
        image, label = pad_pair(sample["image"], sample["label"], target_h, target_w, self.ignore_index, self.fill)
        return {**sample, "image": image, "label": label}

    def __repr__(self) -> str:
        return f"Pad(size={self.size}, divisor={self.divisor}, ignore_index={self.ignore_index})"


class ToTensor:
    """uint8 ``HxWx3`` image -> normalised float32 tensor ``[3, H, W]``; label -> uint8 tensor ``[H, W]``."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        self.mean = np.asarray(mean, dtype=np.float32) * 255
        self.inv_std = 1 / (np.asarray(std, dtype=np.float32) * 255)

    def __call__(self, sample: Sample) -> Sample:
        image = (sample["image"].astype(np.float32) - self.mean) * self.inv_std
        image = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        label = torch.from_numpy(np.require(sample["label"], np.uint8, ["C_CONTIGUOUS", "WRITEABLE"]))
        return {**sample, "image": image, "label": label}

    def __repr__(self) -> str:
        return "ToTensor()"


def train_transform(
    hierarchy: Hierarchy | str,
    crop_size: int | Sequence[int],
    scale: tuple[float, float] = (0.5, 2.0),
    flip: bool = True,
    jitter: float = 0.3,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> Compose:
    """Random scale, crop padded with ``ignore_index``, flip swapping left/right, colour jitter, normalise."""
    hierarchy = as_hierarchy(hierarchy)
    steps: list[Transform] = [RandomScale(*scale), RandomCrop(crop_size, hierarchy.ignore_index)]
    if flip:
        steps.append(RandomHorizontalFlip(hierarchy))
    if jitter > 0:
        steps.append(ColorJitter(jitter, jitter, jitter))
    steps.append(ToTensor(mean, std))
    return Compose(steps)


def eval_transform(
    hierarchy: Hierarchy | str,
    size: int | Sequence[int] | None = None,
    mode: str = "resize",
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> Compose:
    """Normalise after ``resize`` to ``size`` (label nearest) or ``pad`` to ``size`` (label ignore), or neither."""
    hierarchy = as_hierarchy(hierarchy)
    if mode not in ("resize", "pad", "none"):
        raise ValueError(f"eval mode must be 'resize', 'pad' or 'none', got {mode!r}")
    if mode != "none" and size is None:
        raise ValueError(f"eval mode {mode!r} needs size=")
    steps: list[Transform] = []
    if mode == "resize":
        steps.append(Resize(size))
    elif mode == "pad":
        steps.append(Pad(size=size, ignore_index=hierarchy.ignore_index))
    steps.append(ToTensor(mean, std))
    return Compose(steps)
