"""The fused cross-entropy of logits smaller than the labels (bilinear upsampling inside the op)
against F.interpolate + F.cross_entropy, level by level."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_ops import DEVICES, IGNORE, op_and_reference

from hierparse import ops

pytestmark = pytest.mark.skipif(not ops.HAS_EXTENSION, reason="hierparse._C is not built")

# Largest difference allowed, relative to the largest reference value (of the losses, or of each
# level's gradient). Half and bfloat16 store the interpolated logits and their full-resolution
# gradients rounded (as F.interpolate's output and its gradient are), so the two computations
# may round a value differently by one unit in the last place.
RELATIVE = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}


def problem(sizes, n=2, H=37, W=300, *, num_ids=12, ignored=0.1, dtype=torch.float64, label_dtype=torch.uint8,
            seed=0, scale=3.0, device="cpu"):
    """Logits [n, C, h, w] for each (C, h, w) in sizes, raw labels [n, H, W] (ids 0..num_ids-1 and
    some IGNORE) and a [L, 256] table that reaches every class, on `device`."""
    g = torch.Generator().manual_seed(seed)
    table = torch.full((len(sizes), 256), IGNORE, dtype=torch.int64)
    for level, (c, _, _) in enumerate(sizes):
        table[level, :num_ids] = torch.randint(0, c, (num_ids,), generator=g)
        table[level, :min(c, num_ids)] = torch.arange(min(c, num_ids))
    labels = torch.randint(0, num_ids, (n, H, W), generator=g)
    labels[torch.rand(n, H, W, generator=g) < ignored] = IGNORE
    logits = [(torch.randn(n, c, h, w, generator=g, dtype=torch.float64) * scale).to(device, dtype)
              for c, h, w in sizes]
    return logits, labels.to(device, label_dtype), table.to(device)


# A full-size level between two smaller ones of non-integer scale; the third has two units of rows
# (kUnitRows = 16), so the halo of one unit is added into the next; labels [2, 37, 300] span two
# tiles of 256 pixels. MIXED_NARROW: the same at a width of 90, for the larger grids of cases.
MIXED = [(3, 9, 40), (4, 37, 300), (6, 20, 75)]
MIXED_NARROW = [(3, 9, 40), (4, 37, 90), (6, 20, 75)]
DTYPES = {"float64": torch.float64, "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def assert_close_relative(got, want, relative, what):
    # a reference of exactly 0 (a level with one class) leaves the rounding of terms of size 1
    atol = max(relative * want.abs().max().item(), 4 * torch.finfo(want.dtype).eps)
    torch.testing.assert_close(got.to(want.dtype), want, rtol=relative, atol=atol, msg=lambda m: f"{what}: {m}")


def check(logits, labels, table, **options):
    """Losses and gradients (of a random weighting of the losses) against expected_losses."""
    dtype = logits[0].dtype
    leaves, got, refs, want = op_and_reference(logits, labels, table, **options)
    assert_close_relative(got, want, RELATIVE[dtype], "losses")
    weights = torch.rand(want.shape, generator=torch.Generator().manual_seed(9), dtype=want.dtype).to(want.device) + 0.5
    got_grads = torch.autograd.grad((got * weights).sum(), leaves)
    want_grads = torch.autograd.grad((want * weights).sum(), refs)
    for level, (g, r) in enumerate(zip(got_grads, want_grads)):
        assert g.dtype == dtype and g.shape == r.shape, f"level {level}"
        assert_close_relative(g.double(), r.double(), RELATIVE[dtype], f"level {level} gradients")


def with_layout(x, layout):
    if layout == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    if layout == "strided":  # every other column of a wider tensor
        wide = torch.zeros(*x.shape[:3], x.shape[3] * 2, dtype=x.dtype, device=x.device)
        wide[..., ::2] = x
        return wide[..., ::2]
    return x


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("align_corners", [False, True], ids=["half_pixel", "align_corners"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
def test_matches_interpolate_then_cross_entropy(dtype, align_corners, layout, device):
    logits, labels, table = problem(MIXED, dtype=DTYPES[dtype], device=device)
    check([with_layout(x, layout) for x in logits], labels, table, align_corners=align_corners,
          label_smoothing=0.1)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("sizes, H, W", [
    ([(2, 60, 60), (3, 119, 119)], 473, 473),   # the paper's 473 px from stride 8 and 4
    ([(3, 7, 5), (2, 1, 1), (4, 23, 4)], 23, 17),  # odd sizes, a single pixel, one axis at full size
])
def test_non_integer_scales(dtype, align_corners, sizes, H, W, device):
    logits, labels, table = problem(sizes, n=1, H=H, W=W, dtype=dtype, seed=1, device=device)
    check(logits, labels, table, align_corners=align_corners)


OPTION_GRID = list(itertools.product(["mean", "sum", "none"], [0.0, 0.25], [False, True], [False, True],
                                     [False, True]))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reduction,smoothing,use_class_weights,use_level_weights,align_corners", OPTION_GRID)
def test_every_option_combination(reduction, smoothing, use_class_weights, use_level_weights, align_corners, device):
    logits, labels, table = problem(MIXED_NARROW, W=90, seed=2, device=device)
    g = torch.Generator().manual_seed(3)
    class_weights = ([(torch.rand(c, generator=g) + 0.1).to(device) if c else None for c in (3, 0, 6)]
                     if use_class_weights else None)
    level_weights = [0.5, 2.0, 1.5] if use_level_weights else None
    check(logits, labels, table, reduction=reduction, label_smoothing=smoothing, class_weights=class_weights,
          level_weights=level_weights, align_corners=align_corners)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_more_classes_than_one_chunk(reduction, device):
    """37 and 20 classes: the CUDA kernel's work items take 16 classes each (the last chunk partial)."""
    logits, labels, table = problem([(37, 9, 13), (20, 30, 41)], H=37, W=50, num_ids=40, device=device, seed=6)
    g = torch.Generator().manual_seed(7)
    class_weights = [(torch.rand(c, generator=g) + 0.1).to(device) for c in (37, 20)]
    check(logits, labels, table, reduction=reduction, label_smoothing=0.1, class_weights=class_weights)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("label_dtype", [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64])
def test_any_integer_label_dtype(label_dtype, device):
    logits, labels, table = problem(MIXED_NARROW, W=90, ignored=0.0, label_dtype=label_dtype, device=device)
    check(logits, labels, table)


@pytest.mark.parametrize("device", DEVICES)
def test_level_without_valid_pixels_and_all_pixels_ignored(device):
    logits, labels, table = problem([(2, 5, 9), (5, 20, 30)], H=40, W=60, num_ids=6, device=device)
    table[1, :] = IGNORE  # level 1 ignores everything: loss 0 and gradient 0 ("mean" without NaN)
    check(logits, labels, table)
    leaves = [x.requires_grad_(True) for x in logits]
    losses = ops.multilevel_cross_entropy(leaves, labels, table)
    grads = torch.autograd.grad(losses.sum(), leaves)
    assert losses[1].item() == 0.0 and torch.count_nonzero(grads[1]) == 0 and torch.count_nonzero(grads[0]) > 0
    labels.fill_(IGNORE)
    for reduction in ("mean", "sum"):
        assert torch.equal(ops.multilevel_cross_entropy(logits, labels, table, reduction=reduction),
                           torch.zeros(2, dtype=torch.float64, device=device))


@given(
    data=st.data(),
    num_levels=st.integers(1, 3), n=st.integers(1, 2), H=st.integers(1, 40), W=st.integers(1, 70),
    align_corners=st.booleans(), smoothing=st.sampled_from([0.0, 0.3]),
    reduction=st.sampled_from(["mean", "sum", "none"]), ignored=st.sampled_from([0.0, 0.3, 1.0]),
    seed=st.integers(0, 2**16),
)
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_property_random_sizes(data, num_levels, n, H, W, align_corners, smoothing, reduction, ignored, seed):
    sizes = [(data.draw(st.integers(1, 6)), data.draw(st.integers(1, H)), data.draw(st.integers(1, W)))
             for _ in range(num_levels)]
    logits, labels, table = problem(sizes, n=n, H=H, W=W, num_ids=8, ignored=ignored, seed=seed)
    check(logits, labels, table, align_corners=align_corners, label_smoothing=smoothing, reduction=reduction)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_gradcheck_float64(reduction, device):
    logits, labels, table = problem([(2, 2, 3), (3, 3, 5)], n=1, H=4, W=5, num_ids=4, seed=4, device=device)
    weights = [torch.tensor([0.5, 2.0], dtype=torch.float64, device=device),
               torch.tensor([1.0, 0.3, 1.7], dtype=torch.float64, device=device)]

    def fn(*xs):
        return ops.multilevel_cross_entropy(list(xs), labels, table, class_weights=weights, label_smoothing=0.1,
                                            level_weights=[0.7, 1.3], reduction=reduction, align_corners=True)

    assert torch.autograd.gradcheck(fn, [x.requires_grad_(True) for x in logits])


def test_opcheck():
    logits, labels, table = problem([(2, 3, 4), (5, 5, 6)], n=2, H=5, W=6, num_ids=6, dtype=torch.float32)
    packed = torch.rand(7) + 0.5
    for reduction, compute_grad in itertools.product((0, 1, 2), (False, True)):
        xs = [x.clone().requires_grad_(compute_grad) for x in logits]
        torch.library.opcheck(
            torch.ops.hierparse.multilevel_cross_entropy.default,
            (xs, labels, table, packed, [1.0, 0.5], 0.1, IGNORE, reduction, compute_grad, True),
        )
    pixel_weights = torch.rand(2, 2, 5, 6)  # the backward pass of per-pixel losses
    torch.library.opcheck(torch.ops.hierparse.multilevel_cross_entropy.default,
                          (logits, labels, table, packed, [1.0, 0.5], 0.1, IGNORE, 0, True, True, None, pixel_weights))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_torch_compile_fullgraph(reduction, device):
    logits, labels, table = problem([(2, 4, 3), (5, 8, 8)], n=2, H=8, W=8, num_ids=6, dtype=torch.float32,
                                    device=device)
    mask = (torch.rand(2, 2, 8, 8, generator=torch.Generator().manual_seed(5)) < 0.5).to(device)

    def step(xs, labels, table):
        losses = ops.multilevel_cross_entropy(xs, labels, table, label_smoothing=0.1, level_weights=[1.0, 2.0],
                                              reduction=reduction)
        return (losses * mask).sum((1, 2, 3)) if reduction == "none" else losses

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    leaves = [x.clone().requires_grad_(True) for x in logits]
    refs = [x.clone().requires_grad_(True) for x in logits]
    got = compiled(leaves, labels, table)
    want = step(refs, labels, table)
    torch.testing.assert_close(got, want)
    for g, r in zip(torch.autograd.grad(got.sum() * 3, leaves), torch.autograd.grad(want.sum() * 3, refs)):
        assert g.shape == r.shape
        torch.testing.assert_close(g, r)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_deterministic_across_runs_and_thread_counts(dtype, device, assert_same_bits_across_threads):
    # several units per image and two groups of smaller levels, next to a full-size level
    logits, labels, table = problem([(3, 33, 75), (4, 50, 260), (6, 40, 130), (5, 40, 130)], n=2, H=50, W=260,
                                    dtype=dtype, device=device)
    leaves = [x.requires_grad_(True) for x in logits]
    assert_same_bits_across_threads(
        lambda x: ops.multilevel_cross_entropy(x, labels, table, label_smoothing=0.1), leaves)


def test_full_size_levels_are_unchanged_by_smaller_levels_beside_them():
    logits, labels, table = problem(MIXED, dtype=torch.float32)
    full = [1]
    leaves = [x.requires_grad_(True) for x in logits]
    mixed = ops.multilevel_cross_entropy(leaves, labels, table, label_smoothing=0.1)
    alone = ops.multilevel_cross_entropy([leaves[1]], labels, table[full], label_smoothing=0.1)
    assert torch.equal(mixed[1:2], alone)
    assert torch.equal(torch.autograd.grad(mixed[1], leaves[1])[0], torch.autograd.grad(alone[0], leaves[1])[0])


@pytest.mark.parametrize("device", DEVICES)
def test_gradients_have_each_level_s_size_and_layout(device):
    logits, labels, table = problem(MIXED, dtype=torch.float32, device=device)
    leaves = [x.contiguous(memory_format=torch.channels_last).requires_grad_(True) for x in logits]
    _, grads = torch.ops.hierparse.multilevel_cross_entropy(leaves, labels, table, None, [1.0] * 3, 0.0, IGNORE, 1,
                                                             True, False)
    assert [g.shape for g in grads] == [x.shape for x in leaves]
    assert all(g.stride() == x.stride() for g, x in zip(grads, leaves))


@pytest.mark.parametrize("capability", ["default", "avx2", "avx512"])
def test_every_cpu_instruction_set_matches_the_reference(capability):
    """The upsampling kernel is compiled per instruction set with the tile kernel; HIERPARSE_CPU_CAPABILITY
    picks one."""
    env = {**os.environ, "HIERPARSE_CPU_CAPABILITY": capability}
    probe = subprocess.run([sys.executable, "-c", "import hierparse.ops as o; print(o.cpu_capability())"],
                           capture_output=True, text=True, timeout=120, env=env)
    if "is not supported by this CPU" in probe.stderr:
        pytest.skip(f"this CPU or build lacks {capability}")
    assert probe.returncode == 0 and probe.stdout.strip() == capability, probe.stderr
    selection = "(matches_interpolate and contiguous and half_pixel) or deterministic"
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k", selection],
                            capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stdout[-3000:]
    assert " passed" in result.stdout


def test_the_cuda_kernel_s_algorithm_passes_this_file_on_the_cpu():
    """HIERPARSE_CPU_UPSAMPLING=gather runs the CUDA kernel's gather algorithm (csrc/upsampled_ce.h) on
    the CPU: every test here then checks the arithmetic the GPU runs, on machines without one."""
    env = {**os.environ, "HIERPARSE_CPU_UPSAMPLING": "gather"}
    selection = "not every_cpu_instruction_set and not cuda_kernel_s_algorithm and not cuda"
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k", selection],
                            capture_output=True, text=True, timeout=600, env=env, check=False)
    assert result.returncode == 0, result.stdout[-3000:]
    assert " passed" in result.stdout and " failed" not in result.stdout


def test_unknown_cpu_upsampling_algorithm_is_a_clear_error(monkeypatch):
    logits, labels, table = problem([(2, 4, 6)], n=1, H=6, W=7, num_ids=3)
    monkeypatch.setenv("HIERPARSE_CPU_UPSAMPLING", "tiles")
    bad(r"HIERPARSE_CPU_UPSAMPLING=tiles is not an algorithm; use units \(the default\) or gather", logits, labels,
        table)


# ---------------------------------------------------------------------- bad input
def bad(match, logits, labels, table, **options):
    with pytest.raises(ValueError, match=match):
        ops.multilevel_cross_entropy(logits, labels, table, **options)


def test_logits_larger_than_the_labels_or_of_another_batch():
    logits, labels, table = problem([(2, 4, 6), (3, 6, 7)], H=6, W=7, num_ids=3)
    expected = r"expected \[N, C, h, w\] with the labels' N and 1 <= h <= H, 1 <= w <= W"
    bad(r"level 1 logits are \[2, 3, 7, 7\] but labels are \[2, 6, 7\] \(" + expected,
        [logits[0], torch.zeros(2, 3, 7, 7, dtype=torch.float64)], labels, table)
    bad(r"level 0 logits are \[2, 2, 4, 8\] but labels are \[2, 6, 7\]",
        [torch.zeros(2, 2, 4, 8, dtype=torch.float64), logits[1]], labels, table)
    bad(r"level 0 logits are \[1, 2, 4, 6\] but labels are \[2, 6, 7\]", [logits[0][:1], logits[1]], labels, table)
    bad(r"level 1 logits are \[2, 3, 0, 7\]", [logits[0], logits[1][:, :, :0]], labels, table)
    table[0, 2] = 2  # level 0 has 2 classes
    bad("labels contain raw id 2, which the table maps to 2 at level 0, but level 0 logits have 2 classes", logits, labels,
        table)


def test_grad_weights_are_checked():
    logits, labels, table = problem([(2, 4, 6)], n=1, H=6, W=7, num_ids=3)
    op = torch.ops.hierparse.multilevel_cross_entropy
    with pytest.raises(ValueError, match=r'grad_weights are for reduction "none" only'):
        op(logits, labels, table, None, [1.0], 0.0, IGNORE, 1, True, False, None, torch.ones(1))
    with pytest.raises(ValueError, match=r"grad_weights must have the losses' shape \[1, 1, 6, 7\], got \[1, 6, 7\]"):
        op(logits, labels, table, None, [1.0], 0.0, IGNORE, 0, True, False, None, torch.ones(1, 6, 7))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_and_cpu_tensors_mixed():
    logits, labels, table = problem([(2, 4, 6)], n=1, H=6, W=7, num_ids=3)
    bad("labels are on cuda:0 but level 0 logits are on cpu", logits, labels.cuda(), table)
    bad("level 1 logits are on cpu but level 0 logits are on cuda:0",
        [logits[0].cuda(), logits[0]], labels.cuda(), table.cuda().repeat(2, 1))
