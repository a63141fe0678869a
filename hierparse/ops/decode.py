"""``upsample_decode``: per-level class maps of low-resolution logits at any output size, without
full-resolution float maps (``torch.ops.hierparse.upsample_decode``; CPU and CUDA kernels)."""

from __future__ import annotations

from typing import Sequence

import torch

from hierparse.ops.reference import DECODE_MODES, decode_dtypes
from hierparse.ops import reference

HAS_DECODE = hasattr(torch.ops.hierparse, "upsample_decode")


def upsample_decode(logits: Sequence[torch.Tensor], ancestors: torch.Tensor, size: Sequence[int],
                    mode: str = "independent", *, align_corners: bool = False,
                    covered: Sequence[float] | None = None) -> list[torch.Tensor]:
    """Class maps ``[N, H, W]`` per level (uint8 where a level's classes fit, else int64) of
    ``logits`` (coarse -> fine, ``[N, C_l, h_l, w_l]``; or the finest level's alone, a flat model)
    resized bilinearly to ``size = (H, W)`` as ``F.interpolate(mode="bilinear",
    align_corners=align_corners)`` would.

    ``ancestors`` (int64 ``[L, F]`` on the CPU, ``torch.stack(fine_ancestors(hierarchy))``): each
    finest class's ancestor per level. ``mode``: ``independent`` (argmax per level), ``consistent``
    (the best root-to-leaf path of log-probabilities) or ``tree`` (the best path of sigmoid scores);
    a flat model's coarse maps are its finest prediction's ancestors. ``covered`` ``(h, w)``: the
    output spans only that top-left fraction of the logits (an image padded to a canvas).

    Each output pixel is interpolated from its four low-resolution neighbours and decided on the
    spot in float32, and again in float64 where the winner's lead is within 2^-14 of the compared
    magnitude; so the maps equal those of the float64 decode (``F.interpolate`` in float64, then
    argmax or path search) except for classes that tie within float64 rounding. Exact ties go to
    the lowest class index, as ``argmax``. Bitwise deterministic; no gradient.
    """
    logits = list(logits)
    if mode not in DECODE_MODES:
        raise ValueError(f"unknown decode mode {mode!r}; choices: {', '.join(DECODE_MODES)}")
    if not HAS_DECODE:
        return reference.upsample_decode(logits, ancestors, size, mode, align_corners=align_corners, covered=covered)
    return list(torch.ops.hierparse.upsample_decode(
        [x.detach() for x in logits], ancestors.cpu(), list(size), DECODE_MODES.index(mode),
        bool(align_corners), None if covered is None else [float(c) for c in covered]))


if HAS_DECODE:

    @torch.library.register_fake("hierparse::upsample_decode")
    def _upsample_decode_fake(logits, ancestors, size, mode, align_corners=False, covered=None):
        return [logits[0].new_empty((logits[0].shape[0], *size), dtype=dtype)
                for dtype in decode_dtypes(logits, ancestors)]


def _decomposition(logits, ancestors, size, mode, align_corners=False, covered=None):
    return reference.upsample_decode(logits, ancestors, size, DECODE_MODES[mode], align_corners=align_corners,
                                     covered=covered)


def export_decompositions() -> dict:
    """torch.export's default decomposition table, with ``upsample_decode`` in standard operators
    (``ExportedProgram.run_decompositions``): what an exported graph runs without hierparse."""
    table = torch.export.default_decompositions()
    if HAS_DECODE:
        table[torch.ops.hierparse.upsample_decode.default] = _decomposition
    return table
