"""What updates the model in a training run: the loss, the set teacher, the optimiser, the
learning-rate schedule and the (fp16) gradient scaler, built from a config and checkpointed together."""

from __future__ import annotations

from typing import Any

import torch

from hierparse.data.mixture import exact_pixel_counts
from hierparse.engine.checkpoint import build_from_config, model_config
from hierparse.engine.teacher import SetTeacher
from hierparse.losses import OHEM, HierarchicalLoss


class PolyWarmup:
    """Learning-rate factor: linear warm-up from ``warmup_factor`` to 1, then ``(1 - it / max_iters) ** power``."""

    def __init__(self, max_iters: int, warmup_iters: int, warmup_factor: float, power: float):
        self.max_iters, self.warmup_iters = max_iters, warmup_iters
        self.warmup_factor, self.power = warmup_factor, power

    def __call__(self, iteration: int) -> float:
        decay = max(0.0, 1 - iteration / self.max_iters) ** self.power
        if iteration < self.warmup_iters:
            progress = iteration / self.warmup_iters
            return decay * (self.warmup_factor + (1 - self.warmup_factor) * progress)
        return decay


def build_optimizer(model: torch.nn.Module, config: dict[str, Any]) -> torch.optim.Optimizer:
    """SGD with momentum or AdamW; no weight decay on norm weights and biases (1-d parameters)."""
    decayed = [p for p in model.parameters() if p.requires_grad and p.dim() > 1]
    plain = [p for p in model.parameters() if p.requires_grad and p.dim() <= 1]
    groups = [{"params": decayed, "weight_decay": config["weight_decay"]}, {"params": plain, "weight_decay": 0.0}]
    if config["optimizer"] == "sgd":
        return torch.optim.SGD(groups, lr=config["lr"], momentum=config["momentum"])
    return torch.optim.AdamW(groups, lr=config["lr"])


class Solver:
    """The model of a run and what trains it; ``update`` is one optimiser step on given losses."""

    def __init__(self, config: dict[str, Any], hierarchy, label_tree, train_set, device: torch.device,
                 memory_format: torch.memory_format, amp: str | None):
        self.model = build_from_config(hierarchy, model_config(config), config["pretrained"]).to(
            device, memory_format=memory_format)
        self.loss = HierarchicalLoss(label_tree, level_weights=config["level_weights"],
                                     class_weights=config["class_weights"],
                                     label_smoothing=config["label_smoothing"],
                                     ohem=OHEM.from_config(config["ohem"]), loss=config["loss"],
                                     focal_gamma=config["focal_gamma"],
                                     coarse_labels=config["coarse_labels"],
                                     class_pixels=exact_pixel_counts(train_set) if config["coarse_labels"] == "balanced"
                                     else None).to(device)
        self.teacher = SetTeacher.from_config(config["teacher"], label_tree, device)
        # the state dicts a checkpoint keeps; a self-correcting teacher changes, so it is one of them
        self.state_names = ("model", "optimizer", "scheduler", "scaler")
        if self.teacher is not None:
            self.teacher.model.to(memory_format=memory_format)
            if config["teacher"].get("warm_start", False):
                self._start_from_teacher(config)
            if self.teacher.refresh:
                self.state_names += ("teacher",)
        self.optimizer = build_optimizer(self.model, config)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, PolyWarmup(config["max_iters"], config["warmup_iters"], config["warmup_factor"],
                                       config["poly_power"]))
        self.scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")

    def _start_from_teacher(self, config: dict[str, Any]) -> None:
        wanted = model_config(config)
        if self.teacher.model_config != wanted:
            raise ValueError(f"teacher warm_start: {config['teacher']['checkpoint']} holds a model "
                             f"{self.teacher.model_config}, this run builds {wanted}")
        self.model.load_state_dict(self.teacher.model.state_dict())

    def targets(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The labels to train on: ``labels``, their coarse pixels relabelled by the teacher if there is one."""
        return labels if self.teacher is None else self.teacher.relabel(images, labels)

    def update(self, losses: torch.Tensor) -> None:
        """Back-propagate the summed ``losses`` and step the optimiser, the scaler and the schedule."""
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(losses.sum()).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()

    def end_of_step(self, iteration: int) -> None:
        """After optimiser step ``iteration`` (counted from 1): a self-correction round when one is due."""
        if self.teacher is not None and self.teacher.refresh and iteration % self.teacher.refresh == 0:
            self.teacher.absorb(self.model)

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def state(self) -> dict[str, Any]:
        """The state dicts a checkpoint keeps (keys: :attr:`state_names`)."""
        return {name: getattr(self, name).state_dict() for name in self.state_names}

    def restore(self, checkpoint: dict[str, Any]) -> None:
        for name in self.state_names:
            getattr(self, name).load_state_dict(checkpoint[name])
