"""From images of any size to per-level scores and class maps at each image's own size.

One code path serves ``hierparse evaluate``, ``hierparse predict`` and :class:`hierparse.Parser`:

- **Input size** (:class:`Inference`): ``aspect`` (default) scales the long (or short) side to
  ``size`` keeping the aspect ratio, pads to a multiple of the network's stride, and crops the
  padding off the output; ``resize`` squashes to ``size`` x ``size``; ``none`` keeps the native size;
  ``slide`` runs ``crop`` x ``crop`` windows every ``stride`` pixels over the (aspect-scaled) image
  and averages the probabilities of overlapping windows (mmsegmentation's slide inference).
  Predictions always go back to the image's own size: labels are never resized.
- **Test-time augmentation**: ``flip`` adds the mirrored image, whose scores are mirrored back with
  every level's classes swapped by :meth:`Hierarchy.class_flip` (left/right pairs declared once on
  the leaves, induced on their ancestors); ``scales`` multiply the size. Per-level probabilities are
  averaged over all views (softmax; per-node sigmoid scores for tree-min models), then decoded.
- **Scores** are log-probabilities (softmax models) or sigmoid scores (``decode: tree``); a decode
  is an argmax per level (``independent``) or the best root-to-leaf path of summed scores
  (``consistent``, ``tree``): see :func:`decode_scores`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from hierparse import ops
from hierparse.hierarchy import Hierarchy, fine_ancestors
from hierparse.ops.reference import DECODE_MODES, upsample_logits  # the op's mode codes, in order

SIZE_MODES = ("aspect", "resize", "none", "slide")
SIDES = ("long", "short")


@dataclass(frozen=True)
class Inference:
    """How images are sized and augmented at inference; the config's ``eval_*`` keys and ``tta``."""

    mode: str = "aspect"
    size: int | None = 128        # aspect/slide: the chosen side's length; resize: the square; None: native
    side: str = "long"
    crop: int | None = None       # slide: window size and step
    stride: int | None = None
    flip: bool = False
    scales: tuple[float, ...] = (1.0,)

    def __post_init__(self):
        if not isinstance(self.scales, (list, tuple)):
            raise ValueError(f"tta scales must be a list of positive numbers, got {self.scales!r}")
        object.__setattr__(self, "scales", tuple(self.scales))
        if self.mode not in SIZE_MODES:
            raise ValueError(f"eval_mode must be one of {', '.join(SIZE_MODES)}, got {self.mode!r}")
        if self.side not in SIDES:
            raise ValueError(f"eval_side must be long or short, got {self.side!r}")
        if self.mode == "resize" and self.size is None:
            raise ValueError("eval_mode resize needs an eval_size")
        if self.size is not None and (not isinstance(self.size, int) or self.size < 16):
            raise ValueError(f"eval_size must be an integer of at least 16 or null, got {self.size!r}")
        if self.mode == "slide":
            for name in ("crop", "stride"):
                value = getattr(self, name)
                if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                    raise ValueError(f"eval_mode slide needs slide {name} as a positive integer, got {value!r}")
            if self.stride > self.crop:
                raise ValueError(f"slide stride {self.stride} exceeds crop {self.crop}: pixels between windows "
                                 "would never be seen")
        if not self.scales or not all(isinstance(s, (int, float)) and not isinstance(s, bool) and s > 0
                                      for s in self.scales):
            raise ValueError(f"tta scales must be a non-empty list of positive numbers, got {list(self.scales)!r}")

    @classmethod
    def from_config(cls, config: dict[str, Any], tta: bool = True) -> "Inference":
        """The settings a training config declares (``tta`` false: without its ``tta`` views)."""
        slide = config.get("slide") or {}
        augment = (config.get("tta") or {}) if tta else {}
        if set(slide) - {"crop", "stride"}:
            raise ValueError(f"slide takes crop and stride, got {sorted(slide)}")
        if set(augment) - {"flip", "scales"}:
            raise ValueError(f"tta takes flip and scales, got {sorted(augment)}")
        return cls(mode=config.get("eval_mode", "aspect"), size=config["eval_size"],
                   side=config.get("eval_side", "long"), crop=slide.get("crop"), stride=slide.get("stride"),
                   flip=bool(augment.get("flip", False)), scales=augment.get("scales", (1.0,)))

    @property
    def views(self) -> list[tuple[float, bool]]:
        """(scale, mirrored) of every augmentation."""
        return [(scale, mirrored) for scale in self.scales for mirrored in ((False, True) if self.flip else (False,))]

    def scaled_size(self, height: int, width: int, scale: float) -> tuple[int, int]:
        """The size the network sees an ``height`` x ``width`` image at, in one view."""
        if self.mode == "resize":
            return (max(1, round(self.size * scale)),) * 2
        factor = scale
        if self.size is not None and self.mode != "none":
            factor *= self.size / (max if self.side == "long" else min)(height, width)
        return max(1, round(height * factor)), max(1, round(width * factor))


def check_mode(mode: str) -> None:
    if mode not in DECODE_MODES:
        raise ValueError(f"unknown decode mode {mode!r}; choices: {', '.join(DECODE_MODES)}")


def node_scores(logits: torch.Tensor, mode: str) -> torch.Tensor:
    """Per-class scores of one level: sigmoid for ``tree`` decoding, else log-softmax over classes."""
    return torch.sigmoid(logits) if mode == "tree" else F.log_softmax(logits, dim=1)


def average_scores(total: torch.Tensor | None, scores: torch.Tensor, mode: str) -> torch.Tensor:
    """Running sum over views: of probabilities (as a log, stably) or of sigmoid scores."""
    if total is None:
        return scores
    return total + scores if mode == "tree" else torch.logaddexp(total, scores)


def finish_average(total: torch.Tensor, views: int, mode: str) -> torch.Tensor:
    """The mean over ``views`` of what :func:`average_scores` summed."""
    if views == 1:
        return total
    return total / views if mode == "tree" else total - math.log(views)


def first_max(scores: torch.Tensor) -> torch.Tensor:
    """The class of the highest score per pixel (the first on ties), as ``argmax(dim=1)``: ``max``'s
    indices, about 3x faster than ``argmax`` over the channels of an NCHW map on the CPU."""
    return scores.max(dim=1).indices


def decode_scores(scores: Sequence[torch.Tensor], hierarchy: Hierarchy, mode: str = "independent") -> list[torch.Tensor]:
    """Per-level class maps (int64 ``[N, H, W]``, coarse -> fine) from per-level scores (:func:`node_scores`).

    ``independent``: argmax at every level on its own; levels may disagree.

    ``consistent``: the most probable root-to-leaf path. Each finest class scores the sum of the
    log-probabilities of every level at its ancestor (a product of probabilities down the tree), the
    best finest class wins and the coarse maps are its ancestors, so a fine class's parent always
    equals the prediction above it. Chosen over restricting each level to the children of the
    coarser argmax because that greedy rule can never undo a coarse mistake: a pixel the coarse
    module puts, at 51%, in the wrong region has no chance even when the fine module is sure; the
    path product weighs all levels' evidence at the same cost (one gather and sum per level).

    ``tree``: for models trained with the tree-min loss (``loss: tree_min``), whose scores are
    per-node sigmoids: HSSN's top-scoring root-to-leaf path, each finest class scoring the sum of its
    path's scores. The same path search as ``consistent``: the tree-min loss trains every node as
    its own yes/no question (a child's score bounded by its parent's), not the classes of a level
    against each other.

    A single score map for the finest level (a flat model) is also accepted: the coarse maps are
    then its prediction merged up the tree, in every mode.
    """
    check_mode(mode)
    scores = list(scores)
    flat = len(scores) == 1 and hierarchy.num_levels > 1
    if mode == "independent" and not flat:
        return [first_max(level_scores) for level_scores in scores]
    chain = [index.to(scores[0].device) for index in fine_ancestors(hierarchy)]
    if flat:
        fine = first_max(scores[0])
    else:
        fine = first_max(sum(level_scores.index_select(1, index) for level_scores, index in zip(scores, chain)))
    return [index[fine] for index in chain]


def check_logits(logits: Sequence[torch.Tensor], hierarchy: Hierarchy) -> bool:
    """Whether ``logits`` are a flat model's (one finest map); a one-line error for wrong shapes."""
    flat = len(logits) == 1 and hierarchy.num_levels > 1
    expected = hierarchy.num_classes[-1:] if flat else hierarchy.num_classes
    if len(logits) != len(expected):
        raise ValueError(
            f"hierarchy {hierarchy.name!r} has {hierarchy.num_levels} levels; got {len(logits)} "
            f"logit maps (expected one per level, or one for the finest level)"
        )
    for level, (level_logits, classes) in enumerate(zip(logits, expected)):
        if level_logits.dim() != 4 or level_logits.shape[1] != classes:
            raise ValueError(
                f"logits of level {level} have shape {tuple(level_logits.shape)}; expected "
                f"[N, {classes}, h, w] for hierarchy {hierarchy.name!r}"
            )
    return flat


def decode(logits: Sequence[torch.Tensor], hierarchy: Hierarchy, size: int | tuple[int, int],
           mode: str = "independent") -> list[torch.Tensor]:
    """Per-level int64 class maps ``[N, H, W]`` of per-level logits resized bilinearly to ``size``:
    :func:`hierparse.ops.upsample_decode` (which never holds full-resolution scores and returns uint8
    maps where classes fit: call it directly to keep them), as int64 so that they index tensors
    (a uint8 tensor would index as a mask). See :func:`decode_scores` for the modes."""
    check_mode(mode)
    check_logits(logits, hierarchy)
    size = (size, size) if isinstance(size, int) else tuple(size)
    return [m.long() for m in ops.upsample_decode(logits, ancestor_table(hierarchy), size, mode)]


def ancestor_table(hierarchy: Hierarchy) -> torch.Tensor:
    """int64 ``[L, F]``: :func:`fine_ancestors` stacked, as :func:`hierparse.ops.upsample_decode` takes it."""
    return torch.stack(fine_ancestors(hierarchy))


def resize(maps: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear resize of float maps ``[N, C, h, w]`` (a no-op at the same size)."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps.float()
    return F.interpolate(maps.float(), size=tuple(size), mode="bilinear", align_corners=False)


def pad_to(images: Sequence[torch.Tensor], height: int, width: int) -> torch.Tensor:
    """``[N, 3, height, width]``: each ``[3, h, w]`` image padded right and bottom with zeros (the mean colour)."""
    return torch.stack([F.pad(image, (0, width - image.shape[-1], 0, height - image.shape[-2])) for image in images])


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


class Predictor:
    """A model and its hierarchy, with :class:`Inference` settings: per-level scores and maps of images."""

    def __init__(self, model: torch.nn.Module, hierarchy: Hierarchy, inference: Inference = Inference(),
                 decode_mode: str = "independent"):
        check_mode(decode_mode)
        self.model, self.hierarchy, self.inference, self.decode_mode = model, hierarchy, inference, decode_mode
        self.stride = getattr(model, "output_stride", 8)
        self.device = next(model.parameters()).device
        self.flips = [hierarchy.class_flip(level).to(self.device) for level in range(hierarchy.num_levels)]
        self.ancestors = ancestor_table(hierarchy)

    @torch.no_grad()
    def scores(self, images: Sequence[torch.Tensor]) -> list[list[torch.Tensor]]:
        """Per image, per level (one level for a flat model): scores ``[C, H, W]`` at the image's own
        size, averaged over the TTA views. ``images``: normalised ``[3, H, W]`` tensors of any sizes."""
        totals: list[list[torch.Tensor | None]] = [[] for _ in images]
        for scale, mirrored in self.inference.views:
            view = self._view(images, scale, mirrored)
            for index, levels in enumerate(view):
                totals[index] = [average_scores(total, new, self.decode_mode)
                                 for total, new in zip(totals[index] or [None] * len(levels), levels)]
        views = len(self.inference.views)
        return [[finish_average(total, views, self.decode_mode)[0] for total in levels] for levels in totals]

    def decode(self, scores: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """int64 class maps ``[H, W]`` per level, coarse -> fine, of one image's scores ``[C, H, W]``."""
        return [level[0] for level in decode_scores([s[None] for s in scores], self.hierarchy, self.decode_mode)]

    @property
    def fused(self) -> bool:
        """Whether :meth:`maps` decodes logits in one op: a single view, not sliding windows. TTA and
        windows average probabilities at full resolution first, so they decode scores instead."""
        return len(self.inference.views) == 1 and self.inference.mode != "slide"

    @torch.no_grad()
    def maps(self, images: Sequence[torch.Tensor]) -> list[list[torch.Tensor]]:
        """Per image, per level: int64 class maps ``[H, W]`` at the image's own size, coarse -> fine."""
        if self.fused:
            return self._view(images, *self.inference.views[0], decoded=True)
        return [self.decode(levels) for levels in self.scores(images)]

    def _logits(self, batch: torch.Tensor, mirrored: bool) -> list[torch.Tensor]:
        """Per-level logits of a batch; a mirrored view's are mirrored back, classes swapped."""
        if not mirrored:
            return self.model(batch)
        logits = self.model(batch.flip(-1))
        offset = self.hierarchy.num_levels - len(logits)  # a flat model predicts the finest level only
        return [level_logits.flip(-1).index_select(1, self.flips[offset + k]) for k, level_logits in enumerate(logits)]

    def _view(self, images: Sequence[torch.Tensor], scale: float, mirrored: bool,
              decoded: bool = False) -> list[list[torch.Tensor]]:
        """One augmentation: per image, per level, scores ``[1, C, H, W]`` at the image's size (with
        ``decoded``: class maps ``[H, W]``). Images whose padded sizes agree share a forward pass, so
        an image's parse never depends on its batch. Logits go to the image's size in one bilinear
        step, reading only the part of the canvas the image covers."""
        sizes = [tuple(image.shape[-2:]) for image in images]
        scaled = [self.inference.scaled_size(*size, scale) for size in sizes]
        inputs = [resize(image[None].to(self.device), target)[0] for image, target in zip(images, scaled)]
        if self.inference.mode == "slide":
            return [self._slide(image, size, mirrored) for image, size in zip(inputs, sizes)]
        canvases = [(round_up(h, self.stride), round_up(w, self.stride)) for h, w in scaled]
        out: list[list[torch.Tensor]] = [[] for _ in images]
        for canvas in dict.fromkeys(canvases):
            group = [index for index, other in enumerate(canvases) if other == canvas]
            logits = self._logits(pad_to([inputs[index] for index in group], *canvas), mirrored)
            check_logits(logits, self.hierarchy)
            for position, index in enumerate(group):
                (h, w), size = scaled[index], sizes[index]
                covered = None if (h, w) == canvas else (h / canvas[0], w / canvas[1])
                one = [level_logits[position:position + 1] for level_logits in logits]
                if decoded:
                    out[index] = [m[0].long() for m in ops.upsample_decode(one, self.ancestors, size,
                                                                           self.decode_mode, covered=covered)]
                else:
                    out[index] = [node_scores(upsample_logits(x.float(), size, covered=covered), self.decode_mode)
                                  for x in one]
        return out

    def _slide(self, image: torch.Tensor, size: tuple[int, int], mirrored: bool) -> list[torch.Tensor]:
        """Windows over one scaled image; overlapping windows' probabilities averaged; scores at ``size``."""
        crop, stride = self.inference.crop, self.inference.stride
        h, w = image.shape[-2:]
        canvas = pad_to([image], max(h, crop), max(w, crop))
        height, width = canvas.shape[-2:]
        tops = sorted({min(top, height - crop) for top in range(0, max(height - crop, 0) + stride, stride)})
        lefts = sorted({min(left, width - crop) for left in range(0, max(width - crop, 0) + stride, stride)})
        sums: list[torch.Tensor] | None = None
        count = torch.zeros(1, 1, height, width, device=image.device)
        for top in tops:
            for left in lefts:
                window = canvas[..., top:top + crop, left:left + crop]
                logits = self._logits(window, mirrored)
                check_logits(logits, self.hierarchy)
                probabilities = [self._probabilities(resize(level_logits, (crop, crop))) for level_logits in logits]
                if sums is None:
                    sums = [torch.zeros(1, p.shape[1], height, width, device=image.device) for p in probabilities]
                for total, p in zip(sums, probabilities):
                    total[..., top:top + crop, left:left + crop] += p
                count[..., top:top + crop, left:left + crop] += 1
        levels = []
        for total in sums:
            mean = (total / count)[..., :h, :w]
            mean = resize(mean, size)
            levels.append(mean if self.decode_mode == "tree" else mean.clamp_min(torch.finfo(mean.dtype).tiny).log())
        return levels

    def _probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits) if self.decode_mode == "tree" else logits.softmax(dim=1)
