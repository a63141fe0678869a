"""Side-by-side timing for the benchmarks: implementations run in turn, so load from other jobs on a
shared machine hits them alike, and only their ratios are trusted."""

from __future__ import annotations

import statistics
import time
from typing import Callable, Mapping


def interleaved_medians(runs: Mapping[str, Callable[[], object]], rounds: int, warmup: int = 1) -> dict[str, float]:
    """Median seconds of each callable over ``rounds`` rounds, the first ``warmup`` rounds dropped;
    the order of the callables is rotated every round."""
    if rounds <= warmup:
        raise ValueError(f"rounds ({rounds}) must exceed warmup ({warmup})")
    names = list(runs)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(rounds):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            runs[name]()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values[warmup:]) for name, values in times.items()}
