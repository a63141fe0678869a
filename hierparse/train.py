"""``python -m hierparse.train`` / ``hierparse train``: train a stacked parser, evaluate it, write a run directory.

With no arguments: the light stacked PSP model on synthetic LIP-like people with ``lip.yaml``,
a few minutes on a 2-core CPU, then per-level mIoU. Configuration: :mod:`hierparse.config`.
Under ``torchrun --nproc_per_node=K -m hierparse.train ...`` every process trains on its shard
with DistributedDataParallel (gloo on CPU, nccl on GPU); only rank 0 writes.

Run directory (``out``)::

    config.yaml  hierarchy.yaml  last.pt  best.pt  metrics.jsonl  loss.png  miou.png  samples.png  tb/
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.utils.data
from torch.nn.parallel import DistributedDataParallel

from hierparse import config as configuration
from hierparse.data import build_dataset, train_transform
from hierparse.data.mixture import build_mixture, exact_pixel_counts, label_hierarchy, source_maps
from hierparse.engine import distributed
from hierparse.engine.checkpoint import (FORMAT, build_from_config, capture_rng, checkpoint_hierarchy,
                                        load_checkpoint, model_config, restore_rng)
from hierparse.engine.command import run_command
from hierparse.engine.io import save_torch, write_text, writable_dir
from hierparse.engine.run_log import RunLog
from hierparse.engine.sampling import EpochSampler, SeededSamples
from hierparse.engine.teacher import SetTeacher
from hierparse.engine.visualize import plot_curves
from hierparse.evaluate import (build_eval_dataset, eval_loader, evaluate_model, map_option, require_samples,
                                save_sample_grid)
from hierparse.hierarchy import load_hierarchy
from hierparse.inference import Inference
from hierparse.losses import OHEM, HierarchicalLoss
from hierparse.metrics import format_metrics


AMP_DTYPES = {None: None, "bf16": torch.bfloat16, "fp16": torch.float16}


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 in hardware: a GPU that supports it, or a CPU with
    AVX512-BF16 or AMX tiles (elsewhere oneDNN emulates bfloat16, slower than float32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return device.type == "cpu" and (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def resolve_amp(amp: str | None, device: torch.device) -> str | None:
    """The autocast mode to train with: ``auto`` becomes bf16 where the device has native bfloat16,
    else None (float32); fp16 needs a GPU."""
    if amp == "auto":
        return "bf16" if native_bf16(device) else None
    if amp == "fp16" and device.type != "cuda":
        raise ValueError("amp fp16 needs a GPU; use amp bf16 on the CPU")
    return amp


class TrainingDiverged(ValueError):
    """A non-finite loss; the message names the iteration and the level."""


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


def cpu_threads(config: dict[str, Any]) -> int:
    """Torch threads per process: ``threads``, else the cores left to each process after its data workers."""
    if config["threads"] is not None:
        return config["threads"]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // distributed.world_size() - config["workers"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def format_duration(seconds: float) -> str:
    minutes, seconds = divmod(int(round(seconds)), 60)
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


def run_directory_files(out: Path, config: dict[str, Any], hierarchy, log: RunLog) -> None:
    """Rank 0 checks that ``out`` is writable, clears a previous run's logs (unless resuming) and saves
    the config and the hierarchy; every rank raises the same error if that fails."""
    failure = None
    if log.main:
        try:
            writable_dir(out, "run directory")
            if not config["resume"]:
                if (out / "last.pt").exists():
                    log.print(f"starting a new run in {out} (resume true would continue the one there)")
                for stale in [out / "metrics.jsonl", *(out / "tb").glob("events.out.tfevents.*")]:
                    stale.unlink(missing_ok=True)
            write_text(out / "config.yaml", configuration.dump({**config, "resume": False}))
            source = Path(hierarchy.source)
            write_text(out / "hierarchy.yaml", source.read_text() if source.is_file() else hierarchy.to_yaml())
        except OSError as error:
            failure = error
    message = distributed.broadcast_object(None if failure is None else str(failure))
    if failure is not None:
        raise failure
    if message is not None:
        raise PermissionError(message)


class Trainer:
    """One training run: builds data, model and solver from a config, then trains, evaluates and checkpoints.

    ``run()`` trains to ``max_iters``; ``train_step`` is one optimiser step; ``evaluate_and_checkpoint``
    scores the validation split and writes ``last.pt``/``best.pt``, curves and samples. What is
    reported along the way goes through :class:`~hierparse.engine.run_log.RunLog` (``self.log``).
    """

    def __init__(self, config: dict[str, Any]):
        self.config = config
        self.device = distributed.setup(config["device"])
        self.rank, self.world = distributed.rank(), distributed.world_size()
        self.main = self.rank == 0
        self.amp = resolve_amp(config["amp"], self.device)
        self.memory_format = torch.channels_last if config["channels_last"] else torch.contiguous_format
        if self.device.type == "cpu":
            torch.set_num_threads(cpu_threads(config))
        self.out = Path(config["out"])
        self.log = RunLog(self.out, self.main, config["max_iters"])
        self.hierarchy = load_hierarchy(config["hierarchy"])
        # the training labels' tree: the hierarchy, with raw ids for the unions of the sources' label maps
        self.label_tree = label_hierarchy(config["datasets"], self.hierarchy, config["map"])
        self.train_set, self.val_set = self._datasets()
        checkpoint = self._checkpoint_to_resume()

        seed_everything(config["seed"] + self.rank)
        self._build_solver()
        self.iteration, self.best_miou, self.result = 0, -math.inf, None
        if checkpoint is not None:
            self._restore(checkpoint)
        self.saved_iteration = self.iteration if checkpoint is not None else None
        self.network = self._wrap_model()
        self.sampler = EpochSampler(self.train_set, self.world, self.rank, config["seed"])
        self.iters_per_epoch = self.sampler.num_samples // config["batch_size"]
        if self.iters_per_epoch == 0:
            raise ValueError(
                f"the training split has {len(self.train_set)} images, fewer than one batch of "
                f"{config['batch_size']} per process ({self.world} processes); lower batch_size")
        # only once everything above is known to work: no half-made run directory
        run_directory_files(self.out, config, self.hierarchy, self.log)
        self.train_loader = torch.utils.data.DataLoader(
            SeededSamples(self.train_set, config["seed"]), batch_size=config["batch_size"], sampler=self.sampler,
            num_workers=config["workers"], pin_memory=self.device.type == "cuda", drop_last=True,
            persistent_workers=config["workers"] > 0,
            generator=torch.Generator(),  # keeps the global random stream untouched (exact resume)
        )
        self.val_loader = eval_loader(self.val_set, config, self.device)
        self.inference = Inference.from_config(config, tta=False)  # periodic evaluation without test-time views
        self.log.open_events(self.iteration, resumed=checkpoint is not None)
        if checkpoint is not None:  # last, so that nothing above shifts the restored random streams
            restore_rng(checkpoint["rng"][self.rank % len(checkpoint["rng"])])

    # ------------------------------------------------------------------ set-up
    def _datasets(self) -> tuple[torch.utils.data.Dataset, torch.utils.data.Dataset]:
        config = self.config
        options = {"n": config["synthetic_train_images"]} if config["dataset"] == "synthetic" else {}
        augment = train_transform(self.label_tree, config["crop_size"], scale=tuple(config["train_scale"]))
        if config["datasets"] is not None:
            return (build_mixture(config["datasets"], self.hierarchy, augment, config["crop_size"], config["train_split"]),
                    build_eval_dataset(config, self.hierarchy, config["val_split"]))
        train_set = build_dataset(config["dataset"], config["root"], config["train_split"], hierarchy=self.hierarchy,
                                  transform=augment, size=config["crop_size"], **options, **map_option(config))
        return (require_samples(train_set, config, config["train_split"]),
                build_eval_dataset(config, self.hierarchy, config["val_split"]))

    def _checkpoint_to_resume(self) -> dict[str, Any] | None:
        if not self.config["resume"]:
            return None
        path = self.out / "last.pt"
        if not path.exists():
            raise FileNotFoundError(f"cannot resume: {path} does not exist (train without resume first)")
        checkpoint = load_checkpoint(path)
        checkpoint_hierarchy(checkpoint, path, self.hierarchy)
        if checkpoint["model_config"] != model_config(self.config):
            raise ValueError(f"cannot resume: {path} holds a model {checkpoint['model_config']}, "
                             f"the config asks for {model_config(self.config)}")
        return checkpoint

    def _build_solver(self) -> None:
        """Model, loss, optimiser, learning-rate schedule and (fp16) gradient scaler."""
        config = self.config
        self.model = build_from_config(self.hierarchy, model_config(config), config["pretrained"]).to(
            self.device, memory_format=self.memory_format)
        self.level_names = self.model.level_names
        self.loss = HierarchicalLoss(self.label_tree, level_weights=config["level_weights"],
                                     class_weights=config["class_weights"],
                                     label_smoothing=config["label_smoothing"],
                                     ohem=OHEM.from_config(config["ohem"]), loss=config["loss"],
                                     focal_gamma=config["focal_gamma"],
                                     coarse_labels=config["coarse_labels"],
                                     class_pixels=exact_pixel_counts(self.train_set) if config["coarse_labels"] == "balanced"
                                     else None).to(self.device)
        self.teacher = SetTeacher.from_config(config["teacher"], self.label_tree, self.device)
        if self.teacher is not None:
            self.teacher.model.to(memory_format=self.memory_format)
        self.optimizer = build_optimizer(self.model, config)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, PolyWarmup(config["max_iters"], config["warmup_iters"], config["warmup_factor"],
                                       config["poly_power"]))
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == "fp16")

    def _wrap_model(self) -> torch.nn.Module:
        """The module that trains: the model, under DDP with several processes, compiled on request."""
        network: torch.nn.Module = self.model
        if self.world > 1:
            if self.device.type == "cuda":
                network = torch.nn.SyncBatchNorm.convert_sync_batchnorm(network)
            network = DistributedDataParallel(
                network, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        return torch.compile(network) if self.config["compile"] else network

    def _restore(self, checkpoint: dict[str, Any]) -> None:
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        self.scaler.load_state_dict(checkpoint["scaler"])
        self.iteration, self.best_miou = checkpoint["iteration"], checkpoint["best_miou"]
        self.log.restore(self.iteration)
        if checkpoint["amp"] != self.amp:  # amp auto on a machine with(out) native bfloat16
            self.log.print(f"note: iterations 1-{self.iteration} ran in {checkpoint['amp'] or 'float32'}, "
                           f"the rest run in {self.amp or 'float32'} (amp {self.config['amp'] or 'null'} on this device)")

    # ------------------------------------------------------------------ loop
    def train_step(self, batch: dict[str, Any]) -> torch.Tensor:
        """One optimiser step; returns the per-level losses averaged over processes (detached)."""
        images = batch["image"].to(self.device, non_blocking=True, memory_format=self.memory_format)
        labels = batch["label"].to(self.device, non_blocking=True)
        if self.teacher is not None:
            labels = self.teacher.relabel(images, labels)
        with torch.autocast(self.device.type, dtype=AMP_DTYPES[self.amp], enabled=self.amp is not None):
            logits = self.network(images)
        losses = self.loss([scores.float() for scores in logits], labels)
        reported = losses.detach().clone()
        if self.world > 1:
            torch.distributed.all_reduce(reported)
            reported /= self.world
        if not torch.isfinite(reported).all():
            level = int((~torch.isfinite(reported)).nonzero()[0])
            kept = ("no checkpoint was written" if self.saved_iteration is None else
                    f"{self.out / 'last.pt'} (iteration {self.saved_iteration}) is intact")
            raise TrainingDiverged(
                f"the loss of level {level} ({self.level_names[level]}) is {reported[level].item()} at iteration "
                f"{self.iteration + 1}; training stopped, {kept} (try a lower lr)")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(losses.sum()).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.iteration += 1
        return reported

    def run(self) -> None:
        """Train to ``max_iters``, evaluating every ``eval_interval``; ``result`` holds the last evaluation."""
        config = self.config
        if self.iteration >= config["max_iters"]:
            self.log.print(f"{self.out / 'last.pt'} is already at iteration {self.iteration} of {config['max_iters']}")
            return
        data = config["dataset"] if config["datasets"] is None else f"{len(config['datasets'])} sources"
        self.log.print(
            f"training {'stacked' if config['stacked'] else 'flat'} {config['backbone']}/{config['head']} "
            f"on {data} ({len(self.train_set)} images, hierarchy {self.hierarchy.name}) "
            f"for {config['max_iters']} iterations of {config['batch_size']}x{self.world} images; "
            f"{self.device}, {torch.get_num_threads()} threads, {self.amp or 'float32'}"
            f"{', channels_last' if config['channels_last'] else ''}{', compiled' if config['compile'] else ''}; "
            f"run directory {self.out}")
        if config["map"] is not None:
            self.log.print(f"reading {config['root']} through {self.train_set.label_map.describe()}")
        for label_map in source_maps(config["datasets"]):
            self.log.print(f"reading {label_map.describe()}")
        self.log.start_progress(self.iteration)
        window = LossWindow(len(self.level_names))
        while self.iteration < config["max_iters"]:
            epoch, done = divmod(self.iteration, self.iters_per_epoch)
            self.sampler.set_epoch(epoch)
            self.sampler.skip = done * config["batch_size"]
            for batch in self.train_loader:
                window.add(self.train_step(batch))
                self.log.step()
                finished = self.iteration >= config["max_iters"]
                if self.iteration % config["log_interval"] == 0 or finished:
                    losses, steps, seconds = window.flush()
                    self.log.training(self.iteration, dict(zip(self.level_names, losses)),
                                      self.optimizer.param_groups[0]["lr"],
                                      steps * config["batch_size"] * self.world / seconds)
                if self.iteration % config["eval_interval"] == 0 or finished:
                    self.evaluate_and_checkpoint()
                    window.restart_clock()
                if finished:
                    break

    def evaluate_and_checkpoint(self) -> None:
        """Score the validation split, write ``last.pt`` (and ``best.pt`` on a new best finest-level
        mIoU), the curves and the sample grid."""
        if self.world > 1:  # each process updated its norm statistics on its own last batch: use rank 0's,
            for buffer in self.model.buffers():  # as DDP's next forward would and the checkpoint holds
                torch.distributed.broadcast(buffer, src=0)
        # the plain model: a compiled one would recompile for evaluation (eval mode, other batch sizes)
        self.result = result = evaluate_model(self.model, self.val_loader, self.label_tree, self.device,
                                              self.config["decode"], self.inference)
        fine_miou = result["levels"][-1]["miou"]
        improved = not math.isnan(fine_miou) and fine_miou > self.best_miou
        if improved:
            self.best_miou = fine_miou
        rng = distributed.all_gather_objects(capture_rng())
        if not self.main:
            return
        self.log.evaluation(self.iteration, result, improved)
        checkpoint = {
            "format": FORMAT, "hierarchy_yaml": self.hierarchy.to_yaml(), "model_config": model_config(self.config),
            "config": self.config, "iteration": self.iteration, "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(), "rng": rng, "best_miou": self.best_miou, "metrics": result,
            "amp": self.amp,
        }
        save_torch(checkpoint, self.out / "last.pt")
        self.saved_iteration = self.iteration
        if improved:
            save_torch(checkpoint, self.out / "best.pt")
        plot_curves(self.log.history, self.hierarchy.level_names, self.out)
        save_sample_grid(self.model, self.val_set, self.label_tree, self.device, self.config["decode"],
                         self.out / "samples.png", inference=self.inference)

    @property
    def history(self) -> list[dict[str, Any]]:
        return self.log.history

    def close(self) -> None:
        self.log.close()


class LossWindow:
    """Per-level losses summed over the steps since the last log line, and the time those steps took."""

    def __init__(self, levels: int):
        self.total = torch.zeros(levels)
        self.steps = 0
        self.start = time.perf_counter()

    def add(self, losses: torch.Tensor) -> None:
        self.total += losses.cpu()
        self.steps += 1

    def flush(self) -> tuple[list[float], int, float]:
        """(mean losses, steps, seconds) of the window; then start a new one."""
        result = ((self.total / self.steps).tolist(), self.steps, time.perf_counter() - self.start)
        self.total.zero_()
        self.steps = 0
        self.start = time.perf_counter()
        return result

    def restart_clock(self) -> None:
        """Leave time spent outside training (evaluation) out of the speed."""
        self.start = time.perf_counter()


def train(config: dict[str, Any]) -> Trainer:
    """Run the training a resolved config describes; the finished trainer (``model``, ``result``) on every process."""
    trainer = Trainer(config)
    try:
        trainer.run()
    finally:
        trainer.close()
    return trainer


# ---------------------------------------------------------------------- command
def parser_options() -> dict[str, Any]:
    """Usage, description and the list of config keys: shared by ``hierparse train`` and ``python -m hierparse.train``."""
    keys = "\n".join(f"  {key} (default {json.dumps(value)})" for key, value in configuration.DEFAULTS.items())
    return dict(
        usage="%(prog)s [-h] [--config FILE] [KEY VALUE | --key value | --flag ...]",
        description="Train, evaluate, write a run directory.\nSettings: defaults < --config FILE < KEY VALUE "
                    "or --key value pairs on the command line,\ne.g. max_iters 200 --lr 0.01 --resume --out=runs/x",
        epilog=f"config keys:\n{keys}", formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="YAML file of config keys (see configs/)")
    parser.set_defaults(func=run_train, overrides=[])  # arguments the parser does not know become overrides


def add_train(subparsers) -> None:
    configure_parser(subparsers.add_parser(
        "train", help="train a stacked parser (no arguments: synthetic LIP-like data on the CPU, a few minutes)",
        **parser_options()))


def resolve_config(config_file: str | None, overrides: list[str]) -> dict[str, Any]:
    """The run's config; resuming without --config starts from the run directory's saved config.yaml."""
    config = configuration.resolve(config_file, overrides)
    saved = Path(config["out"]) / "config.yaml"
    if config["resume"] and config_file is None and saved.is_file():
        config = configuration.resolve(None, overrides, base={**configuration.DEFAULTS,
                                                              **configuration.load_yaml(saved)})
    return config


def run_train(args: argparse.Namespace) -> int:
    config = resolve_config(args.config, args.overrides)
    start = time.perf_counter()
    try:
        trainer = train(config)
        if trainer.result is not None and trainer.main:
            print(f"\nfinal evaluation ({len(trainer.val_set)} {config['val_split']} images, "
                  f"decode {config['decode']}):\n")
            print(format_metrics(trainer.result))
            print(f"\nrun directory {config['out']}; total time {format_duration(time.perf_counter() - start)}")
    finally:
        distributed.cleanup()
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m hierparse.train ...``, the same as ``hierparse train ...``."""
    parser = argparse.ArgumentParser(prog="python -m hierparse.train", **parser_options())
    configure_parser(parser)
    args, args.overrides = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    return run_command(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
