"""A markdown table of a pytest-benchmark JSON (the CUDA benchmarks of ``make gpu-check``): one row per
benchmark with its median and the figures it keeps in ``extra_info`` (speed-ups, memory ratios).

Usage: python tools/gpu_report.py benchmarks.json > benchmarks.md
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def report(data: dict) -> str:
    machine = data.get("machine_info", {})
    lines = [f"Benchmarks on {machine.get('node', '?')} ({machine.get('cpu', {}).get('brand_raw', '?')}), "
             f"{data.get('datetime', '?')}", "", "| benchmark | median (ms) | figures |", "| --- | ---: | --- |"]
    for bench in data.get("benchmarks", []):
        figures = ", ".join(f"{key} {cell(value)}" for key, value in sorted(bench.get("extra_info", {}).items()))
        lines.append(f"| {bench['fullname']} | {1e3 * bench['stats']['median']:.3f} | {figures} |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    path = Path(argv[0])
    if not path.is_file():
        print(f"gpu_report: {path} does not exist (the benchmarks wrote no JSON)", file=sys.stderr)
        return 2
    print(report(json.loads(path.read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
