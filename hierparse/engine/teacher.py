"""Pseudo-labels for coarse labels from a teacher model, restricted to what the coarse label allows.

A pixel labelled with a group (e.g. "Head") is relabelled with the finest class the teacher scores
highest *among the group's descendants* (Hair, not Upper-clothes), when the teacher gives that class
at least ``threshold`` of the group's probability; otherwise it keeps its coarse label (and the
loss's marginal term). Exact labels are never changed, so a wrong teacher can only move a pixel
within the set its annotator allowed. The teacher is a trained checkpoint of the same hierarchy
(e.g. the model trained on the finely labelled images alone), in eval mode and without gradients.

Self-correction (SCHP, Li et al., TPAMI 2020): with ``refresh: N`` the teacher becomes, every ``N``
iterations, the running mean of its checkpoint's weights and the student's weights at each refresh
so far, and so relabels with what the student has learnt; ``warm_start: true`` (applied by the
solver) starts the student from the teacher's weights.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from hierparse.engine.checkpoint import model_from_checkpoint
from hierparse.hierarchy import Hierarchy


class SetTeacher:
    """``relabel(images, labels)``: raw labels with confident pseudo-labels inside each coarse label's set."""

    OPTIONS = {"checkpoint", "threshold", "warm_start", "refresh"}

    def __init__(self, model: torch.nn.Module, hierarchy: Hierarchy, threshold: float = 0.0, refresh: int = 0,
                 model_config: dict[str, Any] | None = None):
        """``model``: images -> per-level logits, the last of them the finest level (on its device);
        ``refresh``: iterations between self-correction rounds (0: the teacher never changes);
        ``model_config``: the model's settings, if known (a warm start checks them)."""
        if not 0 <= threshold <= 1:
            raise ValueError(f"teacher threshold must lie in [0, 1], got {threshold!r}")
        if isinstance(refresh, bool) or not isinstance(refresh, int) or refresh < 0:
            raise ValueError(f"teacher refresh must be a whole number of iterations >= 0, got {refresh!r}")
        device = next(model.parameters()).device
        self.model = model.eval().requires_grad_(False)
        self.refresh, self.models_averaged, self.model_config = refresh, 1, model_config
        self.threshold, self.ignore_index = float(threshold), hierarchy.ignore_index
        self.fine_classes = hierarchy.num_classes[-1]
        self.table = hierarchy.label_table()[-1].to(device)
        self.members = hierarchy.set_members()[-1, :, :self.fine_classes].to(device)  # [S, C]
        self.fine_to_raw = hierarchy.fine_to_raw().to(device)

    @classmethod
    def from_config(cls, options: dict[str, Any] | None, hierarchy: Hierarchy,
                    device: torch.device) -> "SetTeacher | None":
        """``{checkpoint: PATH, threshold: 0.0, warm_start: false, refresh: 0}`` (the config's
        ``teacher``) or None; one-line errors."""
        if options is None:
            return None
        if not isinstance(options, dict) or "checkpoint" not in options or set(options) - cls.OPTIONS:
            raise ValueError("teacher must be null or a mapping with checkpoint (and threshold, warm_start, "
                             f"refresh), got {options!r}")
        if not isinstance(options.get("warm_start", False), bool):
            raise ValueError(f"teacher warm_start must be true or false, got {options['warm_start']!r}")
        model, _, checkpoint = model_from_checkpoint(str(options["checkpoint"]), device, hierarchy)
        return cls(model, hierarchy, float(options.get("threshold", 0.0)), options.get("refresh", 0),
                   checkpoint["model_config"])

    @torch.no_grad()
    def absorb(self, student: torch.nn.Module) -> None:
        """One self-correction round: the teacher's weights (and norm statistics) become the running
        mean of the models averaged so far and ``student``'s current ones."""
        self.models_averaged += 1
        taken = student.state_dict()
        for name, value in self.model.state_dict().items():
            if value.is_floating_point():
                value.lerp_(taken[name].to(value.dtype), 1 / self.models_averaged)
            else:
                value.copy_(taken[name])

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps of a self-correcting teacher: its weights and how many models they average."""
        return {"model": self.model.state_dict(), "models_averaged": self.models_averaged}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.models_averaged = state["models_averaged"]

    @torch.no_grad()
    def relabel(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        entry = self.table[labels.long()]
        coarse = (entry >= self.fine_classes) & (entry != self.ignore_index)
        if not bool(coarse.any()):
            return labels
        logits = self.model(images)[-1].float()
        probabilities = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False).softmax(1)
        allowed = self.members[torch.where(coarse, entry - self.fine_classes, 0)].permute(0, 3, 1, 2)  # [N, C, H, W]
        restricted = probabilities * allowed
        best, fine = restricted.max(1)
        confident = coarse & (best >= self.threshold * restricted.sum(1))
        return torch.where(confident, self.fine_to_raw[fine].to(labels.dtype), labels)
