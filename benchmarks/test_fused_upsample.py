"""The fused cross-entropy on low-resolution logits (bilinear upsampling inside the op) vs upsampling
first (results: benchmarks/RESULTS.md).

Cases: labels [8, 256, 256] uint8 (10% ignored) with levels of 2/5/20 classes at 32x32, 32x32 and
64x64 (a stacked parser's strides 8, 8 and 4), and labels [4, 473, 473] with levels at 60x60,
60x60 and 119x119. float32, forward + torch.autograd.grad of the summed losses, 2 threads.
Implementations, alternating round by round in one process:
  fused_upsample      ops.multilevel_cross_entropy(low-resolution logits, ...)
  interpolate_fused   F.interpolate to the labels' size, then the same op (the code before)
  interpolate_naive   F.interpolate, then the table lookup and F.cross_entropy per level (reference)

Run: .venv/bin/python -m pytest benchmarks/test_fused_upsample.py --benchmark-only -s
"""

from __future__ import annotations

import textwrap

import pytest
import torch
import torch.nn.functional as F
from peak_memory import run_in_fresh_process
from timing import interleaved_medians

from hierparse import ops

CLASSES = (2, 5, 20)
CASES = {  # N, labels' H = W, each level's logits' size
    "256px": (8, 256, (32, 32, 64)),
    "473px": (4, 473, (60, 60, 119)),
}
ROUNDS = 12  # interleaved rounds per implementation (the first two are warm-up)
THREADS = 2


def problem(case: str):
    n, size, logit_sizes = CASES[case]
    g = torch.Generator().manual_seed(0)
    table = torch.full((len(CLASSES), 256), 255, dtype=torch.int64)
    for level, c in enumerate(CLASSES):
        table[level, :20] = torch.arange(20) % c
    labels = torch.randint(0, 20, (n, size, size), generator=g, dtype=torch.uint8)
    labels[torch.rand(n, size, size, generator=g) < 0.1] = 255
    logits = [torch.randn(n, c, s, s, generator=g).requires_grad_(True) for c, s in zip(CLASSES, logit_sizes)]
    return logits, labels, table


def upsampled(logits, labels):
    return [F.interpolate(x, size=labels.shape[-2:], mode="bilinear", align_corners=False) for x in logits]


IMPLEMENTATIONS = {
    "fused_upsample": lambda logits, labels, table: ops.multilevel_cross_entropy(logits, labels, table),
    "interpolate_fused": lambda logits, labels, table: ops.multilevel_cross_entropy(
        upsampled(logits, labels), labels, table),
    "interpolate_naive": lambda logits, labels, table: ops.reference.multilevel_cross_entropy(
        upsampled(logits, labels), labels, table),
}


@pytest.fixture
def two_threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(previous)


def training_steps(logits, labels, table, sync=lambda: None):
    """One forward+backward of each implementation, waiting for the device (sync) at its end."""
    def step(name):
        def run():
            grads = torch.autograd.grad(IMPLEMENTATIONS[name](logits, labels, table).sum(), logits)
            sync()
            return grads
        return run

    return {name: step(name) for name in IMPLEMENTATIONS}


def interleaved_medians(benchmark, steps, where):
    """The implementations in turn (order rotated each round), so load from other jobs hits them
    alike: their median times (ms) and ratios, printed and kept in the benchmark's extra_info."""
    median = {name: seconds * 1e3 for name, seconds in interleaved_medians(steps, ROUNDS, warmup=2).items()}
    fused = median["fused_upsample"]
    benchmark.extra_info.update({f"{name}_ms": ms for name, ms in median.items()})
    benchmark.extra_info.update(vs_interpolate_fused=median["interpolate_fused"] / fused,
                                vs_interpolate_naive=median["interpolate_naive"] / fused)
    print(f"\n{where}, forward+backward: " + ", ".join(f"{name} {ms:.2f} ms" for name, ms in median.items())
          + f"; fused_upsample is {median['interpolate_fused'] / fused:.1f}x interpolate_fused and "
          f"{median['interpolate_naive'] / fused:.1f}x interpolate_naive")
    return median


@pytest.mark.parametrize("case", CASES)
def test_speedup_interleaved(benchmark, case, two_threads):
    """Goals: >= 3x interpolate_fused, >= 15x interpolate_naive."""
    benchmark.group = f"fused upsampling, interleaved, {case}"
    steps = training_steps(*problem(case))
    interleaved_medians(benchmark, steps, f"{case}, {THREADS} threads")
    benchmark.pedantic(steps["fused_upsample"], rounds=3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("case", CASES)
def test_cuda_speedup_and_peak_memory(benchmark, case):
    """On the GPU: the interleaved medians, and each step's peak allocated memory on top of its
    inputs (torch.cuda.max_memory_allocated) as a multiple of the low-resolution logits' size. Goal
    for fused_upsample: at most 1.5."""
    benchmark.group = f"fused upsampling on {torch.cuda.get_device_name()}, {case}"
    logits, labels, table = problem(case)
    logits = [x.detach().cuda().requires_grad_(True) for x in logits]
    steps = training_steps(logits, labels.cuda(), table.cuda(), sync=torch.cuda.synchronize)
    for step in steps.values():  # warm-up: kernels loaded, the caching allocator filled
        step()
    interleaved_medians(benchmark, steps, f"{case}, {torch.cuda.get_device_name()}")
    logit_bytes = sum(x.numel() * x.element_size() for x in logits)
    ratios = {}
    for name, step in steps.items():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        grads = step()
        ratios[name] = (torch.cuda.max_memory_allocated() - before) / logit_bytes
        del grads
    benchmark.extra_info.update({f"{name}_peak_x_logits": ratio for name, ratio in ratios.items()})
    print(f"{case}: peak extra memory " + ", ".join(f"{name} {ratio:.2f}x" for name, ratio in ratios.items())
          + f" the low-resolution logits ({logit_bytes / 2**20:.2f} MiB)")
    benchmark.pedantic(steps["fused_upsample"], rounds=3)
    assert ratios["fused_upsample"] <= 1.5, f"the step keeps {ratios['fused_upsample']:.2f}x the logits' size"


PEAK_SCRIPT = textwrap.dedent(
    """
    import json, sys, torch
    sys.path.insert(0, {benchmarks!r})
    from peak_memory import peak_bytes, reset_peak
    from test_fused_upsample import IMPLEMENTATIONS, THREADS, problem

    torch.set_num_threads(THREADS)
    step = IMPLEMENTATIONS[sys.argv[2]]
    tiny_logits, tiny_labels, table = problem("256px")
    tiny = [x[:1, :, :4, :4].detach().requires_grad_(True) for x in tiny_logits]
    torch.autograd.grad(step(tiny, tiny_labels[:1, :16, :16], table).sum(), tiny)  # loads code, starts threads
    logits, labels, table = problem(sys.argv[1])
    before = reset_peak()
    grads = torch.autograd.grad(step(logits, labels, table).sum(), logits)
    after = peak_bytes()
    print(json.dumps({{"extra": after - before, "logits": sum(x.numel() * x.element_size() for x in logits)}}))
    """
)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("impl", ["fused_upsample", "interpolate_fused"])
def test_peak_memory_of_a_training_step(impl, case, tmp_path):
    """Peak resident memory of one training step on top of the inputs, in a fresh process, as a
    multiple of the low-resolution logits' size. Goal for fused_upsample: at most 1.5 (the step
    returns gradients of the logits' size; no full-resolution tensor)."""
    numbers = run_in_fresh_process(PEAK_SCRIPT, [case, impl], tmp_path)
    ratio = numbers["extra"] / numbers["logits"]
    print(f"\n{case} {impl}: peak extra {numbers['extra'] / 2**20:.2f} MiB = {ratio:.2f} x the low-resolution "
          f"logits ({numbers['logits'] / 2**20:.2f} MiB)")
    if impl == "fused_upsample":
        assert ratio <= 1.5, f"the training step keeps {ratio:.2f}x the low-resolution logits' size"
