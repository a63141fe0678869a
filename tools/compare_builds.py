"""Times the fused cross-entropy of two built checkouts on the same problem, process after process.

Two builds register the same operator names, so they cannot share a process: each round starts one
process per checkout (in alternating order) that times forward+backward on one thread, and the
ratio of the medians over rounds is printed. The problem is benchmarks/test_ops.py's (2/5/20
classes, N=8, 256x256, exact labels) at full size and with logits at 1/8 of the labels.

    python tools/compare_builds.py /path/to/old/checkout /path/to/new/checkout --rounds 6
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

PROBE = r"""
import json, statistics, sys, time, torch
torch.set_num_threads(1)
from hierparse import ops
g = torch.Generator().manual_seed(0)
table = torch.full((3, 256), 255, dtype=torch.int64)
for level, c in enumerate((2, 5, 20)):
    table[level, :20] = torch.arange(20) % c
labels = torch.randint(0, 20, (8, 256, 256), generator=g, dtype=torch.uint8)
labels[torch.rand(8, 256, 256, generator=g) < 0.1] = 255
out = {"file": ops.__file__}
for name, size in (("full-size", (256, 256)), ("logits-32", (32, 32))):
    logits = [torch.randn(8, c, *size, generator=g).requires_grad_(True) for c in (2, 5, 20)]
    times = []
    for _ in range(12):
        start = time.perf_counter()
        torch.autograd.grad(ops.multilevel_cross_entropy(logits, labels, table).sum(), logits)
        times.append(time.perf_counter() - start)
    out[name] = statistics.median(times[2:])
print(json.dumps(out))
"""


def probe(checkout: str) -> dict:
    env = {**os.environ, "PYTHONPATH": checkout}
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, cwd=checkout,
                            timeout=600, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("old")
    parser.add_argument("new")
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    results = {"old": [], "new": []}
    for round_ in range(args.rounds):
        for which in (("old", "new") if round_ % 2 == 0 else ("new", "old")):
            results[which].append(probe(getattr(args, which)))
    for which in results:
        print(f"{which}: {results[which][0]['file']}")
    for name in ("full-size", "logits-32"):
        old = statistics.median(r[name] for r in results["old"])
        new = statistics.median(r[name] for r in results["new"])
        print(f"{name}: old {1e3 * old:.1f} ms, new {1e3 * new:.1f} ms, new/old {new / old:.3f} "
              f"(load {os.getloadavg()[0]:.1f}, {args.rounds} rounds)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
