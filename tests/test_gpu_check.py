"""The prepared device check (tools/gpu_check.sh, make gpu-check) and its report, as far as a machine
without a GPU can check them: the script refuses at once and says why, the report renders a
pytest-benchmark JSON, and the selection of CUDA tests names files that exist."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tools" / "gpu_check.sh"
sys.path.insert(0, str(ROOT / "tools"))
import gpu_report  # noqa: E402


def test_the_script_is_valid_bash_and_its_test_files_exist():
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0
    listed = re.findall(r"(tests/test_\w+\.py|benchmarks/test_\w+\.py)", SCRIPT.read_text())
    assert listed and all((ROOT / path).is_file() for path in listed), listed


def gpu_only_tests() -> list[tuple[str, str]]:
    """(file, name) of every test function that skips without a GPU (a skipif on torch.cuda.is_available())."""
    found = []
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and any(
                    "skipif" in ast.unparse(d) and "not torch.cuda.is_available()" in ast.unparse(d)
                    for d in node.decorator_list):
                found.append((f"tests/{path.name}", node.name))
    return found


def test_the_script_selects_every_gpu_only_test():
    """The script runs its files' tests with "cuda" in their ids: a GPU-only test must say cuda."""
    listed = set(re.findall(r"tests/test_\w+\.py", SCRIPT.read_text()))
    tests = gpu_only_tests()
    assert len(tests) >= 8, tests
    assert [t for t in tests if t[0] not in listed or "cuda" not in t[1]] == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_without_a_gpu_it_stops_at_once_and_says_why(tmp_path):
    result = subprocess.run([str(SCRIPT)], env={"OUT": str(tmp_path), "PYTHON": sys.executable, "PATH": "/usr/bin:/bin"},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    summary = (tmp_path / "summary.md").read_text()
    assert "device: FAILED" in summary and "torch.cuda.is_available() is false" in summary
    assert not (tmp_path / "build.log").exists()  # nothing built


def test_the_report_is_one_row_per_benchmark_with_its_figures(tmp_path, capsys):
    data = {"machine_info": {"node": "gpu-1", "cpu": {"brand_raw": "Xeon"}}, "datetime": "2026-12-07",
            "benchmarks": [{"fullname": "benchmarks/test_ops.py::test_speedup_interleaved[cuda-forward]",
                            "stats": {"median": 0.00125}, "extra_info": {"speedup": 11.25, "fused_ms": 1.25}}]}
    path = tmp_path / "b.json"
    path.write_text(json.dumps(data))
    assert gpu_report.main([str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "Benchmarks on gpu-1 (Xeon), 2026-12-07"
    assert lines[-1] == ("| benchmarks/test_ops.py::test_speedup_interleaved[cuda-forward] | 1.250 | "
                         "fused_ms 1.25, speedup 11.25 |")
    assert gpu_report.main([str(tmp_path / "missing.json")]) == 2
    assert "missing.json does not exist" in capsys.readouterr().err
