"""Fused multi-level losses, PyTorch operators (``torch.ops.hierparse.*``): the cross-entropy
below and HSSN's tree-min loss (:func:`tree_min_loss`).

For each level ``l`` with logits ``x_l [N, C_l, h_l, w_l]`` and raw labels ``r [N, H, W]``::

    y_l      = table[l, r]                      (raw id -> class, class set, or ignore_index)
    u_l      = x_l if (h_l, w_l) == (H, W) else
               F.interpolate(x_l, size=(H, W), mode="bilinear", align_corners=align_corners)
    loss_l   = level_weight_l * F.cross_entropy(u_l, y_l, weight=class_weights[l],
                                                 ignore_index=ignore_index,
                                                 label_smoothing=label_smoothing,
                                                 reduction=reduction)

A table entry ``C_l + s`` names class set ``s`` of level ``l`` (a label naming a node above the
level: its descendants there); with member weights ``a = set_members[l, s]`` (1 for members, 0
otherwise, as ``Hierarchy.set_members()`` gives them) the pixel's cross-entropy term is the
marginal likelihood ``-log sum_c a_c softmax(u_l)_c``, with gradient ``softmax(u_l) - q`` where
``q_c = a_c softmax(u_l)_c / sum_c' a_c' softmax(u_l)_c'``; a one-class set is plain
cross-entropy (member weights above 1 make the loss negative where they dominate; the shift
leaves the gradient as it is). For a set, the class weight is its members' weights averaged by ``a`` and label
smoothing adds its usual uniform term.

Everything is computed for all levels in one pass over the logits, with the labels read as raw ids (never an
int64 label map). Logits smaller than the labels are upsampled inside the op (CPU and CUDA), so
neither the full-resolution logits nor their gradients are ever stored; gradients come back at each level's own size. When a gradient is needed the
forward pass writes it, already scaled, and the backward pass only multiplies it by the incoming
gradient (skipped on the CPU when that is 1); per-pixel losses (``reduction="none"``) of upsampled
levels are the exception: each pixel's incoming gradient must weigh it before it is scattered to
low resolution, so their backward pass runs the kernel again, weighted by the incoming gradient.
One deliberate difference from PyTorch: with ``reduction="mean"`` a level without any valid
pixel gives loss 0 and gradient 0 instead of NaN. Results are bitwise deterministic for any thread
count on one machine; CPUs with different instruction sets (see :func:`cpu_capability`) may
differ in the last bits.

:func:`ohem_cross_entropy` is the same cross-entropy on each level's hard pixels (OHEM) in one op
call: the op selects the pixels (no sort) and writes their gradients with the loss.

The tree-min loss works the same way, except that a level's loss also reaches other levels'
logits (through the min over ancestors and the max over descendants): its backward pass uses the
forward's gradient only for a uniform incoming gradient (``losses.sum()``, also scaled, as a
``GradScaler`` does: seen from its strides, on any device without a sync) and otherwise runs the
kernel again, weighted by the incoming gradient.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import torch

from hierparse.ops.reference import REDUCTIONS, remap_labels
from hierparse.ops import reference

try:
    from hierparse import _C  # noqa: F401  (loading the library registers the operators)

    HAS_EXTENSION = hasattr(torch.ops.hierparse, "multilevel_cross_entropy")
except ImportError:
    HAS_EXTENSION = False

if not HAS_EXTENSION:
    warnings.warn(
        "hierparse._C is not built, so hierparse.ops falls back to its slower pure-PyTorch "
        "reference. Build it with `pip install --no-build-isolation -e .` (or `make test`) in "
        "the repository.",
        RuntimeWarning,
        stacklevel=2,
    )

from hierparse.ops.decode import upsample_decode  # noqa: E402  (after the library is loaded)

__all__ = [
    "HAS_EXTENSION", "cpu_capability", "multilevel_cross_entropy", "ohem_cross_entropy", "remap_labels", "reference",
    "tree_min_loss", "upsample_decode",
]


def cpu_capability() -> str:
    """The instruction set of the CPU kernel in use: ``"default"``, ``"avx2"`` or ``"avx512"``.

    The best one this CPU supports, unless the environment variable ``HIERPARSE_CPU_CAPABILITY``
    names another (read once per process; an unsupported or unknown name raises RuntimeError).
    """
    if not HAS_EXTENSION:
        raise RuntimeError("hierparse._C is not built: there is no CPU kernel")
    return torch.ops.hierparse.cpu_capability()

_REDUCTION_CODES = {name: code for code, name in enumerate(REDUCTIONS)}


def _level_weights(level_weights: Sequence[float] | None, num_levels: int) -> list[float]:
    if level_weights is None:
        return [1.0] * num_levels
    weights = [float(w) for w in level_weights]
    if len(weights) != num_levels:
        raise ValueError(f"got {len(weights)} level weights for {num_levels} levels")
    return weights


def _packed_class_weights(
    class_weights: Sequence[torch.Tensor | None] | None, logits: Sequence[torch.Tensor]
) -> torch.Tensor | None:
    """One float32 tensor holding every level's class weights (ones for levels given None)."""
    if class_weights is None or all(w is None for w in class_weights):
        return None
    if len(class_weights) != len(logits):
        raise ValueError(f"got {len(class_weights)} class-weight entries for {len(logits)} levels")
    device = next(w for w in class_weights if w is not None).device
    parts = []
    for level, (weight, x) in enumerate(zip(class_weights, logits)):
        if weight is None:
            weight = torch.ones(x.shape[1], device=device)
        if weight.dim() != 1 or weight.shape[0] != x.shape[1]:
            raise ValueError(
                f"level {level} class weights have shape {list(weight.shape)} but level {level} "
                f"logits have {x.shape[1]} classes"
            )
        parts.append(weight.to(device, torch.float32))
    return torch.cat(parts)


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
    """Per-level softmax cross-entropy of ``logits`` (coarse -> fine) against raw ``labels``.

    Returns float32 ``[L]`` (float64 for float64 logits), or ``[L, N, H, W]`` per-pixel losses
    for ``reduction="none"``. ``table`` is ``Hierarchy.label_table()``, on the logits' device or (best
    for CUDA logits: no host sync) on the CPU, as may be ``set_members`` and the class weights.
    A level's logits may be smaller than the labels (``[N, C, h, w]``, ``h <= H``, ``w <= W``):
    they are scored as if upsampled by ``F.interpolate(mode="bilinear", align_corners=align_corners)``.
    ``set_members`` ``[L, S, C]`` (``Hierarchy.set_members()``) lets table entries name class sets.
    """
    logits = list(logits)
    if reduction not in _REDUCTION_CODES:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    weights = _level_weights(level_weights, len(logits))
    if not HAS_EXTENSION:
        return reference.multilevel_cross_entropy(
            logits,
            labels,
            table,
            ignore_index=ignore_index,
            level_weights=weights,
            class_weights=class_weights,
            label_smoothing=label_smoothing,
            reduction=reduction,
            align_corners=align_corners,
            set_members=set_members,
        )
    # Per-pixel losses of levels upsampled in the op get their gradients in the backward pass (the
    # op runs again, weighing each pixel by its incoming gradient), not here.
    upsampled = any(x.shape[-2:] != labels.shape[-2:] for x in logits)
    compute_grad = (torch.is_grad_enabled() and any(x.requires_grad for x in logits)
                    and not (reduction == "none" and upsampled))
    losses, _ = torch.ops.hierparse.multilevel_cross_entropy(
        logits,
        labels,
        table,
        _packed_class_weights(class_weights, logits),
        weights,
        float(label_smoothing),
        int(ignore_index),
        _REDUCTION_CODES[reduction],
        compute_grad,
        bool(align_corners),
        set_members,
    )
    return losses


def ohem_cross_entropy(
    logits: Sequence[torch.Tensor],
    labels: torch.Tensor,
    table: torch.Tensor,
    *,
    threshold: float = 0.7,
    min_kept: int = 3000,
    ignore_index: int = 255,
    level_weights: Sequence[float] | None = None,
    class_weights: Sequence[torch.Tensor | None] | None = None,
    label_smoothing: float = 0.0,
    align_corners: bool = False,
    set_members: torch.Tensor | None = None,
) -> torch.Tensor:
    """:func:`multilevel_cross_entropy` on each level's hard pixels (OHEM, as mmsegmentation's
    ``OHEMPixelSampler``), in one op call: float32 ``[L]`` (float64 for float64 logits).

    Per level, a valid pixel is kept when the plain softmax probability of its target (for a class
    set, the summed probability of its members, weighed by their member weights) is below
    ``max(threshold, p_k)``, ``p_k`` the ``min(min_kept * N, valid - 1)``-th smallest (from 0) of the
    level's valid pixels; the level's loss is the mean per-pixel loss (class weights, label smoothing
    and level weight applied) over its kept pixels, 0 when none is kept. The op selects the pixels
    without sorting and writes the gradients with the loss, so the backward pass only scales them.
    """
    logits = list(logits)
    weights = _level_weights(level_weights, len(logits))
    options = dict(ignore_index=ignore_index, level_weights=weights, class_weights=class_weights,
                   label_smoothing=label_smoothing, align_corners=align_corners, set_members=set_members)
    if not HAS_EXTENSION:
        return reference.ohem_cross_entropy(logits, labels, table, threshold=threshold, min_kept=min_kept, **options)
    compute_grad = torch.is_grad_enabled() and any(x.requires_grad for x in logits)
    losses, _ = torch.ops.hierparse.multilevel_ohem_cross_entropy(
        logits, labels, table, _packed_class_weights(class_weights, logits), weights, float(label_smoothing),
        int(ignore_index), compute_grad, bool(align_corners), set_members, float(threshold), int(min_kept))
    return losses


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
    """HSSN's tree-min loss (Li et al., "Deep Hierarchical Semantic Segmentation", CVPR 2022).

    The nodes of the class tree are the classes of all levels, ``parents[l-1][c]`` the parent (at
    level ``l-1``) of class ``c`` of level ``l``; ``s_v = sigmoid(x_v)``. A pixel is valid when no
    level ignores its raw id, and ``y_v = 1`` for the nodes ``(l, table[l, raw])`` of its label path::

        y_v = 1:  -(1 - m_v)^gamma log(m_v),    m_v = min of s over v and its ancestors
        y_v = 0:  -M_v^gamma log(1 - M_v),      M_v = max of s over v and its descendants

    (gamma = ``focal_gamma``; the gradient goes to the node that gives the min or max). Where the
    label is a class set at level ``l`` (``set_members``, a coarse label), no node of the level is on
    the path: the set's members have no term and the others are negatives. Level ``l``'s
    loss is ``level_weights[l]`` times the sum of its nodes' terms over the valid pixels, divided by
    their number for ``"mean"`` (0 without one); returns float32 ``[L]`` (float64 for float64
    logits), or ``[L, N, H, W]`` for ``reduction="none"`` (0 at invalid pixels).
    """
    logits = list(logits)
    if reduction not in _REDUCTION_CODES:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    weights = _level_weights(level_weights, len(logits))
    if not HAS_EXTENSION:
        return reference.tree_min_loss(
            logits,
            labels,
            table,
            parents,
            ignore_index=ignore_index,
            focal_gamma=focal_gamma,
            level_weights=weights,
            reduction=reduction,
            set_members=set_members,
        )
    reference.check_parents(parents, [x.shape[1] for x in logits])
    compute_grad = torch.is_grad_enabled() and any(x.requires_grad for x in logits)
    losses, _ = torch.ops.hierparse.tree_min_loss(
        logits,
        labels,
        table,
        [int(p) for entry in parents for p in entry],
        weights,
        float(focal_gamma),
        int(ignore_index),
        _REDUCTION_CODES[reduction],
        compute_grad,
        set_members,
    )
    return losses


if HAS_EXTENSION:

    def _fake_outputs(logits, labels, reduction, compute_grad):
        dtype = torch.float64 if logits[0].dtype == torch.float64 else torch.float32
        shape = (len(logits), *labels.shape) if reduction == _REDUCTION_CODES["none"] else (len(logits),)
        losses = logits[0].new_empty(shape, dtype=dtype)
        grads = [torch.empty_like(x) for x in logits] if compute_grad else []  # at each level's own size
        return losses, grads

    @torch.library.register_fake("hierparse::multilevel_cross_entropy")
    def _multilevel_cross_entropy_fake(
        logits, labels, table, class_weights, level_weights, label_smoothing, ignore_index, reduction,
        compute_grad, align_corners=False, set_members=None, grad_weights=None,
    ):
        return _fake_outputs(logits, labels, reduction, compute_grad)

    @torch.library.register_fake("hierparse::multilevel_ohem_cross_entropy")
    def _multilevel_ohem_cross_entropy_fake(
        logits, labels, table, class_weights, level_weights, label_smoothing, ignore_index, compute_grad,
        align_corners, set_members, threshold, min_kept,
    ):
        return _fake_outputs(logits, labels, _REDUCTION_CODES["mean"], compute_grad)

    @torch.library.register_fake("hierparse::tree_min_loss")
    def _tree_min_loss_fake(
        logits, labels, table, parents, level_weights, focal_gamma, ignore_index, reduction, compute_grad,
        set_members=None, grad_weights=None,
    ):
        return _fake_outputs(logits, labels, reduction, compute_grad)

    def _is_one(grad: torch.Tensor) -> bool:
        """True when the incoming gradient is all ones; checked only on real CPU tensors, where it
        costs no device sync and no data-dependent branch in a traced graph."""
        return type(grad) is torch.Tensor and grad.device.type == "cpu" and bool(torch.all(grad == 1))

    def _uniform_value(grad: torch.Tensor) -> torch.Tensor | None:
        """The incoming gradient's one value (a 0-dim view) when all its entries are one element
        in memory, as ``losses.sum()`` (or ``scaler.scale(losses.sum())``) gives it, else None: a
        proof of uniformity read from the strides, so no device sync (traced tensors: None)."""
        if type(grad) is not torch.Tensor or any(n > 1 and s != 0 for n, s in zip(grad.shape, grad.stride())):
            return None
        return grad[(0,) * grad.dim()]

    def _register_autograd(name: str, *, cross_level: bool, reduction_arg: int | None = 7) -> None:
        """Autograd of a fused op whose forward pass wrote the gradients of its summed losses, already
        scaled. Each level's gradient is then multiplied by that level's incoming gradient (per pixel
        for reduction "none"), unless the op has to run again with the incoming gradient as
        grad_weights (when it is not uniform): with cross_level (a level's loss reaches other levels'
        logits), or for per-pixel losses of levels upsampled in the op (each pixel's gradient must be
        weighed before it is scattered to low resolution). reduction_arg: the position of the op's
        reduction argument, None for an op whose losses are per level."""
        op = getattr(torch.ops.hierparse, name)

        def setup_context(ctx, inputs, output):
            logits, labels, table = inputs[:3]
            ctx.reduction = _REDUCTION_CODES["mean"] if reduction_arg is None else inputs[reduction_arg]
            grads = output[1]
            ctx.mark_non_differentiable(*grads)
            ctx.set_materialize_grads(False)  # else autograd fills a logits-sized zero "gradient" per level
            ctx.num_grads, ctx.num_levels = len(grads), len(logits)
            upsampled = any(x.shape[-2:] != labels.shape[-2:] for x in logits)
            ctx.rerun = cross_level or (ctx.reduction == _REDUCTION_CODES["none"] and upsampled)
            if ctx.rerun:
                # the arguments before compute_grad, and those between it and grad_weights (the last)
                ctx.options, ctx.extra = inputs[3:8], inputs[9:-1]
                ctx.save_for_backward(*grads, labels, table, *logits)
            else:
                ctx.save_for_backward(*grads)

        def backward(ctx, grad_losses, _grad_grads):
            grads = ctx.saved_tensors[:ctx.num_grads]
            none = [None] * (len(ctx.needs_input_grad) - 1)  # the arguments the op was called with
            if grad_losses is None:  # the losses were not used
                return [None] * ctx.num_levels, *none
            if ctx.rerun:
                uniform = _uniform_value(grad_losses) if grads else None
                if grads and _is_one(grad_losses):
                    logit_grads = list(grads)
                elif uniform is not None:  # the gradient of the summed losses, scaled
                    logit_grads = [g * uniform.to(g.dtype) for g in grads]
                else:
                    labels, table, *logits = ctx.saved_tensors[ctx.num_grads:]
                    _, logit_grads = op(logits, labels, table, *ctx.options, True, *ctx.extra, grad_losses)
            elif not grads:
                raise RuntimeError(f"{name} was called with compute_grad=False; no gradient was kept")
            elif ctx.reduction == _REDUCTION_CODES["none"] and not cross_level:
                logit_grads = [g * grad_losses[l].unsqueeze(1).to(g.dtype) for l, g in enumerate(grads)]
            elif _is_one(grad_losses):
                logit_grads = list(grads)
            else:
                logit_grads = [g * grad_losses[l].to(g.dtype) for l, g in enumerate(grads)]
            return logit_grads, *none

        torch.library.register_autograd(f"hierparse::{name}", backward, setup_context=setup_context)

    _register_autograd("multilevel_cross_entropy", cross_level=False)
    _register_autograd("tree_min_loss", cross_level=True)
    _register_autograd("multilevel_ohem_cross_entropy", cross_level=False, reduction_arg=None)
