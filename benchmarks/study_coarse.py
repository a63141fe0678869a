"""Learning fine classes from coarse labels: how much do region-labelled images add to a few part-labelled ones?

A pool of ``POOL`` synthetic training images (hierarchy ``lip``: person -> 5 regions -> 20 parts);
a fraction ``f`` of it keeps its part labels, the rest is relabelled with the region of each part
(``coarsen: region``; one row with person masks only, ``coarsen: person``). Every run has the
default run's model, schedule and hard-pixel mining (``hierparse.config.DEFAULTS``: 1200 iterations
of 16 images), so runs differ only in what their labels say. Fine and coarse images are drawn half
and half (``datasets:`` weights 0.5 / 0.5). Variants (the issue's letters):

- ``flat_fine`` (a): flat + layer1 skip, the fine images only (what a user can do without a tree);
- ``stacked_fine`` (b): the stacked default, the fine images only;
- ``stacked_marginal`` (c) / ``flat_marginal`` (d): all images, a coarse label scored at the part
  level by the summed probability of its parts (the fused op's class sets);
- ``stacked_ignore`` (e): all images, coarse labels train only the person and region levels;
- ``stacked_teacher`` / ``flat_teacher`` (f): (c)/(d) with each coarse pixel relabelled by the
  fine-only model of the same fraction and seed ((b)/(a), which therefore run first), restricted to
  the parts its region allows, where that model gives the chosen part at least half of the
  region's probability (``teacher: {threshold: 0.5}``, :mod:`hierparse.engine.teacher`);
- ``stacked_balanced`` (f): (c) with each part of a set weighed by the inverse of its share of the
  set's pixels in the fine images (``coarse_labels: balanced``), against the marginal's pull
  towards each region's majority part;
- ``stacked_selfcorrect`` (f): self-correction as in SCHP: the student starts from its teacher's
  weights (``teacher: {warm_start: true}``), and at every evaluation the teacher becomes the running
  mean of its own and the student's weights (``refresh: 400``), so its relabelling improves with
  the student; ``stacked_warm``: the warm start alone; ``stacked_selfcorrect2``: a second such
  run, from the first.

At ``f = 100%`` only (a) and (b) run: there is nothing coarse (the ceiling of the pool). Each run
is evaluated on 500 validation images at iterations 400, 800 and 1200 (val mIoU against
iterations); tables use the last evaluation, and the best one as well. The study resumes unit by
unit: a finished (fraction, variant, seed) leaves a record in ``<out>/study_coarse_runs/``; tables
are rewritten after every run and say how many runs they hold.

    python benchmarks/study_coarse.py                       # everything planned (make study-coarse)
    python benchmarks/study_coarse.py --fractions 0.1 --seeds 1
    python benchmarks/study_coarse.py --report-only         # the tables from the records so far
    python benchmarks/study_coarse.py --quick               # tiny settings into a temporary folder (CI)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from matplotlib.figure import Figure

import study
from hierparse import config as configuration
from hierparse.engine.io import atomic_write, to_json, write_text, writable_dir
from hierparse.evaluate import eval_loader, evaluate_model
from hierparse.train import train

POOL = 2000
FRACTIONS = (0.10, 1.0, 0.25, 0.05)  # the order they run in: f = 10% (never dropped), the ceiling, the rest
FLAT = {"stacked": False, "skips": ["layer1"]}
TEACHER_THRESHOLD = 0.5


@dataclass(frozen=True)
class Variant:
    """One way of training on a pool: its key, label, config overrides and which images it uses."""

    key: str
    label: str
    overrides: dict[str, Any] = field(default_factory=dict)
    coarse: str | None = "region"   # the level coarse images are labelled at; None: fine images only
    teacher: str | None = None      # the variant whose checkpoint (same fraction and seed) relabels coarse pixels
    warm_start: bool = False        # the student starts from the teacher's weights
    refresh: bool = False           # self-correction: the teacher absorbs the student at every evaluation
    budget: int = 1                 # iterations, in multiples of the study's
    fractions: tuple[float, ...] | None = None  # the fractions it runs at (None: all)

    @property
    def stacked(self) -> bool:
        return self.overrides.get("stacked", True)


VARIANTS = (
    Variant("flat_fine", "(a) flat + skip, fine images only", FLAT, coarse=None),
    Variant("stacked_fine", "(b) stacked, fine images only", coarse=None),
    Variant("stacked_marginal", "(c) stacked, marginal likelihood"),
    Variant("flat_marginal", "(d) flat + skip, marginal likelihood", FLAT),
    Variant("stacked_ignore", "(e) stacked, coarse labels train coarse levels only", {"coarse_labels": "ignore"}),
    Variant("stacked_teacher", "(f) stacked, marginal + set-restricted teacher (b)", teacher="stacked_fine"),
    Variant("flat_teacher", "(f) flat + skip, marginal + set-restricted teacher (a)", FLAT, teacher="flat_fine"),
    Variant("stacked_balanced", "(f) stacked, prior-balanced marginal", {"coarse_labels": "balanced"}),
    Variant("stacked_teacher2", "(f) stacked, marginal + set-restricted teacher (f), a second round",
            teacher="stacked_teacher"),
    # labels, not compute, are the scarce resource: does the teacher gain more from a longer budget
    # than the fine-only model and the ceiling do?
    Variant("stacked_fine_long", "(b) stacked, fine images only, twice the iterations", coarse=None, budget=2,
            fractions=(0.10, 1.0)),
    Variant("stacked_teacher_long", "(f) stacked, teacher (b, twice the iterations), twice the iterations",
            teacher="stacked_fine_long", budget=2, fractions=(0.10,)),
    # self-correction (SCHP): the student starts from the teacher, which at every evaluation (400
    # iterations) becomes the running mean of itself and the student; the warm start alone tells the
    # two apart
    Variant("stacked_selfcorrect", "(f) stacked, self-correction: warm start from (b, twice the iterations), "
            "teacher refreshed every 400", teacher="stacked_fine_long", warm_start=True, refresh=True,
            fractions=(0.10,)),
    Variant("stacked_warm", "(f) stacked, teacher (b, twice the iterations) and warm start from it, no refresh",
            teacher="stacked_fine_long", warm_start=True, fractions=(0.10,)),
    Variant("stacked_selfcorrect2", "(f) stacked, self-correction, a second run (warm start from the first)",
            teacher="stacked_selfcorrect", warm_start=True, refresh=True, fractions=(0.10,)),
    Variant("stacked_marginal_person", "(c) stacked, marginal, coarse = person masks", coarse="person",
            fractions=(0.10,)),
    Variant("stacked_teacher_person", "(f) stacked, teacher (b), coarse = person masks", coarse="person",
            teacher="stacked_fine", fractions=(0.10,)),
    Variant("stacked_selfcorrect_person", "(f) stacked, self-correction from (b, twice the iterations), "
            "coarse = person masks", coarse="person", teacher="stacked_fine_long", warm_start=True, refresh=True,
            fractions=(0.10,)),
)

# Cells of the full study that run fewer seeds than the others (0: none), each with why: the issue
# lets cells that cannot change the headline go, within a budget of about 60 runs of the default
# length. (--quick runs every cell, to test them all.)
DROPPED: dict[tuple[float, str], tuple[int, str]] = {
    (0.10, "stacked_ignore"): (2, "4.5 points below (b) with a spread of 0.09 over two seeds: a third cannot "
                                  "change the headline"),
    (0.10, "stacked_balanced"): (1, "half of (c) on seed 0 (15.66): no longer a candidate"),
    (0.10, "stacked_warm"): (2, "an ablation of the self-correction: on both seeds the refresh adds 0.6-0.7 to the "
                                "warm start, so a third seed cannot change the headline"),
    (0.10, "stacked_teacher_person"): (0, "the person-mask row takes its method from the region row, where "
                                          "self-correction from the 2400-iteration (b) superseded this teacher"),
    **{(fraction, "stacked_ignore"): (0, "4.5 points below (b) at 10%, where it was measured; the question it "
                                         "answers (does the marginal term pay?) is settled there")
       for fraction in (0.05, 0.25)},
    **{(fraction, "stacked_balanced"): (0, "half of (c) at 10% (15.66 on seed 0): no longer a candidate")
       for fraction in (0.05, 0.25)},
    **{(fraction, "stacked_teacher2"): (0, "at 10% a second round adds 0.36 to the first, within one seed spread, "
                                           "and self-correction superseded it")
       for fraction in (0.05, 0.25)},
    (0.25, "flat_teacher"): (0, "the headline is read at 10% (the goal, and stack or flat); a teacher pays only once "
                                "its fine-only model is good, and at 25% the stacked one only ties fine-only (35.51 "
                                "vs 35.46), so coarse labels do not pay there at this length"),
    (1.0, "stacked_fine_long"): (2, "the ceiling of the goal: its two seeds lie 0.6 apart and the best variant is "
                                    "9.6 below them, so a third seed cannot change the verdict"),
}

# amp null: float32 on every machine, so that runs from sessions on CPUs with and without native
# bfloat16 (where amp auto would differ) compare.
SETTINGS: dict[str, Any] = {
    "hierarchy": "lip", "dataset": "synthetic", "eval_interval": 400, "synthetic_val_images": 500,
    "log_interval": 10, "decode": "independent", "amp": None,
}
QUICK_SETTINGS: dict[str, Any] = {**study.QUICK_SETTINGS, "ohem": configuration.DEFAULTS["ohem"], "eval_interval": 2}
QUICK_POOL = 40


def planned(fractions: Sequence[float], seeds: int, keys: Sequence[str] | None, first_seed: int = 0,
            dropped: dict[tuple[float, str], tuple[int, str]] | None = None) -> list[tuple[float, Variant, int]]:
    """The units to run, in order: seed by seed (``first_seed`` to ``seeds - 1``), every fraction's
    region-labelled variants (teachers before their students), then the person-mask row; so one
    seed's table fills first. ``dropped``: cells that stop at fewer seeds (:data:`DROPPED`)."""
    dropped = dropped or {}
    units = []
    for seed in range(first_seed, seeds):
        for person_row in (False, True):
            for fraction in fractions:
                for variant in VARIANTS:
                    if (variant.coarse == "person") != person_row or (keys is not None and variant.key not in keys):
                        continue
                    if fraction == 1.0 and variant.coarse is not None:
                        continue  # nothing is coarse: every such variant is stacked_fine or flat_fine
                    if variant.fractions is not None and fraction not in variant.fractions:
                        continue
                    if seed >= dropped.get((fraction, variant.key), (seeds, ""))[0]:
                        continue
                    units.append((fraction, variant, seed))
    return units


def run_dir(runs_dir: Path, fraction: float, variant: Variant, seed: int) -> Path:
    return runs_dir / f"f{round(100 * fraction):03d}" / variant.key / f"seed{seed}"


def sources(fraction: float, variant: Variant, pool: int) -> list[dict[str, Any]]:
    """The ``datasets:`` list of a unit: the fine images, and (unless fine only) the coarse rest."""
    fine = max(1, round(fraction * pool))
    if variant.coarse is None or fine == pool:
        return [{"dataset": "synthetic", "n": fine}]
    return [{"dataset": "synthetic", "n": fine, "weight": 0.5},
            {"dataset": "synthetic", "n": pool - fine, "first": fine, "coarsen": variant.coarse, "weight": 0.5}]


def unit_settings(fraction: float, variant: Variant, seed: int, settings: dict[str, Any], pool: int,
                  runs_dir: Path) -> dict[str, Any]:
    teacher = None
    if variant.teacher is not None:
        teacher_variant = next(v for v in VARIANTS if v.key == variant.teacher)
        teacher = {"checkpoint": str(run_dir(runs_dir, fraction, teacher_variant, seed) / "last.pt"),
                   "threshold": TEACHER_THRESHOLD}
        if variant.warm_start:
            teacher["warm_start"] = True
        if variant.refresh:
            teacher["refresh"] = settings["eval_interval"]
    iterations = variant.budget * settings.get("max_iters", configuration.DEFAULTS["max_iters"])
    return {**settings, **variant.overrides, "max_iters": iterations, "datasets": sources(fraction, variant, pool),
            "teacher": teacher, "seed": seed, "out": str(run_dir(runs_dir, fraction, variant, seed))}


def run_one(unit_config: dict[str, Any], variant: Variant) -> dict[str, Any]:
    tokens = study.override_tokens(unit_config)
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    trainer = train(configuration.resolve(None, tokens))
    curve = [{"iter": r["iter"], "fine_miou": r["miou"][trainer.level_names[-1]], "merged_miou": r["merged_miou"]}
             for r in trainer.history if r["type"] == "eval"]
    record = {
        "variant": variant.key, "command": shlex.join(["hierparse", "train", *tokens]), "config": trainer.config,
        "seconds_per_iteration": study.seconds_per_iteration(trainer), "curve": curve, "amp_used": trainer.amp,
        "decode": {"independent": study.scores(trainer.result)},
    }
    if variant.stacked:
        loader = eval_loader(trainer.val_set, trainer.config, trainer.device)
        record["decode"]["consistent"] = study.scores(evaluate_model(trainer.model, loader, trainer.hierarchy,
                                                                     trainer.device, "consistent"))
    record.update(wall_seconds=time.perf_counter() - start, load_before=load_before, load_after=os.getloadavg()[0])
    return record


def same_unit(record: dict[str, Any], wanted: dict[str, Any]) -> bool:
    """Whether a record is the run asked for; a run with amp auto counts as the precision it used
    when another precision is asked for."""
    config = record["config"]
    if config.get("amp") == "auto" and wanted.get("amp") != "auto" and "amp_used" in record:
        config = {**config, "amp": record["amp_used"]}
    return study.same_run(config, wanted)


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (fraction, variant): mean ± std over seeds of part, region and person mIoU (merged
    from the part prediction, so flat and stacked models compare), the best evaluation's part mIoU,
    per-class part IoU and seconds per step."""
    rows = []
    for fraction in sorted({run["fraction"] for run in runs}):
        for variant in VARIANTS:
            mine = [run for run in runs if run["fraction"] == fraction and run["variant"] == variant.key]
            if not mine:
                continue
            last = [run["decode"]["independent"] for run in mine]
            levels = list(last[0]["merged_miou"])
            rows.append({
                "fraction": fraction, "variant": variant.key, "label": variant.label, "seeds": [r["seed"] for r in mine],
                "part_per_seed": [r["fine_miou"] for r in last],
                "merged_miou": {name: study.spread([r["merged_miou"][name] for r in last]) for name in levels},
                "best_part": study.spread([max(point["fine_miou"] for point in run["curve"]) for run in mine]),
                "curve": {point["iter"]: study.spread([p["fine_miou"] for run in mine for p in run["curve"]
                                                       if p["iter"] == point["iter"]])
                          for point in mine[0]["curve"]},
                "fine_iou": {name: study.spread([r["fine_iou"][name] for r in last]) for name in last[0]["fine_iou"]},
                "seconds_per_iteration": study.spread([run["seconds_per_iteration"] for run in mine]),
            })
    return rows


def markdown(report: dict[str, Any]) -> str:
    rows, runs = report["summary"], report["runs"]
    if not rows:
        return "No run has finished yet.\n"
    levels = list(rows[0]["merged_miou"])
    loads = [load for run in runs for load in (run["load_before"], run["load_after"])]
    machines = sorted({f"{m['cpu']}, {m['cores']} cores, torch {m['torch']}" for m in (r["machine"] for r in runs)})
    status = ("complete" if report["complete"] else
              f"PARTIAL: {len(runs)} of {report['planned_runs']} runs so far (the command resumes the rest)")
    lines = [
        f"Command: `{report['command']}` ({sum(run['wall_seconds'] for run in runs) / 60:.1f} min of runs; {status}).",
        f"Machine: {'; '.join(machines)}; commits {', '.join(sorted({r['machine']['commit'] for r in runs}))}; "
        f"1-minute load average {min(loads):.1f}-{max(loads):.1f} at the starts and ends of the runs.",
        f"Pool {report['pool']} synthetic images; settings on top of the defaults: "
        f"{', '.join(f'{k} {json.dumps(v)}' for k, v in report['settings'].items())}.",
        "",
        "mIoU in percent, mean ± sample std over seeds, at the last evaluation (iteration "
        f"{report['max_iters']}, twice that where a variant says so); region and person merged up the tree "
        "from the part prediction; best: the best of the evaluations (every "
        f"{report['settings']['eval_interval']} iterations); step: median seconds per iteration.",
        "",
        f"| f | variant | {levels[-1]} mIoU | per seed | best {levels[-1]} | "
        + " | ".join(f"{name} mIoU" for name in reversed(levels[:-1])) + " | step (s) |",
        "| ---: | --- | ---: | --- | ---: | " + " | ".join("---:" for _ in levels[:-1]) + " | ---: |",
    ]
    for row in rows:
        per_seed = ", ".join(f"{100 * v:.1f}" for v in row["part_per_seed"])
        coarse = " | ".join(study.percent(row["merged_miou"][name]) for name in reversed(levels[:-1]))
        lines.append(f"| {100 * row['fraction']:.0f}% | {row['label']} | {study.percent(row['merged_miou'][levels[-1]])} | "
                     f"{per_seed} | {study.percent(row['best_part'])} | {coarse} | "
                     f"{row['seconds_per_iteration']['mean']:.3f} |")
    labels = {variant.key: variant.label for variant in VARIANTS}
    if report.get("dropped"):
        lines += ["", "Cells with fewer seeds than the rest (the plan leaves them out):", ""]
        for cell in report["dropped"]:
            seeds = "not run" if cell["seeds"] == 0 else f"{cell['seeds']} seed{'s' * (cell['seeds'] > 1)}"
            lines.append(f"- {100 * cell['fraction']:.0f}% {labels[cell['variant']]}: {seeds}; {cell['why']}.")
    iterations = sorted({int(i) for row in rows for i in row["curve"]})
    lines += ["", f"{levels[-1]} mIoU against iterations (mean over seeds):", "",
              "| f | variant | " + " | ".join(str(i) for i in iterations) + " |",
              "| ---: | --- | " + " | ".join("---:" for _ in iterations) + " |"]
    for row in rows:
        cells = " | ".join(study.percent(row["curve"].get(i), 1) for i in iterations)
        lines.append(f"| {100 * row['fraction']:.0f}% | {row['label']} | {cells} |")
    classes = list(rows[0]["fine_iou"])
    lines += ["", f"Per-class {levels[-1]} IoU in percent, mean over seeds (columns: f, variant key):", "",
              "| class | " + " | ".join(f"{100 * r['fraction']:.0f}% {r['variant']}" for r in rows) + " |",
              "| --- | " + " | ".join("---:" for _ in rows) + " |"]
    for name in classes:
        lines.append(f"| {name} | " + " | ".join(f"{100 * r['fine_iou'][name]['mean']:.1f}" for r in rows) + " |")
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], path: Path) -> None:
    """Part mIoU against the fraction of fine labels, one line per variant (mean over seeds)."""
    figure = Figure(figsize=(7, 4))
    axis = figure.add_subplot()
    for index, variant in enumerate(VARIANTS):
        points = sorted((row["fraction"], row["merged_miou"][list(row["merged_miou"])[-1]])
                        for row in report["summary"] if row["variant"] == variant.key)
        if variant.coarse is None:  # the fine-only models also hold the ceiling at f = 100%
            points = sorted(points)
        if not points:
            continue
        axis.errorbar([100 * f for f, _ in points], [100 * s["mean"] for _, s in points],
                      yerr=[0 if math.isnan(s["std"]) else 100 * s["std"] for _, s in points],
                      marker="o", capsize=3, label=variant.label, color=f"C{index}")
    axis.set_xscale("log")
    axis.set(xlabel="images with part labels, % of the pool", ylabel="part mIoU, %",
             title=f"Coarse labels for the rest of a {report['pool']}-image pool")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    figure.tight_layout()
    atomic_write(path, lambda temporary: figure.savefig(temporary, format="png", dpi=100))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny settings for CI, into a temporary folder")
    parser.add_argument("--fractions", type=float, nargs="+", help=f"fine fractions (default {list(FRACTIONS)})")
    parser.add_argument("--seeds", type=int, help="seeds 0..N-1 (default 3; 1 with --quick)")
    parser.add_argument("--first-seed", type=int, default=0,
                        help="start at this seed (another process may run the ones before it)")
    parser.add_argument("--variants", nargs="+", choices=[v.key for v in VARIANTS], help="only these variants")
    parser.add_argument("--out", type=Path, help="folder for study_coarse.md/png/json (default benchmarks/)")
    parser.add_argument("--runs", type=Path, help="folder for run directories (default runs/study_coarse)")
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite the tables from the records there are, training nothing (e.g. after "
                             "several processes each ran a part of the plan)")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.fractions = args.fractions or ([0.10] if args.quick else list(FRACTIONS))
    if any(not 0 < f <= 1 for f in args.fractions):
        parser.error(f"fractions must lie in (0, 1], got {args.fractions}")
    args.seeds = args.seeds or (1 if args.quick else 3)
    if not 0 <= args.first_seed < args.seeds:
        parser.error(f"--first-seed must lie in [0, seeds - 1 = {args.seeds - 1}], got {args.first_seed}")
    if args.out is None:
        args.out = Path(tempfile.mkdtemp(prefix="hierparse-coarse-")) if args.quick else study.REPOSITORY / "benchmarks"
    if args.runs is None:
        args.runs = args.out / "runs" if args.quick else study.REPOSITORY / "runs" / "study_coarse"
    return args


class Plan:
    """The units of a study and their records: which are finished, and the report of those."""

    def __init__(self, args: argparse.Namespace):
        self.out, self.runs_dir = writable_dir(args.out), writable_dir(args.runs)
        self.records = writable_dir(self.out / "study_coarse_runs")
        self.settings, self.pool = (QUICK_SETTINGS, QUICK_POOL) if args.quick else (SETTINGS, POOL)
        self.command = shlex.join(["python", "benchmarks/study_coarse.py", *args.argv])
        # what is reported: the whole study, whichever part of it this call trains
        self.dropped = {} if args.quick else DROPPED
        self.units = planned(args.fractions if args.quick else sorted({*FRACTIONS, *args.fractions}),
                             max(args.seeds, 1 if args.quick else 3), None, dropped=self.dropped)

    def name(self, fraction: float, variant: Variant, seed: int) -> str:
        return f"f{round(100 * fraction):03d}_{variant.key}_seed{seed}"

    def settings_of(self, fraction: float, variant: Variant, seed: int) -> dict[str, Any]:
        return unit_settings(fraction, variant, seed, self.settings, self.pool, self.runs_dir)

    def finished(self, fraction: float, variant: Variant, seed: int) -> dict[str, Any] | None:
        """The unit's record, if it ran with the settings asked for now."""
        record = study.load_record(self.records / f"{self.name(fraction, variant, seed)}.json")
        wanted = configuration.resolve(None, study.override_tokens(self.settings_of(fraction, variant, seed)))
        return record if record is not None and same_unit(record, wanted) else None

    def report(self) -> dict[str, Any] | None:
        """Tables, plot and JSON of every finished unit of the study; None when none has finished."""
        runs = [record for unit in self.units if (record := self.finished(*unit)) is not None]
        if not runs:
            return None
        report = {"command": self.command, "settings": self.settings, "pool": self.pool,
                  "planned_runs": len(self.units), "complete": len(runs) == len(self.units),
                  "max_iters": runs[0]["config"]["max_iters"], "summary": summarise(runs),
                  "dropped": [{"fraction": fraction, "variant": key, "seeds": seeds, "why": why}
                              for (fraction, key), (seeds, why) in self.dropped.items()], "runs": runs}
        write_text(self.out / "study_coarse.json", to_json(report, indent=1) + "\n")
        write_text(self.out / "study_coarse.md", markdown(report))
        plot(report, self.out / "study_coarse.png")
        return report


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    plan = Plan(args)
    info = study.machine()
    for fraction, variant, seed in planned(args.fractions, args.seeds, args.variants, args.first_seed,
                                           plan.dropped):
        name = plan.name(fraction, variant, seed)
        if plan.finished(fraction, variant, seed) is not None:
            print(f"=== {name}: done before, skipped", flush=True)
            continue
        if args.report_only:
            continue
        print(f"=== {name}", flush=True)
        record = {**run_one(plan.settings_of(fraction, variant, seed), variant),
                  "fraction": fraction, "seed": seed, "machine": info}
        write_text(plan.records / f"{name}.json", to_json(record, indent=1) + "\n")
        print(f"=== {name}: part mIoU {100 * record['decode']['independent']['fine_miou']:.2f}, "
              f"{record['wall_seconds']:.0f} s", flush=True)
        plan.report()
    report = plan.report()
    if report is None:
        print("no run has finished yet")
        return 0
    print(markdown(report))
    print(f"wrote {plan.out / 'study_coarse.md'}, .png, .json; records in {plan.records}; "
          f"run directories in {plan.runs_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
