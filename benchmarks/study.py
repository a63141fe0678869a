"""Does coarse-to-fine stacking help, and why? Trains and scores nine variants over several seeds.

On the synthetic LIP-like people with the ``lip`` hierarchy (person -> 5 regions -> 20 parts), with
the default run's backbone, head, data and schedule (``hierparse.config.DEFAULTS``), only the part
that is studied changes:

1. ``flat``: one module for the 20 parts (the base network as published);
2. ``flat_skip``: the same one module plus the ``layer1`` skip refinement the stacked model's finest
   module has, without the stack (a plain decoder): separates skips from stacking;
3. ``stacked_no_skips``: three modules, stack connections only;
4. ``stacked``: the default model (skips from ``layer2`` and ``layer1``) with equal level weights;
5. ``stacked_fine_weighted``: the default model, level weights ``[0.25, 0.5, 1]`` (``level_weights:
   fine``, the default since this study);
6. ``softmax_ohem``: 5 with hard-pixel mining (``ohem``; ``min_kept`` 3000 of the 16384 pixels of a
   crop, the fraction of mmsegmentation's Cityscapes setting, 100000 of 512x1024), the default since
   this study;
7. ``tree_min``: 5 with HSSN's tree-min loss (``loss: tree_min``) instead of softmax;
8. ``flat_skip_ohem``: 2 with the same hard-pixel mining as 6: how much of OHEM's gain needs the stack;
9. ``stacked_ohem_fine_loss_only``: 6 with the coarse losses off (level weights ``[0, 0, 1]``): the
   stack's modules trained only through the fine loss, to tell its architecture from its coarse
   supervision.

Each run is ``hierparse.train.train`` with a config from :func:`hierparse.config.resolve`, evaluated
once at the end. Stacked models are also scored with the path decoding of their loss (consistent
for softmax, tree for tree_min; same weights). Seeds go
in the outer loop and variants in the inner one, so drifting load from other jobs hits all variants
alike. The study resumes run by run: every finished (variant, seed) leaves a record in
``<out>/study_runs/`` and is skipped when the command runs again; after each run the tables are
rewritten from the records so far and say how many runs they hold. Writes ``study.md`` (tables),
``study.png`` (fine mIoU per variant and seed) and ``study.json`` (every number) to ``--out``; run
directories (checkpoints, logs) to ``--runs``.

    python benchmarks/study.py            # the full study: 9 variants x 3 seeds (about 3 h on 2 cores)
    python benchmarks/study.py --quick    # tiny settings, seconds, into a temporary folder (CI)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from matplotlib.figure import Figure

from hierparse import config as configuration
from hierparse.engine.io import atomic_write, to_json, write_text, writable_dir
from hierparse.evaluate import eval_loader, evaluate_model
from hierparse.losses import DECODES_OF_LOSS
from hierparse.train import Trainer, train

REPOSITORY = Path(__file__).resolve().parent.parent
# Emphasis on the fine level: each coarser level's weight halves, so the 20-part loss carries 4/7 of
# the total weight (1/3 unweighted) while both coarse levels still supervise the shared encoder.
FINE_WEIGHTS = [0.25, 0.5, 1.0]


@dataclass(frozen=True)
class Variant:
    """One model of the study: a short key, a table label and the config keys it changes."""

    key: str
    label: str
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def decodes(self) -> tuple[str, ...]:
        """How the variant is scored: independent, and for stacked models also its loss's path decoding."""
        if not self.overrides.get("stacked", True):
            return ("independent",)
        return DECODES_OF_LOSS[self.overrides.get("loss", "softmax")]


# Every variant names its level weights (the default is "fine", i.e. FINE_WEIGHTS here): the runs
# recorded before that default existed keep their identity, and flat models score only the finest
# level, whose weight is 1 either way.
VARIANTS = (
    Variant("flat", "flat (parts only)", {"stacked": False, "level_weights": None}),
    Variant("flat_skip", "flat + layer1 skip (no stack)", {"stacked": False, "skips": ["layer1"], "level_weights": None}),
    Variant("stacked_no_skips", "stacked, no skips, equal level weights", {"skips": [], "level_weights": None}),
    Variant("stacked", "stacked + skips, equal level weights", {"skips": None, "level_weights": None}),
    Variant("stacked_fine_weighted", f"stacked + skips, level weights {FINE_WEIGHTS}",
            {"skips": None, "level_weights": FINE_WEIGHTS}),
    Variant("softmax_ohem", "the same + OHEM (threshold 0.7, min_kept 3000; the default)",
            {"skips": None, "level_weights": FINE_WEIGHTS, "ohem": {"threshold": 0.7, "min_kept": 3000}}),
    Variant("tree_min", "the same, tree-min loss instead of softmax", {"skips": None, "level_weights": FINE_WEIGHTS,
                                                           "loss": "tree_min"}),
    Variant("flat_skip_ohem", "flat + layer1 skip + OHEM (threshold 0.7, min_kept 3000)",
            {"stacked": False, "skips": ["layer1"], "level_weights": None, "ohem": {"threshold": 0.7, "min_kept": 3000}}),
    # The stack's architecture without its coarse supervision: do the coarse losses cost the fine level?
    Variant("stacked_ohem_fine_loss_only", "stacked + skips + OHEM, coarse losses off (level weights [0, 0, 1])",
            {"skips": None, "level_weights": [0.0, 0.0, 1.0], "ohem": {"threshold": 0.7, "min_kept": 3000}}),
)

# Shared by every run, on top of hierparse.config.DEFAULTS (the default run: its model, data and
# schedule). Only the final evaluation runs (eval_interval = max_iters), on 500 images; log windows
# of 10 iterations time the training steps. OHEM is off unless a variant turns it on (it became the
# default after this study).
FULL_SETTINGS: dict[str, Any] = {
    "hierarchy": "lip", "dataset": "synthetic", "eval_interval": configuration.DEFAULTS["max_iters"],
    "synthetic_val_images": 500, "log_interval": 10, "decode": "independent", "ohem": None,
}
QUICK_SETTINGS: dict[str, Any] = {
    "hierarchy": "lip", "dataset": "synthetic", "max_iters": 4, "eval_interval": 4,
    "synthetic_train_images": 64, "synthetic_val_images": 8, "crop_size": 32, "eval_size": 32,
    "batch_size": 4, "warmup_iters": 1, "log_interval": 1, "workers": 0, "threads": 1,
    "decode": "independent", "ohem": None,
}


def override_tokens(settings: dict[str, Any]) -> list[str]:
    """``KEY VALUE`` tokens for :func:`hierparse.config.resolve` (and ``hierparse train``): strings as
    written, everything else as JSON (a YAML subset: ``false``, ``null``, ``[0.25, 0.5, 1.0]``)."""
    tokens = []
    for key, value in settings.items():
        tokens += [key, value if isinstance(value, str) else json.dumps(value)]
    return tokens


def seconds_per_iteration(trainer: Trainer) -> float:
    """Median over the logged training windows of wall seconds per iteration (data wait included,
    evaluation excluded): the same measurement for every variant."""
    speeds = [record["images_per_s"] for record in trainer.history if record["type"] == "train"]
    return statistics.median(trainer.config["batch_size"] / speed for speed in speeds)


def scores(result: dict[str, Any]) -> dict[str, Any]:
    """The study's numbers from ``ParsingMetrics.compute()``: mIoU of each module and merged from the finest."""
    return {
        "fine_miou": result["levels"][-1]["miou"],
        "fine_iou": dict(zip(result["levels"][-1]["classes"], result["levels"][-1]["iou"])),
        "module_miou": {entry["name"]: entry["miou"] for entry in result["levels"]},
        "merged_miou": {entry["name"]: entry["miou"] for entry in result["merged"]},
        "consistency": result["consistency"],
    }


def run_tokens(variant: Variant, seed: int, settings: dict[str, Any], runs_dir: Path) -> list[str]:
    """The ``KEY VALUE`` overrides of one run: the shared settings, the variant's, the seed and the folder."""
    return override_tokens({**settings, **variant.overrides, "seed": seed,
                            "out": str(runs_dir / variant.key / f"seed{seed}")})


def run_one(variant: Variant, seed: int, settings: dict[str, Any], runs_dir: Path) -> dict[str, Any]:
    """Train ``variant`` with ``seed``, score it (and, when stacked, again with its path decoding)."""
    tokens = run_tokens(variant, seed, settings, runs_dir)
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    trainer = train(configuration.resolve(None, tokens))
    record = {
        "variant": variant.key, "seed": seed, "command": shlex.join(["hierparse", "train", *tokens]),
        "config": trainer.config,
        "parameters": sum(parameter.numel() for parameter in trainer.model.parameters()),
        "seconds_per_iteration": seconds_per_iteration(trainer),
        "decode": {"independent": scores(trainer.result)},
    }
    for mode in variant.decodes[1:]:
        loader = eval_loader(trainer.val_set, trainer.config, trainer.device)
        record["decode"][mode] = scores(evaluate_model(trainer.model, loader, trainer.hierarchy, trainer.device, mode))
    record.update(wall_seconds=time.perf_counter() - start, load_before=load_before, load_after=os.getloadavg()[0])
    return record


def spread(values: Sequence[float]) -> dict[str, float]:
    """Mean and sample standard deviation; the std is NaN for a single value, both are NaN if a value is."""
    if any(value is None or math.isnan(value) for value in values):  # JSON keeps NaN as null
        return {"mean": math.nan, "std": math.nan}
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else math.nan}


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per variant and decoding: mean and std over seeds of every score, parameters and step time.

    ``fine_miou_minus_flat``: the fine mIoU minus the flat model's of the same seed (same data order
    and same initial backbone weights), mean and std over seeds.
    """
    flat = {run["seed"]: run["decode"]["independent"]["fine_miou"] for run in runs if run["variant"] == VARIANTS[0].key}
    summary = {}
    for variant in VARIANTS:
        mine = [run for run in runs if run["variant"] == variant.key]
        if not mine:  # a partial study: this variant has not run yet
            continue
        decodes = {}
        for mode in mine[0]["decode"]:
            results = [run["decode"][mode] for run in mine]
            decodes[mode] = {
                "fine_miou": {**spread([r["fine_miou"] for r in results]), "seeds": [r["fine_miou"] for r in results]},
                **{group: {name: spread([r[group][name] for r in results]) for name in results[0][group]}
                   for group in ("module_miou", "merged_miou")},
                "consistency": spread([r["consistency"] for r in results]),
            }
        summary[variant.key] = {
            "label": variant.label, "overrides": variant.overrides, "seeds": [run["seed"] for run in mine],
            "parameters": mine[0]["parameters"],
            "seconds_per_iteration": spread([run["seconds_per_iteration"] for run in mine]),
            "fine_miou_minus_flat": spread([run["decode"]["independent"]["fine_miou"] - flat[run["seed"]]
                                            for run in mine if run["seed"] in flat]),
            "decode": decodes,
            "fine_iou": {name: spread([run["decode"]["independent"]["fine_iou"][name] for run in mine])
                         for name in mine[0]["decode"]["independent"]["fine_iou"]},
        }
    return summary


def percent(entry: dict[str, float] | None, digits: int = 2) -> str:
    """``mean ± std`` in percent; ``-`` where there is no number (flat model's modules, consistency)."""
    if entry is None or math.isnan(entry["mean"]):
        return "-"
    std = "" if math.isnan(entry["std"]) else f" ± {100 * entry['std']:.{digits}f}"
    return f"{100 * entry['mean']:.{digits}f}{std}"


def machine() -> dict[str, Any]:
    """What ran the study: CPU model, cores, torch, Python and the repository's commit."""
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]
        model = names[0] if names else model
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPOSITORY, capture_output=True, text=True)
    return {"cpu": model, "cores": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
            "commit": commit.stdout.strip() or "unknown"}


def markdown(report: dict[str, Any]) -> str:
    """The results tables with the command, machine, settings and load above them."""
    summary, runs = report["summary"], report["runs"]
    levels = list(next(iter(summary.values()))["decode"]["independent"]["merged_miou"])
    fine, coarse = levels[-1], levels[:-1]
    loads = [load for run in runs for load in (run["load_before"], run["load_after"])]
    settings = ", ".join(f"{key} {json.dumps(value)}" for key, value in report["settings"].items())
    machines = sorted({f"{m['cpu']}, {m['cores']} cores, torch {m['torch']}, Python {m['python']}"
                       for m in (run["machine"] for run in runs)})
    commits = sorted({run["machine"]["commit"] for run in runs})
    status = ("complete" if report["complete"] else
              f"PARTIAL: {len(runs)} of {report['planned_runs']} runs so far (the command resumes the rest)")
    lines = [
        f"Command: `{report['command']}` ({sum(run['wall_seconds'] for run in runs) / 60:.1f} min of runs; "
        f"{status}).",
        f"Machine: {'; '.join(machines)}; commit {', '.join(commits)}; "
        f"1-minute load average {min(loads):.1f}-{max(loads):.1f} at the starts and ends of the runs.",
        f"Settings (on top of `hierparse.config.DEFAULTS`): {settings}; seeds {report['seeds']}.",
        "",
        f"mIoU in percent, mean ± sample std over seeds; module: the level's own output, merged: the "
        f"{fine} prediction merged up the tree; step: median wall seconds per training iteration "
        f"(data wait included), mean over seeds.",
        "",
        "| variant | parameters | step (s) | " + f"{fine} mIoU | per seed | minus flat, same seed | "
        + " | ".join(f"{name} module | {name} merged" for name in coarse) + " | consistency |",
        "| --- | ---: | ---: | ---: | --- | ---: | " + " | ".join("---: | ---:" for _ in coarse) + " | ---: |",
    ]
    for key, entry in summary.items():
        scores_ = entry["decode"]["independent"]
        minus_flat = "reference" if key == VARIANTS[0].key else percent(entry["fine_miou_minus_flat"])
        per_seed = ", ".join(f"{100 * value:.1f}" for value in scores_["fine_miou"]["seeds"])
        coarse_cells = " | ".join(
            f"{percent(scores_['module_miou'].get(name))} | {percent(scores_['merged_miou'][name])}" for name in coarse)
        lines.append(f"| {entry['label']} | {entry['parameters']:,} | {entry['seconds_per_iteration']['mean']:.3f} | "
                     f"{percent(scores_['fine_miou'])} | {per_seed} | {minus_flat} | "
                     f"{coarse_cells} | {percent(scores_['consistency'])} |")
    lines += [
        "",
        "Decoding the same stacked checkpoints two ways: independent (argmax per level) and the best "
        "root-to-leaf path (coarse maps are the ancestors of the fine one): consistent for softmax models "
        "(summed log-softmax), tree for the tree-min model (summed sigmoid scores).",
        "",
        f"| variant | decode | {fine} mIoU | " + " | ".join(f"{name} mIoU" for name in coarse) + " | consistency |",
        "| --- | --- | ---: | " + " | ".join("---:" for _ in coarse) + " | ---: |",
    ]
    for entry in summary.values():
        if len(entry["decode"]) < 2:
            continue
        for mode, scores_ in entry["decode"].items():
            coarse_cells = " | ".join(percent(scores_["module_miou"][name]) for name in coarse)
            lines.append(f"| {entry['label']} | {mode} | {percent(scores_['fine_miou'])} | {coarse_cells} | "
                         f"{percent(scores_['consistency'])} |")
    classes = list(next(iter(summary.values()))["fine_iou"])
    lines += [
        "",
        f"Per-class {fine} IoU in percent (independent decoding), mean over seeds:",
        "",
        f"| {fine} class | " + " | ".join(entry["label"] for entry in summary.values()) + " |",
        "| --- | " + " | ".join("---:" for _ in summary) + " |",
    ]
    for name in classes:
        cells = " | ".join(percent({"mean": entry["fine_iou"][name]["mean"], "std": math.nan}, digits=1)
                           for entry in summary.values())
        lines.append(f"| {name} | {cells} |")
    return "\n".join(lines) + "\n"


def plot(summary: dict[str, Any], path: Path) -> None:
    """Fine mIoU per variant: one dot per seed, the mean as a horizontal mark with the sample std as error
    bars (the axis spans the data, not zero, so marks rather than bars)."""
    figure = Figure(figsize=(7, 4))
    axis = figure.add_subplot()
    for position, entry in enumerate(summary.values()):
        fine = entry["decode"]["independent"]["fine_miou"]
        seeds = [100 * value for value in fine["seeds"]]
        std = 0.0 if math.isnan(fine["std"]) else 100 * fine["std"]
        axis.errorbar(position, 100 * fine["mean"], yerr=std, fmt="_", markersize=30, capsize=8,
                      color=f"C{position}", label="mean ± std" if position == 0 else None)
        offsets = [0.2 + 0.06 * index for index in range(len(seeds))]  # right of the error bar
        axis.plot([position + offset for offset in offsets], seeds, "o", color=f"C{position}", alpha=0.7,
                  label="one seed" if position == 0 else None)
    axis.set_xlim(-0.5, len(summary) - 0.5)
    axis.set_xticks(range(len(summary)), [entry["label"].replace(", ", ",\n", 1) for entry in summary.values()],
                    fontsize=8)
    axis.set(ylabel="fine-level (part) mIoU, %", title="Fine mIoU per variant")
    axis.grid(axis="y", alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    atomic_write(path, lambda temporary: figure.savefig(temporary, format="png", dpi=100))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="tiny settings for CI (32 px, 4 iterations, 1 seed), into a temporary folder by default")
    parser.add_argument("--seeds", type=int, help="seeds per variant, 0..N-1 (default 3; 1 with --quick)")
    parser.add_argument("--out", type=Path, help="folder for study.md/png/json (default benchmarks/; "
                                                 "a new temporary folder with --quick)")
    parser.add_argument("--runs", type=Path, help="folder for the run directories (default runs/study, "
                                                  "or <out>/runs with --quick)")
    args = parser.parse_args(argv)
    if args.seeds is None:
        args.seeds = 1 if args.quick else 3
    if args.seeds < 1:
        parser.error(f"--seeds must be at least 1, got {args.seeds}")
    if args.out is None:
        args.out = Path(tempfile.mkdtemp(prefix="hierparse-study-")) if args.quick else REPOSITORY / "benchmarks"
    if args.runs is None:
        args.runs = args.out / "runs" if args.quick else REPOSITORY / "runs" / "study"
    return args


def record_path(records: Path, variant: Variant, seed: int) -> Path:
    return records / f"{variant.key}_seed{seed}.json"


def load_record(path: Path) -> dict[str, Any] | None:
    """A finished run's record, or None if it has not run (NaN, e.g. a flat model's consistency, is null)."""
    return json.loads(path.read_text()) if path.is_file() else None


# Keys added to the config with one default that later changed: what runs recorded before the key
# existed used (OHEM was off).
FORMER_DEFAULTS: dict[str, Any] = {"ohem": None}


def same_run(recorded: dict[str, Any], wanted: dict[str, Any]) -> bool:
    """Whether a recorded run used the config asked for now. The run directory may have moved
    (another clone), so ``out`` does not count; a key added to the config after the run counts
    with the value runs had before it existed (its default, or FORMER_DEFAULTS where that changed)."""
    return {**configuration.DEFAULTS, **FORMER_DEFAULTS, **recorded, "out": None} == {**wanted, "out": None}


def report_of(runs: list[dict[str, Any]], args: argparse.Namespace, settings: dict[str, Any],
              command: str) -> dict[str, Any]:
    planned = args.seeds * len(VARIANTS)
    return {"command": command, "settings": settings, "seeds": list(range(args.seeds)), "planned_runs": planned,
            "complete": len(runs) == planned, "summary": summarise(runs), "runs": runs}


def write_report(report: dict[str, Any], out: Path) -> None:
    write_text(out / "study.json", to_json(report, indent=1) + "\n")
    write_text(out / "study.md", markdown(report))
    plot(report["summary"], out / "study.png")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    out, runs_dir = writable_dir(args.out), writable_dir(args.runs)
    records = writable_dir(out / "study_runs")
    settings = QUICK_SETTINGS if args.quick else FULL_SETTINGS
    command = shlex.join(["python", "benchmarks/study.py", *(str(t) for t in (sys.argv[1:] if argv is None else argv))])
    info = machine()  # the commit this process imported, before any training
    runs = []
    for seed in range(args.seeds):
        for variant in VARIANTS:
            path = record_path(records, variant, seed)
            record = load_record(path)
            config = configuration.resolve(None, run_tokens(variant, seed, settings, runs_dir))
            if record is not None and same_run(record["config"], config):
                print(f"=== {variant.label}, seed {seed}: done before ({path.name}), skipped", flush=True)
            else:
                print(f"=== {variant.label}, seed {seed}", flush=True)
                record = {**run_one(variant, seed, settings, runs_dir), "machine": info}
                write_text(path, to_json(record, indent=1) + "\n")
                print(f"=== {variant.label}, seed {seed}: fine mIoU "
                      f"{100 * record['decode']['independent']['fine_miou']:.2f}, "
                      f"{record['wall_seconds']:.0f} s", flush=True)
            runs.append(record)
            write_report(report_of(runs, args, settings, command), out)
    report = report_of(runs, args, settings, command)
    print(markdown(report))
    print(f"wrote {out / 'study.md'}, {out / 'study.png'}, {out / 'study.json'}; records in {records}; "
          f"run directories in {runs_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
