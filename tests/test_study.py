"""The stacking study's quick mode (``benchmarks/study.py --quick``) runs end to end and writes its table,
JSON and plot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent.parent
VARIANTS = ["flat", "flat_skip", "stacked_no_skips", "stacked", "stacked_fine_weighted", "softmax_ohem", "tree_min",
            "flat_skip_ohem", "stacked_ohem_fine_loss_only"]
FLAT = ("flat", "flat_skip", "flat_skip_ohem")


def test_quick_study_writes_table_json_and_plot(tmp_path):
    command = [sys.executable, str(REPOSITORY / "benchmarks" / "study.py"), "--quick", "--out", str(tmp_path)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]

    report = json.loads((tmp_path / "study.json").read_text())
    assert list(report["summary"]) == VARIANTS
    assert len(report["runs"]) == len(VARIANTS) and report["seeds"] == [0]
    for key, entry in report["summary"].items():
        assert entry["parameters"] > 0 and entry["seconds_per_iteration"]["mean"] > 0
        path_decode = "tree" if key == "tree_min" else "consistent"
        assert set(entry["decode"]) == ({"independent"} if key in FLAT else {"independent", path_decode})
        fine = entry["decode"]["independent"]["fine_miou"]
        assert 0 <= fine["mean"] <= 1 and len(fine["seeds"]) == 1
        assert set(entry["decode"]["independent"]["merged_miou"]) == {"person", "region", "part"}
    assert report["summary"]["flat"]["decode"]["independent"]["consistency"]["mean"] is None  # NaN -> null
    assert report["summary"]["stacked"]["decode"]["consistent"]["consistency"]["mean"] == 1.0
    assert report["summary"]["tree_min"]["decode"]["tree"]["consistency"]["mean"] == 1.0
    runs = {run["variant"]: run for run in report["runs"]}
    assert runs["tree_min"]["config"]["loss"] == "tree_min" and runs["softmax_ohem"]["config"]["ohem"]
    assert runs["stacked_ohem_fine_loss_only"]["config"]["level_weights"] == [0.0, 0.0, 1.0]
    parameters = {key: entry["parameters"] for key, entry in report["summary"].items()}
    assert parameters["flat"] < parameters["flat_skip"] < parameters["stacked"]
    assert report["complete"] and report["planned_runs"] == len(VARIANTS)

    table = (tmp_path / "study.md").read_text()
    assert "python benchmarks/study.py --quick" in table
    labels = [entry["label"] for entry in report["summary"].values()]
    rows = [line for line in table.splitlines()
            if line.startswith("| ") and not line.startswith(("| variant", "| ---"))]
    assert [row.split(" | ")[0][2:] for row in rows[:len(VARIANTS)]] == labels
    rows = [row for row in rows if not row.startswith("| part class")]
    # results, two decodings per stacked variant, then one row per part class
    stacked = len(VARIANTS) - len(FLAT)
    assert len(rows) == len(VARIANTS) + 2 * stacked + 20
    assert rows[-1].startswith("| Right-shoe | ") and rows[-1].count("|") == len(VARIANTS) + 2
    assert "complete" in table.splitlines()[0]

    assert (tmp_path / "study.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert (tmp_path / "runs" / "stacked" / "seed0" / "last.pt").is_file()


def test_quick_study_resumes_run_by_run(tmp_path):
    """A finished (variant, seed) is skipped when the command runs again; a missing one is trained,
    and the tables say how many runs they hold until all are there."""
    command = [sys.executable, str(REPOSITORY / "benchmarks" / "study.py"), "--quick", "--out", str(tmp_path)]
    assert subprocess.run(command, capture_output=True, text=True, timeout=300).returncode == 0
    first = json.loads((tmp_path / "study.json").read_text())
    (tmp_path / "study_runs" / "flat_skip_seed0.json").unlink()
    # from another run folder (as in another clone): the records still count
    rerun = subprocess.run([*command, "--seeds", "2", "--runs", str(tmp_path / "moved")], capture_output=True,
                           text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    skipped = [line for line in rerun.stdout.splitlines() if line.endswith("skipped")]
    assert len(skipped) == len(VARIANTS) - 1 and "(flat_skip_seed0.json)" not in " ".join(skipped)
    report = json.loads((tmp_path / "study.json").read_text())
    assert report["complete"] and len(report["runs"]) == 2 * len(VARIANTS)
    seed0 = {run["variant"]: run for run in report["runs"] if run["seed"] == 0}
    for run in first["runs"]:  # kept as they were (the flat_skip run trained again, deterministically)
        assert seed0[run["variant"]]["decode"] == run["decode"]


def test_partial_study_is_labelled(tmp_path):
    sys.path.insert(0, str(REPOSITORY / "benchmarks"))
    try:
        import study
    finally:
        sys.path.pop(0)
    command = [sys.executable, str(REPOSITORY / "benchmarks" / "study.py"), "--quick", "--out", str(tmp_path)]
    assert subprocess.run(command, capture_output=True, text=True, timeout=300).returncode == 0
    runs = json.loads((tmp_path / "study.json").read_text())["runs"][:2]
    args = study.parse_args(["--quick", "--out", str(tmp_path)])
    partial = study.report_of(runs, args, study.QUICK_SETTINGS, "python benchmarks/study.py --quick")
    assert not partial["complete"] and list(partial["summary"]) == VARIANTS[:2]
    assert f"PARTIAL: 2 of {len(VARIANTS)} runs so far" in study.markdown(partial)


def test_quick_coarse_label_study_writes_its_tables_and_resumes(tmp_path):
    """benchmarks/study_coarse.py --quick: every variant at one fraction, teachers before their
    students, coarse sources relabelled to regions (or person masks); a second call skips all."""
    command = [sys.executable, str(REPOSITORY / "benchmarks" / "study_coarse.py"), "--quick", "--out", str(tmp_path)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-2000:]
    report = json.loads((tmp_path / "study_coarse.json").read_text())
    keys = [row["variant"] for row in report["summary"]]
    assert keys == ["flat_fine", "stacked_fine", "stacked_marginal", "flat_marginal", "stacked_ignore",
                    "stacked_teacher", "flat_teacher", "stacked_balanced", "stacked_teacher2", "stacked_fine_long",
                    "stacked_teacher_long", "stacked_selfcorrect", "stacked_warm", "stacked_selfcorrect2",
                    "stacked_marginal_person", "stacked_teacher_person", "stacked_selfcorrect_person"]
    runs = {run["variant"]: run for run in report["runs"]}
    assert runs["stacked_fine"]["config"]["datasets"] == [{"dataset": "synthetic", "n": 4}]
    coarse = runs["stacked_marginal"]["config"]["datasets"]
    assert coarse[1] == {"dataset": "synthetic", "n": 36, "first": 4, "coarsen": "region", "weight": 0.5}
    assert runs["stacked_marginal_person"]["config"]["datasets"][1]["coarsen"] == "person"
    assert runs["stacked_ignore"]["config"]["coarse_labels"] == "ignore"
    assert runs["stacked_teacher"]["config"]["teacher"]["checkpoint"].endswith("f010/stacked_fine/seed0/last.pt")
    assert runs["flat_teacher"]["config"]["teacher"]["checkpoint"].endswith("f010/flat_fine/seed0/last.pt")
    assert runs["stacked_teacher2"]["config"]["teacher"]["checkpoint"].endswith("f010/stacked_teacher/seed0/last.pt")
    assert [point["iter"] for point in runs["flat_fine"]["curve"]] == [2, 4]
    assert [point["iter"] for point in runs["stacked_teacher_long"]["curve"]] == [2, 4, 6, 8]
    assert runs["stacked_teacher_long"]["config"]["teacher"]["checkpoint"].endswith("f010/stacked_fine_long/seed0/last.pt")
    assert runs["stacked_selfcorrect"]["config"]["teacher"] == {
        **runs["stacked_teacher_long"]["config"]["teacher"], "warm_start": True, "refresh": 2}
    assert runs["stacked_selfcorrect2"]["config"]["teacher"]["checkpoint"].endswith(
        "f010/stacked_selfcorrect/seed0/last.pt")
    assert runs["stacked_selfcorrect_person"]["config"]["datasets"][1]["coarsen"] == "person"
    assert runs["stacked_warm"]["config"]["teacher"] == {
        **runs["stacked_teacher_long"]["config"]["teacher"], "warm_start": True}
    assert report["complete"] and "complete" in (tmp_path / "study_coarse.md").read_text().splitlines()[0]
    assert (tmp_path / "study_coarse.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    again = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and again.stdout.count("done before, skipped") == len(keys)


def test_coarse_study_counts_an_amp_auto_run_as_the_precision_it_used():
    sys.path.insert(0, str(REPOSITORY / "benchmarks"))
    import study_coarse
    from hierparse import config as configuration
    wanted = configuration.resolve(None, ["amp", "null", "seed", "3"])
    recorded = {**wanted, "amp": "auto"}
    assert study_coarse.same_unit({"config": recorded, "amp_used": None}, wanted)
    assert not study_coarse.same_unit({"config": recorded, "amp_used": "bf16"}, wanted)
    assert not study_coarse.same_unit({"config": recorded}, wanted)  # unknown precision: train again
    assert study_coarse.same_unit({"config": recorded, "amp_used": None}, recorded)  # auto asked, auto recorded


def test_dropped_coarse_study_cells_stop_at_their_seeds_and_are_listed():
    sys.path.insert(0, str(REPOSITORY / "benchmarks"))
    import study_coarse
    dropped = {(0.10, "stacked_ignore"): (2, "too far behind"), (0.10, "stacked_balanced"): (0, "a failed idea")}
    keys = ["stacked_fine", "stacked_ignore", "stacked_balanced"]
    units = [(fraction, variant.key, seed) for fraction, variant, seed in
             study_coarse.planned([0.10], 3, keys, dropped=dropped)]
    assert units == [(0.10, "stacked_fine", 0), (0.10, "stacked_ignore", 0), (0.10, "stacked_fine", 1),
                     (0.10, "stacked_ignore", 1), (0.10, "stacked_fine", 2)]
    assert len(study_coarse.planned([0.10], 3, keys)) == 9  # --quick: every cell
    row = {"fraction": 0.10, "variant": "stacked_fine", "label": "(b)", "part_per_seed": [0.3],
           "merged_miou": {"part": {"mean": 0.3, "std": 0.0}}, "best_part": {"mean": 0.3, "std": 0.0},
           "curve": {}, "fine_iou": {}, "seconds_per_iteration": {"mean": 1.0, "std": 0.0}}
    run = {"load_before": 1.0, "load_after": 1.0, "wall_seconds": 60.0,
           "machine": {"cpu": "c", "cores": 2, "torch": "t", "commit": "abc"}}
    report = {"summary": [row], "runs": [run], "complete": False, "planned_runs": 5, "command": "x", "max_iters": 4,
              "pool": 40, "settings": {"eval_interval": 2},
              "dropped": [{"fraction": f, "variant": k, "seeds": n, "why": why} for (f, k), (n, why) in dropped.items()]}
    text = study_coarse.markdown(report)
    assert "- 10% (e) stacked, coarse labels train coarse levels only: 2 seeds; too far behind." in text
    assert "- 10% (f) stacked, prior-balanced marginal: not run; a failed idea." in text


def test_every_dropped_coarse_study_cell_is_one_the_full_study_plans():
    sys.path.insert(0, str(REPOSITORY / "benchmarks"))
    import study_coarse
    cells = {(fraction, variant.key) for fraction, variant, _ in
             study_coarse.planned(study_coarse.FRACTIONS, 3, None)}
    assert set(study_coarse.DROPPED) <= cells
    for (fraction, key), (seeds, why) in study_coarse.DROPPED.items():
        assert 0 <= seeds < 3 and why, (fraction, key)
