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
from hierparse.data.mixture import build_mixture, label_hierarchy, source_maps
from hierparse.engine import distributed
from hierparse.engine.checkpoint import (FORMAT, capture_rng, checkpoint_hierarchy, load_checkpoint, model_config,
                                        restore_rng)
from hierparse.engine.command import run_command
from hierparse.engine.io import save_torch, write_text, writable_dir
from hierparse.engine.run_log import RunLog
from hierparse.engine.sampling import EpochSampler, SeededSamples
from hierparse.engine.solver import Solver
from hierparse.engine.visualize import plot_curves
from hierparse.evaluate import (build_eval_dataset, eval_loader, evaluate_model, map_option, require_samples,
                                save_sample_grid)
from hierparse.hierarchy import load_hierarchy
from hierparse.inference import Inference
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


def placement(config: dict[str, Any]) -> tuple[torch.device, str | None, torch.memory_format]:
    """The device this process trains on (joining the process group under torchrun), its autocast
    mode and memory format; on the CPU, sets the number of threads."""
    device = distributed.setup(config["device"])
    if device.type == "cpu":
        torch.set_num_threads(cpu_threads(config))
    memory_format = torch.channels_last if config["channels_last"] else torch.contiguous_format
    return device, resolve_amp(config["amp"], device), memory_format


def precision_change(checkpoint: dict[str, Any], amp: str | None, requested: str | None) -> str:
    """The note printed when a run resumes in another precision (amp auto on a machine with(out)
    native bfloat16)."""
    return (f"note: iterations 1-{checkpoint['iteration']} ran in {checkpoint['amp'] or 'float32'}, the rest run "
            f"in {amp or 'float32'} (amp {requested or 'null'} on this device)")


def build_datasets(config: dict[str, Any], hierarchy, label_tree) -> tuple[torch.utils.data.Dataset, ...]:
    """The training set (augmented crops; one source or a mixture) and the validation set of a config."""
    augment = train_transform(label_tree, config["crop_size"], scale=tuple(config["train_scale"]))
    if config["datasets"] is not None:
        train_set = build_mixture(config["datasets"], hierarchy, augment, config["crop_size"], config["train_split"])
    else:
        options = {"n": config["synthetic_train_images"]} if config["dataset"] == "synthetic" else {}
        train_set = require_samples(
            build_dataset(config["dataset"], config["root"], config["train_split"], hierarchy=hierarchy,
                          transform=augment, size=config["crop_size"], **options, **map_option(config)),
            config, config["train_split"])
    return train_set, build_eval_dataset(config, hierarchy, config["val_split"])


def checkpoint_to_resume(config: dict[str, Any], hierarchy) -> dict[str, Any] | None:
    """``out/last.pt`` when the config resumes (checked against the hierarchy and the model), else None."""
    if not config["resume"]:
        return None
    path = Path(config["out"]) / "last.pt"
    if not path.exists():
        raise FileNotFoundError(f"cannot resume: {path} does not exist (train without resume first)")
    checkpoint = load_checkpoint(path)
    checkpoint_hierarchy(checkpoint, path, hierarchy)
    if checkpoint["model_config"] != model_config(config):
        raise ValueError(f"cannot resume: {path} holds a model {checkpoint['model_config']}, "
                         f"the config asks for {model_config(config)}")
    return checkpoint


def wrap_model(model: torch.nn.Module, config: dict[str, Any], device: torch.device) -> torch.nn.Module:
    """The module that trains: the model, under DDP with several processes, compiled on request."""
    if distributed.world_size() > 1:
        if device.type == "cuda":
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return torch.compile(model) if config["compile"] else model


def check_finite(losses: torch.Tensor, iteration: int, level_names: list[str], saved: str) -> None:
    """Raise :class:`TrainingDiverged` naming the first level whose loss is not finite."""
    if not torch.isfinite(losses).all():
        level = int((~torch.isfinite(losses)).nonzero()[0])
        raise TrainingDiverged(
            f"the loss of level {level} ({level_names[level]}) is {losses[level].item()} at iteration "
            f"{iteration}; training stopped, {saved} (try a lower lr)")


def batches_per_epoch(sampler: EpochSampler, images: int, batch_size: int) -> int:
    batches = sampler.num_samples // batch_size
    if batches == 0:
        raise ValueError(f"the training split has {images} images, fewer than one batch of {batch_size} per "
                         f"process ({distributed.world_size()} processes); lower batch_size")
    return batches


def training_loader(train_set, sampler: EpochSampler, config: dict[str, Any],
                    device: torch.device) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(
        SeededSamples(train_set, config["seed"]), batch_size=config["batch_size"], sampler=sampler,
        num_workers=config["workers"], pin_memory=device.type == "cuda", drop_last=True,
        persistent_workers=config["workers"] > 0,
        generator=torch.Generator(),  # keeps the global random stream untouched (exact resume)
    )


class Validation:
    """The periodic evaluation of a run: the validation split scored without test-time views, and its
    sample grid."""

    def __init__(self, config: dict[str, Any], label_tree, val_set, device: torch.device):
        self.label_tree, self.val_set, self.device, self.decode = label_tree, val_set, device, config["decode"]
        self.loader = eval_loader(val_set, config, device)
        self.inference = Inference.from_config(config, tta=False)

    def score(self, model: torch.nn.Module) -> dict[str, Any]:
        return evaluate_model(model, self.loader, self.label_tree, self.device, self.decode, self.inference)

    def sample_grid(self, model: torch.nn.Module, path: Path) -> None:
        save_sample_grid(model, self.val_set, self.label_tree, self.device, self.decode, path, inference=self.inference)


def run_banner(config: dict[str, Any], train_set, hierarchy, device: torch.device, amp: str | None) -> list[str]:
    """The first lines of a run: model, data, schedule, device, precision, run directory; label maps read through."""
    data = config["dataset"] if config["datasets"] is None else f"{len(config['datasets'])} sources"
    maps = ([f"{config['root']} through {train_set.label_map.describe()}"] if config["map"] is not None else
            [label_map.describe() for label_map in source_maps(config["datasets"])])
    return [f"training {'stacked' if config['stacked'] else 'flat'} {config['backbone']}/{config['head']} "
            f"on {data} ({len(train_set)} images, hierarchy {hierarchy.name}) for {config['max_iters']} iterations of "
            f"{config['batch_size']}x{distributed.world_size()} images; {device}, {torch.get_num_threads()} threads, "
            f"{amp or 'float32'}{', channels_last' if config['channels_last'] else ''}"
            f"{', compiled' if config['compile'] else ''}; run directory {config['out']}",
            *(f"reading {source}" for source in maps)]


class Trainer:
    """One training run from a config: ``run()`` trains to ``max_iters`` (``train_step``: one optimiser
    step), ``evaluate_and_checkpoint`` scores the validation split and writes ``last.pt``/``best.pt``,
    curves and samples. The model and what updates it: ``self.solver``; what is reported: ``self.log``."""

    def __init__(self, config: dict[str, Any]):
        self.config = config
        self.device, self.amp, self.memory_format = placement(config)
        self.rank, self.world = distributed.rank(), distributed.world_size()
        self.main = self.rank == 0
        self.out = Path(config["out"])
        self.log = RunLog(self.out, self.main, config["max_iters"])
        self.hierarchy = load_hierarchy(config["hierarchy"])
        # the training labels' tree: the hierarchy, with raw ids for the unions of the sources' label maps
        self.label_tree = label_hierarchy(config["datasets"], self.hierarchy, config["map"])
        self.train_set, self.val_set = build_datasets(config, self.hierarchy, self.label_tree)
        checkpoint = checkpoint_to_resume(config, self.hierarchy)

        seed_everything(config["seed"] + self.rank)
        self.solver = Solver(config, self.hierarchy, self.label_tree, self.train_set, self.device,
                             self.memory_format, self.amp)
        self.model, self.loss = self.solver.model, self.solver.loss
        self.level_names = self.model.level_names
        self.iteration, self.best_miou, self.result = 0, -math.inf, None
        if checkpoint is not None:
            self._restore(checkpoint)
        self.saved_iteration = self.iteration if checkpoint is not None else None
        self.network = wrap_model(self.model, config, self.device)
        self.sampler = EpochSampler(self.train_set, self.world, self.rank, config["seed"])
        self.iters_per_epoch = batches_per_epoch(self.sampler, len(self.train_set), config["batch_size"])
        # only once everything above is known to work: no half-made run directory
        run_directory_files(self.out, config, self.hierarchy, self.log)
        self.train_loader = training_loader(self.train_set, self.sampler, config, self.device)
        self.validation = Validation(config, self.label_tree, self.val_set, self.device)
        self.log.open_events(self.iteration, resumed=checkpoint is not None)
        if checkpoint is not None:  # last, so that nothing above shifts the restored random streams
            restore_rng(checkpoint["rng"][self.rank % len(checkpoint["rng"])])

    def _restore(self, checkpoint: dict[str, Any]) -> None:
        self.solver.restore(checkpoint)
        self.iteration, self.best_miou = checkpoint["iteration"], checkpoint["best_miou"]
        self.log.restore(self.iteration)
        if checkpoint["amp"] != self.amp:  # amp auto on a machine with(out) native bfloat16
            self.log.print(precision_change(checkpoint, self.amp, self.config["amp"]))

    # ------------------------------------------------------------------ loop
    def train_step(self, batch: dict[str, Any]) -> torch.Tensor:
        """One optimiser step; returns the per-level losses averaged over processes (detached)."""
        images = batch["image"].to(self.device, non_blocking=True, memory_format=self.memory_format)
        labels = batch["label"].to(self.device, non_blocking=True)
        labels = self.solver.targets(images, labels)
        with torch.autocast(self.device.type, dtype=AMP_DTYPES[self.amp], enabled=self.amp is not None):
            logits = self.network(images)
        losses = self.loss([scores.float() for scores in logits], labels)
        reported = distributed.mean_over_processes(losses)
        check_finite(reported, self.iteration + 1, self.level_names,
                     "no checkpoint was written" if self.saved_iteration is None else
                     f"{self.out / 'last.pt'} (iteration {self.saved_iteration}) is intact")
        self.solver.update(losses)
        self.iteration += 1
        self.solver.end_of_step(self.iteration)
        return reported

    def run(self) -> None:
        """Train to ``max_iters``, evaluating every ``eval_interval``; ``result`` holds the last evaluation."""
        config = self.config
        if self.iteration >= config["max_iters"]:
            self.log.print(f"{self.out / 'last.pt'} is already at iteration {self.iteration} of {config['max_iters']}")
            return
        for line in run_banner(config, self.train_set, self.hierarchy, self.device, self.amp):
            self.log.print(line)
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
                    self.log.training(self.iteration, dict(zip(self.level_names, losses)), self.solver.lr,
                                      steps * config["batch_size"] * self.world / seconds)
                if self.iteration % config["eval_interval"] == 0 or finished:
                    self.evaluate_and_checkpoint()
                    window.restart_clock()
                if finished:
                    break

    def evaluate_and_checkpoint(self) -> None:
        """Score the validation split, write ``last.pt`` (and ``best.pt`` on a new best finest-level
        mIoU), the curves and the sample grid."""
        # each process updated its norm statistics on its own last batch: use rank 0's, as DDP's next
        # forward would and the checkpoint holds
        distributed.broadcast_buffers(self.model)
        # the plain model: a compiled one would recompile for evaluation (eval mode, other batch sizes)
        self.result = result = self.validation.score(self.model)
        fine_miou = result["levels"][-1]["miou"]
        improved = not math.isnan(fine_miou) and fine_miou > self.best_miou
        if improved:
            self.best_miou = fine_miou
        rng = distributed.all_gather_objects(capture_rng())
        if not self.main:
            return
        self.log.evaluation(self.iteration, result, improved)
        checkpoint = {"format": FORMAT, "hierarchy_yaml": self.hierarchy.to_yaml(), "config": self.config,
                      "model_config": model_config(self.config), "iteration": self.iteration, **self.solver.state(),
                      "rng": rng, "best_miou": self.best_miou, "metrics": result, "amp": self.amp}
        save_torch(checkpoint, self.out / "last.pt")
        self.saved_iteration = self.iteration
        if improved:
            save_torch(checkpoint, self.out / "best.pt")
        plot_curves(self.log.history, self.hierarchy.level_names, self.out)
        self.validation.sample_grid(self.model, self.out / "samples.png")

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
