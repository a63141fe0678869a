"""Training throughput of the default run's step (stacked light + PSP, batch 16, 128x128, the
default config) in each CPU mode: float32, channels_last, bf16 autocast, both, and torch.compile.

Each mode is a real :class:`hierparse.train.Trainer` (model, fused loss, AdamW, schedule) stepping on
the same pre-made batch, so data loading is left out. The modes take turns within every round
(order rotated each round), so the machine's load hits them alike; images/s come from the median
step. Results: benchmarks/RESULTS.md ("Training throughput").
"""

from __future__ import annotations

import statistics
import time

import torch

from hierparse import config as configuration
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
