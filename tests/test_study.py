"""The stacking study's quick mode (``benchmarks/study.py --quick``) runs end to end and writes its table,
JSON and plot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent.parent
VARIANTS = ["flat", "stacked_no_skips", "stacked", "stacked_fine_weighted"]


def test_quick_study_writes_table_json_and_plot(tmp_path):
    command = [sys.executable, str(REPOSITORY / "benchmarks" / "study.py"), "--quick", "--out", str(tmp_path)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]

    report = json.loads((tmp_path / "study.json").read_text())
    assert list(report["summary"]) == VARIANTS
    assert len(report["runs"]) == len(VARIANTS) and report["seeds"] == [0]
    for key, entry in report["summary"].items():
        assert entry["parameters"] > 0 and entry["seconds_per_iteration"]["mean"] > 0
        assert set(entry["decode"]) == ({"independent"} if key == "flat" else {"independent", "consistent"})
        fine = entry["decode"]["independent"]["fine_miou"]
        assert 0 <= fine["mean"] <= 1 and len(fine["seeds"]) == 1
        assert set(entry["decode"]["independent"]["merged_miou"]) == {"person", "region", "part"}
    assert report["summary"]["flat"]["decode"]["independent"]["consistency"]["mean"] is None  # NaN -> null
    assert report["summary"]["stacked"]["decode"]["consistent"]["consistency"]["mean"] == 1.0
    assert report["summary"]["flat"]["parameters"] < report["summary"]["stacked"]["parameters"]

    table = (tmp_path / "study.md").read_text()
    assert "python benchmarks/study.py --quick" in table
    labels = [entry["label"] for entry in report["summary"].values()]
    rows = [line for line in table.splitlines()
            if line.startswith("| ") and not line.startswith(("| variant", "| ---"))]
    assert [row.split(" | ")[0][2:] for row in rows[:4]] == labels
    assert len(rows) == 4 + 2 * 3  # results, then independent and consistent per stacked variant

    assert (tmp_path / "study.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert (tmp_path / "runs" / "stacked" / "seed0" / "last.pt").is_file()
