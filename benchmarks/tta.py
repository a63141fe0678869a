"""Test-time augmentation on a checkpoint: person/region/part mIoU on its validation images without
TTA, flip only, and flip + scales 0.75/1/1.25, with the time per image of each (one process, the
settings in turn). Prints a markdown table (for benchmarks/RESULTS.md) and, with --json, the scores.

    python benchmarks/tta.py runs/default/last.pt
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch

from hierparse.engine.checkpoint import model_from_checkpoint
from hierparse.evaluate import build_eval_dataset, eval_loader, evaluate_model
from hierparse.inference import Inference

SETTINGS = {"no TTA": {}, "flip": {"flip": True}, "flip + scales 0.75, 1, 1.25": {"flip": True,
                                                                                 "scales": (0.75, 1.0, 1.25)}}


def cpu_name() -> str:
    """The CPU's model name as /proc/cpuinfo gives it (the machine, not only its architecture)."""
    try:
        with open("/proc/cpuinfo") as info:
            return next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="also write the scores here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, hierarchy, checkpoint = model_from_checkpoint(args.checkpoint)
    config = checkpoint["config"]
    dataset = build_eval_dataset(config, hierarchy, config["val_split"])
    rows = {}
    for name, views in SETTINGS.items():
        inference = Inference.from_config({**config, "tta": views or None})
        start = time.perf_counter()
        result = evaluate_model(model, eval_loader(dataset, config, torch.device("cpu")), hierarchy,
                                torch.device("cpu"), config["decode"], inference)
        seconds = time.perf_counter() - start
        rows[name] = {"miou": {level["name"]: level["miou"] for level in result["levels"]},
                      "ms_per_image": 1000 * seconds / len(dataset), "views": len(inference.views)}
    print(f"{args.checkpoint} (iteration {checkpoint['iteration']}), {len(dataset)} validation images, "
          f"{args.threads} threads, {cpu_name()}, load {os.getloadavg()[0]:.2f}\n")
    print("| setting | views | " + " | ".join(f"{name} mIoU" for name in hierarchy.level_names) + " | ms / image |")
    print("| --- | ---: |" + " ---: |" * (hierarchy.num_levels + 1))
    for name, row in rows.items():
        print(f"| {name} | {row['views']} | " + " | ".join(f"{100 * row['miou'][level]:.2f}"
                                                           for level in hierarchy.level_names)
              + f" | {row['ms_per_image']:.1f} |")
    if args.json:
        with open(args.json, "w") as file:
            json.dump(rows, file, indent=1)


if __name__ == "__main__":
    main()
