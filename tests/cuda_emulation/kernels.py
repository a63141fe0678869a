"""The CUDA kernels of csrc/cuda, run on the CPU by the emulation (torch.ops.hierparse_emulated), against
the CPU op (torch.ops.hierparse) on the same inputs.

Not collected by `pytest tests`: tests/test_cuda_emulation.py runs this file in a subprocess, once per
build (plain, ThreadSanitizer, AddressSanitizer: HIERPARSE_EMULATION), with the CPU op on its
portable kernel and the gather algorithm for upsampled levels (HIERPARSE_CPU_CAPABILITY=default,
HIERPARSE_CPU_UPSAMPLING=gather), which is the CUDA kernels' arithmetic: so per-pixel losses,
gradients and decoded maps must be bitwise equal; "mean" and "sum" losses, summed in another order,
within 1e-6 relative. Shapes cover a partial block, several blocks and grid-stride rounds (the
emulated device holds HIERPARSE_EMULATION_BLOCKS blocks at once), more levels than one launch takes,
more classes than one chunk of the gather kernel, every logits and label dtype the CUDA path takes.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))
import cuda_emulation  # noqa: E402

import hierparse.ops  # noqa: E402,F401  (loads torch.ops.hierparse)
from hierparse import load_hierarchy  # noqa: E402
from hierparse.inference import ancestor_table  # noqa: E402

VARIANT = os.environ.get("HIERPARSE_EMULATION", "plain")
cuda_emulation.load(VARIANT)
NATIVE, EMULATED = torch.ops.hierparse, torch.ops.hierparse_emulated
IGNORE = 255
FLOATS = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
LABEL_DTYPES = [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64]
REDUCTIONS = {"none": 0, "mean": 1, "sum": 2}
# pixels N*H*W: a partial block (63), two full blocks (512), grid-stride rounds (2 x 33 x 41 = 2706)
SHAPES = [(1, 7, 9), (1, 16, 32), (2, 33, 41)]
# The sanitized builds (several times slower to build and run) hold the kernels for float32 and
# float64 logits (both compute types) and uint8 and int64 labels only (HIERPARSE_EMULATION_FEW_TYPES),
# and take the shape grids on the grid-stride shape; everything else in full.
SANITIZED = VARIANT != "plain"
GRID_FLOATS = FLOATS[:2] if SANITIZED else FLOATS
GRID_SHAPES = SHAPES[2:] if SANITIZED else SHAPES
GRID_LABEL_DTYPES = [torch.uint8, torch.int64] if SANITIZED else LABEL_DTYPES
CLASSES = [2, 5, 20]  # 20 > 16: two class chunks in the gather kernel
LIP = load_hierarchy("lip")


def test_the_emulated_build_is_the_one_asked_for():
    assert os.environ.get("HIERPARSE_CPU_CAPABILITY") == "default"
    assert os.environ.get("HIERPARSE_CPU_UPSAMPLING") == "gather"
    assert hierparse.ops.cpu_capability() == "default"


def tree_table(classes=CLASSES, ids=20, seed=0) -> tuple[torch.Tensor, list[list[int]]]:
    """A random class tree over `classes` per level ([L, 256] table from raw ids 0..ids-1 (the finest
    classes, then repeats), 255 ignored; the parents of levels 1..L-1)."""
    g = torch.Generator().manual_seed(seed)
    parents = []
    for coarse, fine in zip(classes, classes[1:]):  # every coarse class keeps at least one child
        parents.append(torch.cat([torch.arange(coarse), torch.randint(0, coarse, (fine - coarse,), generator=g)])
                       [torch.randperm(fine, generator=g)].tolist())
    table = torch.full((len(classes), 256), IGNORE, dtype=torch.int64)
    table[-1, :ids] = torch.arange(ids) % classes[-1]
    for level in range(len(classes) - 2, -1, -1):
        table[level, :ids] = torch.tensor(parents[level])[table[level + 1, :ids]]
    return table, parents


def problem(shape, classes=CLASSES, dtype=torch.float32, label_dtype=torch.uint8, sizes=None, seed=0, ignored=0.1):
    """(logits, labels, table, parents): levels at the labels' size unless `sizes` gives theirs."""
    n, h, w = shape
    g = torch.Generator().manual_seed(seed)
    table, parents = tree_table(classes, seed=seed)
    labels = torch.randint(0, 20, (n, h, w), generator=g)
    labels[torch.rand(n, h, w, generator=g) < ignored] = 21  # ignored at every level (fits int8)
    sizes = sizes or [(h, w)] * len(classes)
    logits = [(torch.randn(n, c, *size, generator=g) * 3).to(dtype) for c, size in zip(classes, sizes)]
    return logits, labels.to(label_dtype), table, parents


def assert_same_outputs(native, emulated, reduction):
    """Per-pixel losses and gradients bitwise; loss sums within 1e-6 relative."""
    (native_losses, native_grads), (emulated_losses, emulated_grads) = native, emulated
    assert emulated_losses.dtype == native_losses.dtype and emulated_losses.shape == native_losses.shape
    if reduction == "none":
        torch.testing.assert_close(emulated_losses, native_losses, rtol=0, atol=0, equal_nan=True)
    else:
        torch.testing.assert_close(emulated_losses, native_losses, rtol=1e-6, atol=1e-12, equal_nan=True)
    assert len(emulated_grads) == len(native_grads)
    for level, (got, want) in enumerate(zip(emulated_grads, native_grads)):
        assert got.shape == want.shape and got.dtype == want.dtype, f"level {level}"
        torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True, msg=lambda m: f"level {level}: {m}")


def cross_entropy(logits, labels, table, *, class_weights=None, level_weights=None, smoothing=0.0,
                  reduction="mean", compute_grad=True, align_corners=False, grad_weights=None, set_members=None):
    args = (logits, labels, table.to(torch.int64), class_weights, level_weights or [1.0] * len(logits), smoothing,
            IGNORE, REDUCTIONS[reduction], compute_grad, align_corners, set_members, grad_weights)
    native = NATIVE.multilevel_cross_entropy(*args)
    assert_same_outputs(native, EMULATED.multilevel_cross_entropy(*args), reduction)
    return native


def tree_min(logits, labels, table, parents, *, gamma=0.0, level_weights=None, reduction="mean", compute_grad=True,
             grad_weights=None, set_members=None):
    args = (logits, labels, table, [p for level in parents for p in level], level_weights or [1.0] * len(logits),
            gamma, IGNORE, REDUCTIONS[reduction], compute_grad, set_members, grad_weights)
    native = NATIVE.tree_min_loss(*args)
    assert_same_outputs(native, EMULATED.tree_min_loss(*args), reduction)
    return native


# ------------------------------------------------------------------ multilevel cross-entropy


@pytest.mark.parametrize("shape", GRID_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", GRID_FLOATS, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_every_dtype_shape_and_reduction(shape, dtype, reduction):
    logits, labels, table, _ = problem(shape, dtype=dtype)
    cross_entropy(logits, labels, table, reduction=reduction)


@pytest.mark.parametrize("label_dtype", GRID_LABEL_DTYPES, ids=str)
def test_cross_entropy_every_label_dtype(label_dtype):
    logits, labels, table, _ = problem(SHAPES[2], label_dtype=label_dtype)
    cross_entropy(logits, labels, table)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
def test_cross_entropy_options_and_layouts(smoothing, weighted, layout):
    logits, labels, table, _ = problem(SHAPES[2], seed=1)
    if layout == "channels_last":
        logits = [x.contiguous(memory_format=torch.channels_last) for x in logits]
    elif layout == "strided":
        logits = [torch.cat([x, x], dim=3)[..., ::2] for x in logits]
        labels = labels.transpose(1, 2).contiguous().transpose(1, 2)
    class_weights = torch.rand(sum(CLASSES), generator=torch.Generator().manual_seed(2)) + 0.5 if weighted else None
    for reduction in REDUCTIONS:
        cross_entropy(logits, labels, table, class_weights=class_weights, level_weights=[0.5, 1.0, 2.0],
                      smoothing=smoothing, reduction=reduction)
    cross_entropy(logits, labels, table, smoothing=smoothing, compute_grad=False)


def test_cross_entropy_more_levels_than_one_launch_takes():
    classes = [2, 3, 4, 5, 6, 7, 8, 9, 10, 12]  # 10 levels: launches of 8 and 2
    logits, labels, table, _ = problem(SHAPES[2], classes=classes)
    for reduction in REDUCTIONS:
        cross_entropy(logits, labels, table, reduction=reduction)


@pytest.mark.parametrize("dtype", GRID_FLOATS, ids=str)
@pytest.mark.parametrize("align_corners", [False, True])
def test_cross_entropy_upsampled_levels(dtype, align_corners):
    """Levels smaller than the labels: the gather kernel, its 20 classes in two chunks."""
    logits, labels, table, _ = problem((2, 29, 37), dtype=dtype, sizes=[(29, 37), (8, 11), (15, 19)])
    for reduction in ("mean", "sum"):
        cross_entropy(logits, labels, table, reduction=reduction, align_corners=align_corners)
    losses, _ = cross_entropy(logits, labels, table, reduction="none", compute_grad=False, align_corners=align_corners)
    weights = torch.randn(losses.shape, generator=torch.Generator().manual_seed(3)).to(losses.dtype)
    cross_entropy(logits, labels, table, reduction="none", align_corners=align_corners, grad_weights=weights)


@pytest.mark.parametrize("align_corners", [False, True])
def test_cross_entropy_upsampled_from_one_pixel_and_one_row(align_corners):
    logits, labels, table, _ = problem((1, 13, 17), sizes=[(1, 1), (1, 17), (13, 1)])
    for reduction in ("mean", "sum"):
        cross_entropy(logits, labels, table, reduction=reduction, align_corners=align_corners)


def test_cross_entropy_label_table_beyond_the_shared_histogram():
    """More raw ids than the label pre-pass keeps in shared memory (8192): global atomics."""
    logits, _, _, _ = problem(SHAPES[2])
    g = torch.Generator().manual_seed(4)
    table = torch.full((3, 9000), IGNORE, dtype=torch.int64)
    table[:, 8990:] = torch.stack([torch.randint(0, c, (10,), generator=g) for c in CLASSES])
    labels = torch.randint(8990, 9000, SHAPES[2], generator=g, dtype=torch.int64)
    cross_entropy(logits, labels, table)


def test_cross_entropy_offsets_past_two_to_the_31():
    """Logits and labels whose element offsets pass 2^31 (strided views of large, untouched
    storage: only the viewed pages are ever written): the kernels index in 64 bits."""
    big = 2**31 + 64
    n, c, h, w = 2, 3, 5, 7
    storage = torch.empty(big + n * c * h * w, dtype=torch.float32 if SANITIZED else torch.float16)
    logits = storage.as_strided((n, c, h, w), (big, h * w, w, 1))
    logits.copy_(torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(5)))
    label_storage = torch.empty(big + h * w, dtype=torch.uint8)
    labels = label_storage.as_strided((n, h, w), (big, w, 1))
    labels.copy_(torch.randint(0, 3, (n, h, w), generator=torch.Generator().manual_seed(6)))
    table = torch.tensor([[0, 1, 2]], dtype=torch.int64)
    for reduction in REDUCTIONS:
        cross_entropy([logits], labels, table, reduction=reduction)


def test_cross_entropy_empty_and_all_ignored():
    logits, labels, table, _ = problem((0, 4, 5))
    for reduction in REDUCTIONS:
        cross_entropy(logits, labels, table, reduction=reduction)
    logits, labels, table, _ = problem(SHAPES[0])
    cross_entropy(logits, torch.full_like(labels, IGNORE), table)


def test_cross_entropy_errors_match_the_cpu_op():
    logits, labels, table, _ = problem(SHAPES[1])
    labels[0, 3, 4] = 250  # an id the table does not have: ValueError naming it, before any kernel runs
    short = table[:, :240]
    with pytest.raises(ValueError) as native:
        NATIVE.multilevel_cross_entropy(logits, labels, short, None, [1.0] * 3, 0.0, IGNORE, 1, True)
    with pytest.raises(ValueError) as emulated:
        EMULATED.multilevel_cross_entropy(logits, labels, short, None, [1.0] * 3, 0.0, IGNORE, 1, True)
    assert str(emulated.value).splitlines()[0] == str(native.value).splitlines()[0]


# ------------------------------------------------------------------ class sets (coarse labels)


def coarse_problem(dtype, sizes, seed=0, member_weights=False):
    """LIP's tree: parts 0-19, groups 20-24 (class sets at the finer levels), ignored pixels; with
    member_weights, each member of a set weighs 0.5 to 2 (as coarse_labels balanced gives them)."""
    g = torch.Generator().manual_seed(seed)
    n, h, w = 2, 21, 26
    labels = torch.randint(0, 25, (n, h, w), generator=g, dtype=torch.uint8)
    labels[torch.rand(n, h, w, generator=g) < 0.1] = IGNORE
    logits = [(torch.randn(n, c, *size, generator=g) * 3).to(dtype) for c, size in zip(LIP.num_classes, sizes)]
    members = LIP.set_members()
    if member_weights:
        members = members * (torch.rand(members.shape, generator=g) * 1.5 + 0.5)
    return logits, labels, LIP.label_table(), members


@pytest.mark.parametrize("dtype", GRID_FLOATS, ids=str)
@pytest.mark.parametrize("upsampled", [False, True], ids=["full_size", "upsampled"])
@pytest.mark.parametrize("member_weights", [False, True], ids=["members", "weighted_members"])
def test_cross_entropy_class_sets(dtype, upsampled, member_weights):
    """Coarse labels: the marginal likelihood over a set's members, in the main and the gather kernel."""
    sizes = [(21, 26), (9, 11), (21, 26)] if upsampled else [(21, 26)] * 3
    logits, labels, table, members = coarse_problem(dtype, sizes, member_weights=member_weights)
    weights = torch.rand(sum(LIP.num_classes), generator=torch.Generator().manual_seed(5)) + 0.5
    for reduction in REDUCTIONS:
        cross_entropy(logits, labels, table, reduction=reduction, set_members=members)
    cross_entropy(logits, labels, table, class_weights=weights, smoothing=0.1, level_weights=[0.5, 1.0, 2.0],
                  set_members=members)
    cross_entropy(logits, labels, table, set_members=members, compute_grad=False)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_tree_min_class_sets(reduction):
    """Coarse labels in the tree-min loss: a set's members carry no term, the nodes outside it are negatives."""
    logits, labels, table, members = coarse_problem(torch.float32, [(21, 26)] * 3)
    parents = [LIP.parents(level) for level in (1, 2)]
    tree_min(logits, labels, table, parents, gamma=2.0, level_weights=[0.5, 1.0, 2.0], reduction=reduction,
             set_members=members)


def test_cross_entropy_class_sets_at_infinite_logits():
    """A set whose members are all -inf (loss +inf) or one of them +inf, as torch.logsumexp gives them."""
    logits, labels, table, members = coarse_problem(torch.float32, [(21, 26)] * 3)
    logits[2][0, :4] = -float("inf")  # Head's four parts (raw id 21)
    logits[2][1, 5] = float("inf")
    cross_entropy(logits, labels, table, reduction="none", set_members=members)


# ------------------------------------------------------------------ hard-pixel mining (OHEM)

# (threshold, min_kept): the threshold is the cut, the floor is found (radix select), only the floor,
# every valid pixel (min_kept past the count, and past int64 when multiplied by N)
OHEM_SELECTIONS = [(0.7, 3), (0.02, 40), (1.0, 0), (0.3, 10_000), (0.5, 2**62)]


def ohem(logits, labels, table, *, threshold, min_kept, class_weights=None, level_weights=None, smoothing=0.0,
         compute_grad=True, align_corners=False, set_members=None):
    """Losses (they come from the same per-pixel losses and kept pixels) and gradients bitwise."""
    args = (logits, labels, table.to(torch.int64), class_weights, level_weights or [1.0] * len(logits), smoothing,
            IGNORE, compute_grad, align_corners, set_members, threshold, min_kept)
    native = NATIVE.multilevel_ohem_cross_entropy(*args)
    assert_same_outputs(native, EMULATED.multilevel_ohem_cross_entropy(*args), "none")
    return native


@pytest.mark.parametrize("shape", GRID_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", GRID_FLOATS, ids=str)
@pytest.mark.parametrize("threshold, min_kept", OHEM_SELECTIONS)
def test_ohem_every_dtype_shape_and_selection(shape, dtype, threshold, min_kept):
    logits, labels, table, _ = problem(shape, dtype=dtype)
    losses, _ = ohem(logits, labels, table, threshold=threshold, min_kept=min_kept, level_weights=[0.25, 0.5, 1.0])
    assert (losses > 0).all()


@pytest.mark.parametrize("label_dtype", GRID_LABEL_DTYPES, ids=str)
def test_ohem_every_label_dtype(label_dtype):
    logits, labels, table, _ = problem(SHAPES[2], label_dtype=label_dtype)
    ohem(logits, labels, table, threshold=0.05, min_kept=30)


@pytest.mark.parametrize("align_corners", [False, True])
def test_ohem_upsampled_levels_weights_and_smoothing(align_corners):
    logits, labels, table, _ = problem(SHAPES[2], sizes=[(1, 1), (9, 11), (33, 41)])
    weights = torch.rand(27, generator=torch.Generator().manual_seed(3)) + 0.5
    ohem(logits, labels, table, threshold=0.1, min_kept=50, class_weights=weights, smoothing=0.1,
         align_corners=align_corners)
    ohem(logits, labels, table, threshold=0.1, min_kept=50, compute_grad=False)


def test_ohem_ties_at_the_floor():
    """Logits of two values: a few distinct probabilities, so the floor's digits are shared by many pixels."""
    logits, labels, table, _ = problem(SHAPES[2], ignored=0.0)
    logits = [torch.randint_like(x, 0, 2) for x in logits]
    for threshold, min_kept in ((0.01, 40), (0.3, 200)):
        ohem(logits, labels, table, threshold=threshold, min_kept=min_kept)


def test_ohem_empty_all_ignored_and_a_level_without_valid_pixels():
    logits, labels, table, _ = problem((0, 4, 5))
    ohem(logits, labels, table, threshold=0.7, min_kept=3)
    logits, labels, table, _ = problem(SHAPES[1])
    losses, _ = ohem(logits, torch.full_like(labels, IGNORE), table, threshold=0.7, min_kept=3)
    assert not losses.any()
    table[1] = IGNORE
    losses, grads = ohem(logits, labels, table, threshold=0.7, min_kept=3)
    assert losses[1] == 0 and not grads[1].any() and losses[0] > 0


# ------------------------------------------------------------------ tree-min loss


@pytest.mark.parametrize("shape", GRID_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", GRID_FLOATS, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_tree_min_every_dtype_shape_and_reduction(shape, dtype, reduction):
    logits, labels, table, parents = problem(shape, dtype=dtype)
    tree_min(logits, labels, table, parents, reduction=reduction)


@pytest.mark.parametrize("label_dtype", GRID_LABEL_DTYPES, ids=str)
def test_tree_min_every_label_dtype(label_dtype):
    logits, labels, table, parents = problem(SHAPES[2], label_dtype=label_dtype)
    tree_min(logits, labels, table, parents)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_tree_min_focal_weighted_and_grad_weights(reduction):
    logits, labels, table, parents = problem(SHAPES[2], seed=7)
    losses, _ = tree_min(logits, labels, table, parents, gamma=2.0, level_weights=[0.5, 1.0, 2.0],
                         reduction=reduction, compute_grad=False)
    weights = torch.randn(losses.shape, generator=torch.Generator().manual_seed(8)).to(losses.dtype)
    tree_min(logits, labels, table, parents, gamma=2.0, level_weights=[0.5, 1.0, 2.0], reduction=reduction,
             grad_weights=weights)


def test_tree_min_on_lip_and_every_scratch_size():
    """The LIP tree, and trees for each size of the per-thread scratch (32, 64 and 256 nodes)."""
    logits, labels, table, parents = problem(SHAPES[2], classes=LIP.num_classes)
    labels = labels.clamp(max=19)
    tree_min(logits, labels, LIP.label_table(), [LIP.parents(level) for level in range(1, LIP.num_levels)])
    for classes in ([2, 5, 25], [3, 10, 40, 64], [2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 20]):
        logits, labels, table, parents = problem(SHAPES[1], classes=classes)
        tree_min(logits, labels, table, parents, reduction="sum")


def test_tree_min_bounds_of_the_cuda_kernel():
    for classes, message in (([2, 5, 250], "the class tree has 257 nodes"), ([2] * 17, "got 17 levels")):
        logits, labels, table, parents = problem(SHAPES[0], classes=classes)
        args = (logits, labels, table, [p for level in parents for p in level], [1.0] * len(classes), 0.0, IGNORE, 1,
                True, None, None)
        NATIVE.tree_min_loss(*args)  # the CPU op has no such bound
        with pytest.raises(NotImplementedError, match=message):
            EMULATED.tree_min_loss(*args)


def test_tree_min_empty_and_all_ignored():
    logits, labels, table, parents = problem((0, 4, 5))
    for reduction in REDUCTIONS:
        tree_min(logits, labels, table, parents, reduction=reduction)
    logits, labels, table, parents = problem(SHAPES[0])
    tree_min(logits, torch.full_like(labels, IGNORE), table, parents)


# ------------------------------------------------------------------ fused decode

DECODE_CASES = [  # logit sizes per level, output size, align_corners, covered
    ([(8, 7), (8, 7), (15, 13)], (37, 53), False, None),
    ([(9, 11)] * 3, (64, 64), True, None),
    ([(12, 12)] * 3, (41, 35), False, (10 / 12, 9 / 12)),  # an image on 10x9 of a 12x12 canvas
]


@pytest.mark.parametrize("dtype", GRID_FLOATS, ids=str)
@pytest.mark.parametrize("mode", [0, 1, 2])
@pytest.mark.parametrize("case", range(len(DECODE_CASES)))
def test_decode_every_mode_dtype_and_canvas(dtype, mode, case):
    sizes, size, align_corners, covered = DECODE_CASES[case]
    g = torch.Generator().manual_seed(10 + case)
    logits = [(torch.randn(2, c, *s, generator=g) * 3).to(dtype) for c, s in zip(LIP.num_classes, sizes)]
    for levels in (logits, logits[-1:]):  # a stacked model and a flat one
        args = (levels, ancestor_table(LIP), list(size), mode, align_corners, covered)
        native, emulated = NATIVE.upsample_decode(*args), EMULATED.upsample_decode(*args)
        assert len(native) == len(emulated)
        for want, got in zip(native, emulated):
            assert got.dtype == want.dtype and torch.equal(got, want)


def test_decode_more_than_256_classes_and_empty():
    g = torch.Generator().manual_seed(12)
    logits = [torch.randn(1, 300, 6, 5, generator=g)]
    ancestors = torch.arange(300).unsqueeze(0)
    args = (logits, ancestors, [23, 19], 0, False, None)
    (want,), (got,) = NATIVE.upsample_decode(*args), EMULATED.upsample_decode(*args)
    assert got.dtype == want.dtype == torch.int64 and torch.equal(got, want)
    empty = (logits, ancestors, [0, 19], 0, False, None)
    assert EMULATED.upsample_decode(*empty)[0].shape == NATIVE.upsample_decode(*empty)[0].shape


@pytest.mark.parametrize("threshold, min_kept", OHEM_SELECTIONS[:2])
def test_ohem_class_sets(threshold, min_kept):
    """OHEM scores a set pixel by its members' summed probability."""
    logits, labels, table, members = coarse_problem(torch.float32, [(21, 26), (9, 11), (21, 26)])
    ohem(logits, labels, table, threshold=threshold, min_kept=min_kept, set_members=members)
