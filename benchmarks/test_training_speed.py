"""Training throughput of the default run's step (stacked light + PSP, batch 16, 128x128, the
default config) in each CPU mode: float32, channels_last, bf16 autocast, both, and torch.compile;
and what hard-pixel mining (OHEM, on by default) costs a step, fused into the op and as the Python
code it replaced.

Each mode is a real :class:`hierparse.train.Trainer` (model, fused loss, AdamW, schedule) stepping on
the same pre-made batch, so data loading is left out. The modes take turns within every round
(order rotated each round), so the machine's load hits them alike; images/s come from the median
step. Results: benchmarks/RESULTS.md ("Training throughput").
"""

from __future__ import annotations

import functools
import statistics
import time
from unittest import mock

import torch
from timing import interleaved_medians

from hierparse import config as configuration
from hierparse import losses, ops
from hierparse.train import Trainer, cpu_threads, native_bf16

MODES = {
    "float32": ["amp", "null", "channels_last", "false"],
    "channels_last": ["amp", "null", "channels_last", "true"],
    "bf16": ["amp", "bf16", "channels_last", "false"],
    "bf16 + channels_last": ["amp", "bf16", "channels_last", "true"],
    "compile": ["compile", "true", "amp", "null", "channels_last", "false"],
    "compile + bf16 + channels_last": ["compile", "true", "amp", "bf16", "channels_last", "true"],
}
ROUNDS = 12


def test_training_throughput_per_mode(benchmark, tmp_path):
    # the default run's threads: the cores left after its one data-loading worker
    threads = cpu_threads({**configuration.DEFAULTS, "workers": 1})
    trainers = {}
    for mode, options in MODES.items():
        config = configuration.resolve(None, ["workers", "0", "threads", str(threads), "synthetic_val_images", "16",
                                              "out", str(tmp_path / mode.replace(" ", "")), *options])
        trainers[mode] = Trainer(config)
    batch = next(iter(trainers["float32"].train_loader))
    for trainer in trainers.values():  # warm-up: compilation, oneDNN primitive caches, allocator
        for _ in range(3):
            trainer.train_step(batch)
    times: dict[str, list[float]] = {mode: [] for mode in trainers}
    order = list(trainers)

    def round_() -> None:
        for mode in order:
            start = time.perf_counter()
            trainers[mode].train_step(batch)
            times[mode].append(time.perf_counter() - start)
        order.append(order.pop(0))

    benchmark.pedantic(round_, rounds=ROUNDS, iterations=1, warmup_rounds=0)
    size = batch["image"].shape[0]
    speed = {mode: size / statistics.median(values) for mode, values in times.items()}
    benchmark.extra_info.update({"threads": threads, "native_bf16": native_bf16(torch.device("cpu")),
                                 **{f"{mode} img/s": round(value, 1) for mode, value in speed.items()},
                                 **{f"{mode} vs float32": round(value / speed["float32"], 3)
                                    for mode, value in speed.items()}})
    for trainer in trainers.values():
        trainer.close()
    print("\n" + "\n".join(f"{mode:32s} {speed[mode]:6.1f} img/s  {speed[mode] / speed['float32']:.2f}x"
                           for mode in speed))


class PythonOhemLoss(torch.nn.Module):
    """A trainer's loss with the OHEM of before the fused op: the op without gradient for the target
    probabilities, kthvalue per level, then the op again with per-pixel losses (its backward pass
    runs the op a third time), as ``hierparse.ops.reference.ohem_cross_entropy`` over the fused op."""

    def __init__(self, loss: torch.nn.Module):
        super().__init__()
        self.loss = loss
        self.python_ohem = functools.partial(ops.reference.ohem_cross_entropy, cross_entropy=ops.multilevel_cross_entropy)

    def forward(self, logits, labels):
        with mock.patch.object(losses.ops, "ohem_cross_entropy", self.python_ohem):
            return self.loss(logits, labels)


def test_ohem_step_cost(benchmark, tmp_path):
    """The default step with OHEM (fused in the op; and the former Python OHEM) against the same step
    without OHEM, the default config (amp auto, channels_last) and threads. Goal (issue 23): fused at most 1.15x."""
    threads = cpu_threads({**configuration.DEFAULTS, "workers": 1})
    variants = {"no OHEM": ["ohem", "null"], "OHEM fused": [], "OHEM Python": []}
    trainers = {name: Trainer(configuration.resolve(None, ["workers", "0", "threads", str(threads),
                                                           "synthetic_val_images", "16", "out",
                                                           str(tmp_path / name.replace(" ", "_")), *options]))
                for name, options in variants.items()}
    trainers["OHEM Python"].loss = PythonOhemLoss(trainers["OHEM Python"].loss)
    batch = next(iter(trainers["no OHEM"].train_loader))
    steps = {name: functools.partial(trainer.train_step, batch) for name, trainer in trainers.items()}
    medians = {}
    benchmark.pedantic(lambda: medians.update(interleaved_medians(steps, rounds=27, warmup=3)), rounds=1, iterations=1)
    base = medians["no OHEM"]
    benchmark.extra_info.update({"threads": threads, **{f"{name} s/step": round(value, 4) for name, value in medians.items()},
                                 **{f"{name} vs no OHEM": round(value / base, 3) for name, value in medians.items()}})
    for trainer in trainers.values():
        trainer.close()
    print("\n" + "\n".join(f"{name:12s} {value * 1e3:7.1f} ms/step  {value / base:.3f}x" for name, value in medians.items()))
