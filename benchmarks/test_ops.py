"""Fused multi-level cross-entropy vs the naive PyTorch code (results: benchmarks/RESULTS.md).

Input: 3 levels with 2/5/20 classes, N=8, 256x256, 10% ignored pixels. Naive = the table lookup
by indexing + F.cross_entropy per level + autograd (hierparse.ops.reference). Training cases
take d(sum of losses)/d(logits) with torch.autograd.grad (logits are a model's intermediate
outputs in training: nothing accumulates into .grad).

Run: .venv/bin/python -m pytest benchmarks/test_ops.py --benchmark-only --benchmark-group-by=group
"""

from __future__ import annotations

import functools
import textwrap

import pytest
import torch
from peak_memory import run_in_fresh_process
from timing import interleaved_medians

import hierparse
from hierparse import ops

CLASSES = (2, 5, 20)
N, H, W = 8, 256, 256
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
ROUNDS = 24  # interleaved rounds per implementation (the first two are warm-up)


def problem(device: str, dtype: torch.dtype = torch.float32, requires_grad: bool = True):
    g = torch.Generator().manual_seed(0)
    table = torch.full((len(CLASSES), 256), 255, dtype=torch.int64)
    for level, c in enumerate(CLASSES):
        table[level, :20] = torch.arange(20) % c
    labels = torch.randint(0, 20, (N, H, W), generator=g, dtype=torch.uint8)
    labels[torch.rand(N, H, W, generator=g) < 0.1] = 255
    logits = [torch.randn(N, c, H, W, generator=g).to(device, dtype).requires_grad_(requires_grad) for c in CLASSES]
    return logits, labels.to(device), table.to(device)


IMPLEMENTATIONS = {"fused": ops.multilevel_cross_entropy, "naive": ops.reference.multilevel_cross_entropy}


def synchronized(fn, device):
    if device != "cuda":
        return fn

    def run():
        out = fn()
        torch.cuda.synchronize()
        return out

    return run


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("impl", ["fused", "naive"])
def test_train_step(benchmark, impl, dtype, device):
    benchmark.group = f"forward+backward {str(dtype).removeprefix('torch.')} {device}"
    logits, labels, table = problem(device, dtype)
    loss_fn = IMPLEMENTATIONS[impl]

    def step():
        return torch.autograd.grad(loss_fn(logits, labels, table).sum(), logits)

    benchmark.extra_info["bytes_floor"] = bytes_floor(logits, labels, with_grad=True)
    benchmark.pedantic(synchronized(step, device), rounds=20, warmup_rounds=3)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", ["fused", "naive"])
def test_evaluation_forward_float32(benchmark, impl, device):
    benchmark.group = f"forward only (no grad) float32 {device}"
    logits, labels, table = problem(device, requires_grad=False)
    loss_fn = IMPLEMENTATIONS[impl]

    def forward():
        with torch.no_grad():
            return loss_fn(logits, labels, table)

    benchmark.extra_info["bytes_floor"] = bytes_floor(logits, labels, with_grad=False)
    benchmark.pedantic(synchronized(forward, device), rounds=20, warmup_rounds=3)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["forward+backward", "forward"])
def test_speedup_interleaved(benchmark, mode, device):
    """Fused vs naive alternating round by round (order swapped each round), so load from other
    jobs hits both alike: the ratio of medians, and the fused op's share of the bandwidth floor."""
    benchmark.group = f"speed-up, interleaved {device}"
    logits, labels, table = problem(device, requires_grad=mode == "forward+backward")

    def runner(fn):
        def run():
            if mode == "forward":
                with torch.no_grad():
                    fn(logits, labels, table)
            else:
                torch.autograd.grad(fn(logits, labels, table).sum(), logits)
        return synchronized(run, device)

    runs = {name: runner(IMPLEMENTATIONS[name]) for name in ("fused", "naive")}
    median = interleaved_medians(runs, ROUNDS, warmup=2)
    fused_s, naive_s = median["fused"], median["naive"]
    floor = bytes_floor(logits, labels, with_grad=mode != "forward")
    benchmark.extra_info.update(fused_ms=fused_s * 1e3, naive_ms=naive_s * 1e3, speedup=naive_s / fused_s,
                                fused_GBps=floor / fused_s / 1e9)
    print(f"\n{device} {mode}: fused {fused_s * 1e3:.1f} ms, naive {naive_s * 1e3:.1f} ms, "
          f"speed-up {naive_s / fused_s:.1f}x, fused moves the floor's {floor / 2**20:.0f} MiB at "
          f"{floor / fused_s / 1e9:.1f} GB/s")
    benchmark.pedantic(runs["fused"], rounds=3)


def bytes_floor(logits, labels, *, with_grad: bool) -> int:
    """Bytes that must move at least once: logits read (+ gradients written) + labels read."""
    logit_bytes = sum(x.numel() * x.element_size() for x in logits)
    return logit_bytes * (2 if with_grad else 1) + labels.numel() * labels.element_size()


PEAK_SCRIPT = textwrap.dedent(
    """
    import json, sys, torch
    sys.path.insert(0, {benchmarks!r})
    from peak_memory import peak_bytes, reset_peak
    from test_ops import problem, IMPLEMENTATIONS
    logits, labels, table = problem("cpu")
    gradient_bytes = sum(x.numel() * x.element_size() for x in logits)
    before = reset_peak()
    grads = torch.autograd.grad(IMPLEMENTATIONS[sys.argv[1]](logits, labels, table).sum(), logits)
    after = peak_bytes()
    print(json.dumps({{"extra": after - before, "gradients": gradient_bytes}}))
    """
)


@pytest.mark.parametrize("impl", ["fused", "naive"])
def test_peak_memory_of_a_training_step(impl, tmp_path):
    """Peak resident memory of one CPU training step on top of the inputs, in a fresh process.

    Goal for the fused op: no more than the gradients themselves (the step must return them).
    """
    numbers = run_in_fresh_process(PEAK_SCRIPT, [impl], tmp_path)
    ratio = numbers["extra"] / numbers["gradients"]
    print(f"\n{impl}: peak extra {numbers['extra'] / 2**20:.1f} MiB = {ratio:.2f} x the gradients "
          f"({numbers['gradients'] / 2**20:.1f} MiB)")
    if impl == "fused":
        assert ratio <= 1.05, f"fused step keeps {ratio:.2f}x the gradients' size on top of the inputs"


# ------------------------------------------------------------------------------ tree-min loss
# The same sizes on a tree: part f (0..19) in region f // 4, region 0 under person class 0, the
# other regions under person class 1.
REGION_PERSON = [0, 1, 1, 1, 1]
PART_REGION = [f // 4 for f in range(20)]
TREE_MIN_ROUNDS = 5  # the reference takes seconds per step (20+ s on 2 loaded cores)


def tree_problem(device: str):
    logits, labels, table = problem(device)
    parts = torch.arange(20)
    table[:, :20] = torch.stack([torch.tensor(REGION_PERSON)[parts // 4], parts // 4, parts]).to(device)
    return logits, labels, table


@pytest.mark.parametrize("device", DEVICES)
def test_tree_min_speedup_interleaved(benchmark, device):
    """Fused tree-min loss vs its PyTorch reference (masked min/max over ancestors and descendants),
    forward+backward float32, alternating round by round: the ratio of medians."""
    benchmark.group = f"tree-min speed-up, interleaved {device}"
    logits, labels, table = tree_problem(device)
    parents = [REGION_PERSON, PART_REGION]

    def runner(fn):
        return synchronized(lambda: torch.autograd.grad(fn(logits, labels, table, parents).sum(), logits), device)

    runs = {"fused": runner(ops.tree_min_loss), "reference": runner(ops.reference.tree_min_loss)}
    median = interleaved_medians(runs, TREE_MIN_ROUNDS)
    fused_s, reference_s = median["fused"], median["reference"]
    benchmark.extra_info.update(fused_ms=fused_s * 1e3, reference_ms=reference_s * 1e3, speedup=reference_s / fused_s)
    print(f"\n{device} tree-min forward+backward: fused {fused_s * 1e3:.1f} ms, reference {reference_s * 1e3:.1f} ms, "
          f"speed-up {reference_s / fused_s:.1f}x ({N * H * W / fused_s / 1e6:.2f} M pixels/s fused)")
    benchmark.pedantic(runs["fused"], rounds=3)


def default_run_problem(device: str):
    """The default run's loss inputs: batch 16 of 128 x 128 labels (hierarchy lip), the stacked
    model's logits at 16 x 16 (person, region) and 32 x 32 (part), 10% ignored pixels."""
    g = torch.Generator().manual_seed(2)
    labels = torch.randint(0, 20, (16, 128, 128), generator=g, dtype=torch.uint8)
    labels[torch.rand(16, 128, 128, generator=g) < 0.1] = 255
    logits = [torch.randn(16, c, s, s, generator=g).to(device).requires_grad_(True)
              for c, s in zip((2, 5, 20), (16, 16, 32))]
    return logits, labels.to(device), hierparse.load_hierarchy("lip").label_table().to(device)


@pytest.mark.parametrize("device", DEVICES)
def test_ohem_speedup_interleaved(benchmark, device):
    """The loss of the default run, forward + backward, with OHEM fused in the op, with the Python
    OHEM it replaced (the op without gradient, kthvalue per level, the op again with per-pixel losses
    and a third run in the backward pass), and without OHEM; level weights 'fine'."""
    benchmark.group = f"OHEM, interleaved {device}"
    logits, labels, table = default_run_problem(device)
    options = dict(level_weights=[0.25, 0.5, 1.0])
    python_ohem = functools.partial(ops.reference.ohem_cross_entropy, cross_entropy=ops.multilevel_cross_entropy)
    losses = {"OHEM fused": functools.partial(ops.ohem_cross_entropy, threshold=0.7, min_kept=3000, **options),
              "OHEM Python": functools.partial(python_ohem, threshold=0.7, min_kept=3000, **options),
              "no OHEM": functools.partial(ops.multilevel_cross_entropy, **options)}
    runs = {name: synchronized(lambda fn=fn: torch.autograd.grad(fn(logits, labels, table).sum(), logits), device)
            for name, fn in losses.items()}
    median = interleaved_medians(runs, ROUNDS, warmup=2)
    base = median["no OHEM"]
    benchmark.extra_info.update({f"{name} ms": value * 1e3 for name, value in median.items()})
    benchmark.extra_info.update({f"{name} vs no OHEM": value / base for name, value in median.items()})
    print("\n" + ", ".join(f"{device} {name} {value * 1e3:.1f} ms ({value / base:.2f}x)" for name, value in median.items()))
    benchmark.pedantic(runs["OHEM fused"], rounds=3)
