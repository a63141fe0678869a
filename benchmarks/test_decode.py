"""The fused decode (ops.upsample_decode) vs the decode before it (F.interpolate every level to full
resolution in float32, per-level scores, argmax or path search; results: benchmarks/RESULTS.md).

Cases: a 2048x1024 street scene (Cityscapes tree, 7 + 19 classes, logits at stride 8) and a 473x473
person (LIP tree, 2 + 6 + 20 classes, stride 8 and stride 4), batch 1, float32, 2 threads; each mode.
Peak memory: in a fresh process, the resident high-water mark on top of the inputs, as a multiple of
the low-resolution logits plus the output maps. Goals: >= 3x faster, peak extra <= 1.5x.

Run: .venv/bin/python -m pytest benchmarks/test_decode.py --benchmark-only -s
"""

from __future__ import annotations

import functools
import textwrap

import pytest
import torch
from peak_memory import run_in_fresh_process
from timing import interleaved_medians

from hierparse import load_hierarchy, ops
from hierparse.inference import ancestor_table, decode_scores, node_scores, resize

CASES = {  # hierarchy, output size, stride
    "cityscapes_2048x1024_s8": ("cityscapes", (1024, 2048), 8),
    "lip_473_s8": ("lip", (473, 473), 8),
    "lip_473_s4": ("lip", (473, 473), 4),
}
MODES = ("independent", "consistent", "tree")
ROUNDS = 8
THREADS = 2


def problem(case: str):
    name, size, stride = CASES[case]
    hierarchy = load_hierarchy(name)
    low = (-(-size[0] // stride), -(-size[1] // stride))
    g = torch.Generator().manual_seed(0)
    return hierarchy, [torch.randn(1, c, *low, generator=g) * 3 for c in hierarchy.num_classes], size


def full_resolution(logits, hierarchy, size, mode):
    """The decode before the op (float32 maps of every level at full resolution)."""
    return decode_scores([node_scores(resize(x, size), mode) for x in logits], hierarchy, mode)


def fused(logits, hierarchy, size, mode):
    return ops.upsample_decode(logits, ancestor_table(hierarchy), size, mode)


IMPLEMENTATIONS = {"fused": fused, "full_resolution": full_resolution}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", CASES)
def test_speedup_interleaved(benchmark, case, mode):
    previous = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        hierarchy, logits, size = problem(case)
        runs = {name: functools.partial(decode, logits, hierarchy, size, mode) for name, decode in IMPLEMENTATIONS.items()}
        median = {name: seconds * 1e3 for name, seconds in interleaved_medians(runs, ROUNDS).items()}
        ratio = median["full_resolution"] / median["fused"]
        benchmark.group = f"decode {case}"
        benchmark.extra_info.update({**{f"{k}_ms": v for k, v in median.items()}, "speedup": ratio})
        print(f"\n{case} {mode}: fused {median['fused']:.2f} ms, full resolution {median['full_resolution']:.2f} ms, "
              f"{ratio:.1f}x")
        benchmark.pedantic(fused, (logits, hierarchy, size, mode), rounds=3)
    finally:
        torch.set_num_threads(previous)


PEAK_SCRIPT = textwrap.dedent(
    """
    import json, sys, torch
    sys.path.insert(0, {benchmarks!r})
    from peak_memory import peak_bytes, reset_peak
    from test_decode import IMPLEMENTATIONS, THREADS, problem

    torch.set_num_threads(THREADS)
    decode = IMPLEMENTATIONS[sys.argv[2]]
    hierarchy, logits, size = problem(sys.argv[1])
    decode([x[..., :4, :4] for x in logits], hierarchy, (16, 16), sys.argv[3])  # loads code, starts threads
    before = reset_peak()
    maps = decode(logits, hierarchy, size, sys.argv[3])
    after = peak_bytes()
    print(json.dumps({{"extra": after - before, "logits": sum(x.numel() * x.element_size() for x in logits),
                       "maps": sum(m.numel() * m.element_size() for m in maps)}}))
    """
)


@pytest.mark.parametrize("impl", list(IMPLEMENTATIONS))
@pytest.mark.parametrize("case", ["cityscapes_2048x1024_s8", "lip_473_s4"])
def test_peak_memory(impl, case, tmp_path):
    numbers = run_in_fresh_process(PEAK_SCRIPT, [case, impl, "consistent"], tmp_path)
    budget = numbers["logits"] + numbers["maps"]
    ratio = numbers["extra"] / budget
    print(f"\n{case} {impl} consistent: peak extra {numbers['extra'] / 2**20:.2f} MiB = {ratio:.2f} x "
          f"(logits {numbers['logits'] / 2**20:.2f} MiB + maps {numbers['maps'] / 2**20:.2f} MiB)")
    if impl == "fused":
        assert ratio <= 1.5, f"the fused decode keeps {ratio:.2f}x the logits and maps"
