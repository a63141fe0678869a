"""What class sets (coarse labels) cost in the fused cross-entropy (results: benchmarks/RESULTS.md).

The shapes of benchmarks/test_ops.py (3 levels of 2/5/20 classes, N=8, 256x256 labels, 10% ignored),
with the logits at the labels' size and at 1/8 and 1/4 of it (upsampled in the op, as in training).
Forward+backward on one thread, interleaved round by round against today's table (no set); two set
cases:

- ``declared``: lip's five groups declared (set entries in the table, set_members passed) but every
  label exact: the price of the set machinery when no pixel uses it (goal: at most 1.10x);
- ``coarse``: also half of the images labelled with their regions (groups 21-24), so half the pixels
  are scored as sets at the part level (one lane at a time: a cost that coarse data pays).

Run: .venv/bin/python -m pytest benchmarks/test_coarse_labels.py --benchmark-only -s
"""

from __future__ import annotations

import os

import pytest
import torch
from test_ops import CLASSES, N, H, W, problem
from timing import interleaved_medians

from hierparse import load_hierarchy, ops

ROUNDS = 40


def cases(size: tuple[int, int] | None):
    logits, labels, exact_table = problem("cpu")
    if size is not None:
        g = torch.Generator().manual_seed(1)
        logits = [torch.randn(N, c, *size, generator=g).requires_grad_(True) for c in CLASSES]
    lip = load_hierarchy("lip")
    table, members = lip.label_table(), lip.set_members()
    coarse = labels.clone()
    coarse[: N // 2] = torch.from_numpy(lip.coarsening("region"))[labels[: N // 2].long()]
    return logits, {"exact": (labels, exact_table, None), "declared": (labels, table, members),
                    "coarse": (coarse, table, members)}


@pytest.mark.parametrize("size", [None, (32, 32), (64, 64)], ids=["full-size", "logits-32", "logits-64"])
def test_set_form_cost_interleaved(benchmark, size, one_thread):
    benchmark.group = "class sets, forward+backward, interleaved"
    logits, problems = cases(size)

    def runner(name):
        labels, table, members = problems[name]
        return lambda: torch.autograd.grad(
            ops.multilevel_cross_entropy(logits, labels, table, set_members=members).sum(), logits)

    runs = {name: runner(name) for name in problems}
    median = interleaved_medians(runs, ROUNDS, warmup=2)
    ratios = {name: median[name] / median["exact"] for name in ("declared", "coarse")}
    benchmark.extra_info.update({f"{name}_ms": 1e3 * value for name, value in median.items()},
                                **{f"{name}_ratio": value for name, value in ratios.items()})
    print(f"\n{'full size' if size is None else f'logits {size[0]}x{size[1]}'} of {H}x{W}, "
          f"{torch.get_num_threads()} threads, load {os.getloadavg()[0]:.1f}: exact {1e3 * median['exact']:.1f} ms, "
          f"sets declared {1e3 * median['declared']:.1f} ms ({ratios['declared']:.3f}x), "
          f"half the images coarse {1e3 * median['coarse']:.1f} ms ({ratios['coarse']:.3f}x)")
    assert ratios["declared"] <= 1.10, "declaring sets must cost at most 10% when no label uses them"
    benchmark.pedantic(runs["declared"], rounds=3)
