"""The fused multi-level cross-entropy, a PyTorch operator (``torch.ops.hierparse.*``).

For each level ``l`` with logits ``x_l [N, C_l, H, W]`` and raw labels ``r [N, H, W]``::

    y_l      = table[l, r]                                  (raw id -> class, or ignore_index)
    loss_l   = level_weight_l * F.cross_entropy(x_l, y_l, weight=class_weights[l],
                                                 ignore_index=ignore_index,
                                                 label_smoothing=label_smoothing,
                                                 reduction=reduction)

computed for all levels in one pass over the logits, with the labels read as raw ids (never an
int64 label map). When a gradient is needed the forward pass writes it, already scaled, and the
backward pass only multiplies it by the incoming gradient (skipped on the CPU when that is 1).
One deliberate difference from PyTorch: with ``reduction="mean"`` a level without any valid
pixel gives loss 0 and gradient 0 instead of NaN. Results are bitwise deterministic for any thread
count on one machine; CPUs with different instruction sets (see :func:`cpu_capability`) may
differ in the last bits.
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

__all__ = ["HAS_EXTENSION", "cpu_capability", "multilevel_cross_entropy", "remap_labels", "reference"]


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
) -> torch.Tensor:
    """Per-level softmax cross-entropy of ``logits`` (coarse -> fine) against raw ``labels``.

    Returns float32 ``[L]`` (float64 for float64 logits), or ``[L, N, H, W]`` per-pixel losses
    for ``reduction="none"``. ``table`` is ``Hierarchy.label_table()`` (on the logits' device).
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
        )
    compute_grad = torch.is_grad_enabled() and any(x.requires_grad for x in logits)
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
    )
    return losses


if HAS_EXTENSION:

    @torch.library.register_fake("hierparse::multilevel_cross_entropy")
    def _multilevel_cross_entropy_fake(
        logits, labels, table, class_weights, level_weights, label_smoothing, ignore_index, reduction,
        compute_grad,
    ):
        dtype = torch.float64 if logits[0].dtype == torch.float64 else torch.float32
        shape = (len(logits), *labels.shape) if reduction == _REDUCTION_CODES["none"] else (len(logits),)
        losses = logits[0].new_empty(shape, dtype=dtype)
        grads = [torch.empty_like(x) for x in logits] if compute_grad else []
        return losses, grads

    def _setup_context(ctx, inputs, output):
        ctx.reduction = inputs[7]
        grads = output[1]
        ctx.mark_non_differentiable(*grads)
        ctx.set_materialize_grads(False)  # else autograd fills a logits-sized zero "gradient" per level
        ctx.save_for_backward(*grads)

    def _is_one(grad: torch.Tensor) -> bool:
        """True when the incoming gradient is all ones; checked only on real CPU tensors, where it
        costs no device sync and no data-dependent branch in a traced graph."""
        return type(grad) is torch.Tensor and grad.device.type == "cpu" and bool(torch.all(grad == 1))

    def _backward(ctx, grad_losses, _grad_grads):
        grads = ctx.saved_tensors
        if grad_losses is None:  # the losses were not used
            return [None] * len(grads), None, None, None, None, None, None, None, None
        if not grads:
            raise RuntimeError(
                "multilevel_cross_entropy was called with compute_grad=False; no gradient was kept"
            )
        if ctx.reduction == _REDUCTION_CODES["none"]:
            logit_grads = [g * grad_losses[l].unsqueeze(1).to(g.dtype) for l, g in enumerate(grads)]
        elif _is_one(grad_losses):
            logit_grads = list(grads)
        else:
            logit_grads = [g * grad_losses[l].to(g.dtype) for l, g in enumerate(grads)]
        return logit_grads, None, None, None, None, None, None, None, None

    torch.library.register_autograd(
        "hierparse::multilevel_cross_entropy", _backward, setup_context=_setup_context
    )
