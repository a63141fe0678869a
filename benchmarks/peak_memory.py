"""Peak resident memory of the running process, for the benchmarks' fresh-process memory checks.

Read as VmHWM, the high-water mark of the process's own memory, after a reset: ``ru_maxrss`` would
also hold the parent's resident size at the exec of a fresh process, which hides any step smaller
than the parent (pytest after heavy benchmarks).
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

BENCHMARKS = Path(__file__).resolve().parent


def peak_bytes() -> int:
    """The resident high-water mark since the last :func:`reset_peak` (or the start), in bytes."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM"))


def reset_peak() -> int:
    """Return freed memory to the system, then make the memory in use now the peak; returns it."""
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # no freed memory left to reuse unseen
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")
    return peak_bytes()


def run_in_fresh_process(script: str, args: Sequence[str], folder: Path) -> dict[str, Any]:
    """Runs ``script`` (Python source; ``{benchmarks}`` in it names this folder) in a fresh interpreter
    with this checkout's hierparse first on the path, and returns the JSON object of its last line."""
    path = folder / "peak.py"
    path.write_text(script.format(benchmarks=str(BENCHMARKS)))
    env = {**os.environ, "PYTHONPATH": str(BENCHMARKS.parent)}
    result = subprocess.run([sys.executable, str(path), *args], capture_output=True, text=True, timeout=300, env=env,
                            check=False)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])
