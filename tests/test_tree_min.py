"""The fused tree-min loss (HSSN) against its pure-PyTorch reference and a hand computation."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import hierparse
from hierparse import ops

pytestmark = pytest.mark.skipif(not ops.HAS_EXTENSION, reason="hierparse._C is not built")

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
IGNORE = 255
TOLERANCE = {torch.float64: (1e-12, 1e-12), torch.float32: (1e-5, 1e-6)}  # (relative, absolute gradient)
# A hand-made 3-level tree: 2 -> 3 -> 5 classes, raw ids 0..4 are the level-2 classes; raw id 5 is
# ignored at level 2 only (so the pixel is invalid), 255 everywhere.
SMALL_PARENTS = [[0, 0, 1], [0, 1, 1, 2, 2]]


def small_table() -> torch.Tensor:
    table = torch.full((3, 256), IGNORE, dtype=torch.int64)
    table[2, :5] = torch.arange(5)
    table[1, :5] = torch.tensor(SMALL_PARENTS[1])
    table[0, :5] = torch.tensor(SMALL_PARENTS[0])[table[1, :5]]
    table[:2, 5] = 0
    return table


def problem(tree, n=2, h=5, w=7, *, dtype=torch.float64, label_dtype=torch.uint8, ignored=0.15, seed=0, device="cpu"):
    """(logits, labels, table, parents) for the `lip` hierarchy or the small tree, on `device`."""
    g = torch.Generator().manual_seed(seed)
    if tree == "lip":
        hierarchy = hierparse.load_hierarchy("lip")
        classes, table = hierarchy.num_classes, hierarchy.label_table()
        parents = [hierarchy.parents(level) for level in range(1, hierarchy.num_levels)]
        labels = torch.randint(0, 20, (n, h, w), generator=g)
    else:
        classes, table, parents = [2, 3, 5], small_table(), SMALL_PARENTS
        labels = torch.randint(0, 6, (n, h, w), generator=g)
    labels[torch.rand(n, h, w, generator=g) < ignored] = IGNORE
    logits = [(torch.randn(n, c, h, w, generator=g) * 3).to(device, dtype) for c in classes]
    return logits, labels.to(device, label_dtype), table.to(device), parents


def check_against_reference(logits, labels, table, parents, **options):
    dtype = logits[0].dtype
    leaves = [x.detach().clone().requires_grad_(True) for x in logits]
    refs = [x.detach().clone().requires_grad_(True) for x in logits]
    got = ops.tree_min_loss(leaves, labels, table, parents, **options)
    want = ops.reference.tree_min_loss(refs, labels, table, parents, **options)
    rtol, grad_atol = TOLERANCE[dtype]
    assert got.dtype == want.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    torch.testing.assert_close(got, want, rtol=rtol, atol=rtol * max(1.0, want.abs().max().item()))
    weights = torch.randn_like(want)
    objectives = (lambda losses: losses.sum(),  # the fused gradient
                  lambda losses: 3 * losses.sum(),  # the same, scaled (a uniform incoming gradient)
                  lambda losses: (losses * weights).sum())  # the rerun
    for objective in objectives:
        got_grads = torch.autograd.grad(objective(got), leaves, retain_graph=True)
        want_grads = torch.autograd.grad(objective(want), refs, retain_graph=True)
        for g, r in zip(got_grads, want_grads):
            assert g.dtype == dtype and g.shape == r.shape
            torch.testing.assert_close(g, r, rtol=rtol, atol=grad_atol * max(1.0, r.abs().max().item()))


class OpCalls(TorchDispatchMode):
    """Counts the calls of the fused tree-min op."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls += func is torch.ops.hierparse.tree_min_loss.default
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_a_uniform_incoming_gradient_reuses_the_forward_gradient(device, reduction):
    """A scaled sum (as a GradScaler gives it) scales the forward's gradient on any device, with no
    second kernel run and no device sync; any other incoming gradient runs the kernel again."""
    logits, labels, table, parents = problem("small", device=device)
    leaves = [x.requires_grad_(True) for x in logits]
    losses = ops.tree_min_loss(leaves, labels, table, parents, reduction=reduction)
    fused = torch.autograd.grad(losses.sum(), leaves, retain_graph=True)
    objectives = {0: lambda: 1024 * losses.sum(),  # d/dlosses: 1024 expanded, one element in memory
                  1: lambda: (losses * torch.full_like(losses, 1024)).sum()}  # the same values, materialised
    for reruns, objective in objectives.items():
        with OpCalls() as calls:
            grads = torch.autograd.grad(objective(), leaves, retain_graph=True)
        assert calls.calls == reruns
        for got, want in zip(grads, fused):
            torch.testing.assert_close(got, 1024 * want, rtol=1e-12, atol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("tree", ["lip", "small"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("focal_gamma,level_weights", [(0.0, None), (2.0, [0.5, 1.0, 2.0])])
def test_matches_reference(device, tree, dtype, reduction, focal_gamma, level_weights):
    logits, labels, table, parents = problem(tree, dtype=dtype, device=device)
    check_against_reference(logits, labels, table, parents, reduction=reduction, focal_gamma=focal_gamma,
                            level_weights=level_weights)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("label_dtype", [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64])
def test_any_integer_label_dtype(device, label_dtype):
    ignored = 0.0 if label_dtype == torch.int8 else 0.15  # int8 cannot hold the ignored id 255
    logits, labels, table, parents = problem("lip", label_dtype=label_dtype, ignored=ignored, seed=1, device=device)
    check_against_reference(logits, labels, table, parents, focal_gamma=2.0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["channels_last", "strided"])
def test_non_contiguous_logits(device, layout):
    logits, labels, table, parents = problem("lip", h=6, w=8, seed=2, device=device)
    if layout == "channels_last":
        logits = [x.contiguous(memory_format=torch.channels_last) for x in logits]
    else:
        logits = [torch.cat([x, x], 3)[..., ::2] for x in logits]  # every other column of a wider tensor
    assert not any(x.is_contiguous() for x in logits)
    for reduction in ("mean", "none"):
        check_against_reference(logits, labels, table, parents, reduction=reduction)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_logits(device, dtype):
    logits, labels, table, parents = problem("lip", dtype=dtype, seed=3, device=device)
    got = ops.tree_min_loss(logits, labels, table, parents, reduction="sum")
    want = ops.reference.tree_min_loss([x.float() for x in logits], labels, table, parents, reduction="sum")
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-3)


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("gamma", [0.0, 2.0])
def test_single_pixel_by_hand(device, gamma):
    # Tree: A -> {a1, a2}, B -> {b1}; the pixel is a2, so A and a2 are positive, B, a1, b1 negative.
    table = torch.tensor([[0, 0, 1], [0, 1, 2]], device=device)
    x_a, x_b, x_a1, x_a2, x_b1 = 0.2, -0.5, 2.0, 0.9, 0.4
    logits = [torch.tensor([x_a, x_b], dtype=torch.float64, device=device).view(1, 2, 1, 1).requires_grad_(True),
              torch.tensor([x_a1, x_a2, x_b1], dtype=torch.float64, device=device).view(1, 3, 1, 1)
              .requires_grad_(True)]
    labels = torch.tensor([[[1]]], dtype=torch.uint8, device=device)

    def positive(m):  # -(1 - s)^g log(s) of s = sigmoid(min logit)
        return -((1 - sigmoid(m)) ** gamma) * math.log(sigmoid(m))

    def negative(m):  # -s^g log(1 - s) of s = sigmoid(max logit)
        return -(sigmoid(m) ** gamma) * math.log(1 - sigmoid(m))

    # A: min(A) = A; B: max(B, b1) = b1; a1: a1; a2: min(A, a2) = A; b1: b1.
    expected = [positive(x_a) + negative(x_b1), negative(x_a1) + positive(x_a) + negative(x_b1)]
    losses = ops.tree_min_loss(logits, labels, table, [[0, 0, 1]], focal_gamma=gamma, reduction="sum")
    assert losses.tolist() == pytest.approx(expected, rel=1e-12)

    def d_positive(m):  # d/dx of the positive term at its argmin logit x = m
        s = sigmoid(m)
        return -((1 - s) ** gamma) * (gamma * s * math.log1p(math.exp(-m)) + 1 - s)

    def d_negative(m):
        s = sigmoid(m)
        return s ** gamma * (gamma * (1 - s) * math.log1p(math.exp(m)) + s)

    grads = torch.autograd.grad(losses.sum(), logits)
    assert grads[0].flatten().tolist() == pytest.approx([2 * d_positive(x_a), 0.0], rel=1e-12, abs=1e-15)
    assert grads[1].flatten().tolist() == pytest.approx([d_negative(x_a1), 0.0, 2 * d_negative(x_b1)], rel=1e-12,
                                                        abs=1e-15)


@pytest.mark.parametrize("device", DEVICES)
def test_all_pixels_ignored_give_zero_and_zero_gradient(device):
    logits, labels, table, parents = problem("small", device=device)
    labels[..., ::2] = 5  # ignored at level 2 only
    labels[..., 1::2] = IGNORE
    leaves = [x.requires_grad_(True) for x in logits]
    for reduction in ("mean", "sum", "none"):
        losses = ops.tree_min_loss(leaves, labels, table, parents, focal_gamma=2.0, reduction=reduction)
        assert torch.count_nonzero(losses) == 0 and torch.isfinite(losses).all()
        grads = torch.autograd.grad(losses.sum(), leaves)
        assert all(torch.count_nonzero(g) == 0 for g in grads)


@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck_float64(device):
    logits, labels, table, parents = problem("small", n=1, h=2, w=2, ignored=0.25, seed=4, device=device)
    logits = [x.requires_grad_(True) for x in logits]
    for reduction in ("mean", "sum", "none"):
        def fn(*xs):
            return ops.tree_min_loss(list(xs), labels, table, parents, focal_gamma=2.0, level_weights=[0.7, 1.3, 0.4],
                                     reduction=reduction)

        assert torch.autograd.gradcheck(fn, logits)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    logits, labels, table, parents = problem("small", n=1, h=3, w=4, dtype=torch.float32, seed=5, device=device)
    flat = [p for entry in parents for p in entry]
    for reduction, compute_grad in ((1, False), (0, True), (1, True), (2, True)):
        xs = [x.clone().requires_grad_(compute_grad) for x in logits]
        torch.library.opcheck(torch.ops.hierparse.tree_min_loss.default,
                              (xs, labels, table, flat, [1.0, 0.5, 2.0], 2.0, IGNORE, reduction, compute_grad))
    weights = torch.rand(3, device=device)
    torch.library.opcheck(torch.ops.hierparse.tree_min_loss.default,
                          (logits, labels, table, flat, [1.0] * 3, 0.0, IGNORE, 1, True, None, weights))


@pytest.mark.parametrize("device", DEVICES)
def test_deterministic_across_runs_and_thread_counts(device, assert_same_bits_across_threads):
    logits, labels, table, parents = problem("lip", n=4, h=64, w=40, dtype=torch.float32, seed=6,  # 3 CPU tasks
                                             device=device)
    leaves = [x.requires_grad_(True) for x in logits]
    assert_same_bits_across_threads(lambda x: ops.tree_min_loss(x, labels, table, parents, focal_gamma=2.0), leaves)


# ---------------------------------------------------------------------- bad input
def bad(match, logits, labels, table, parents, **options):
    with pytest.raises(ValueError, match=match):
        ops.tree_min_loss(logits, labels, table, parents, **options)


def test_bad_parents():
    logits, labels, table, parents = problem("small")
    bad("got 1 parents entries for 3 levels", logits, labels, table, parents[:1])
    bad("parents entry for level 2 has 4 classes but level 2 logits have 5", logits, labels, table,
        [parents[0], parents[1][:4]])
    bad("class 1 of level 1 has parent 2, but level 0 has 2 classes", logits, labels, table, [[0, 2, 1], parents[1]])
    flat = [0, 2, 1, *parents[1]]
    with pytest.raises(ValueError, match=r"tree_min_loss: class 1 of level 1 has parent 2, but level 0 has 2 "
                                         r"classes \(0..1\)"):
        torch.ops.hierparse.tree_min_loss(logits, labels, table, flat, [1.0] * 3, 0.0, IGNORE, 1, False)
    with pytest.raises(ValueError, match="tree_min_loss: got 7 parent indices but levels 1..2 have 8 classes"):
        torch.ops.hierparse.tree_min_loss(logits, labels, table, flat[:7], [1.0] * 3, 0.0, IGNORE, 1, False)


def test_logits_that_do_not_fit_the_table_or_labels():
    logits, labels, table, parents = problem("lip")
    short = [logits[0], logits[1], logits[2][:, :19]]
    bad("parents entry for level 2 has 20 classes but level 2 logits have 19", short, labels, table, parents)
    bad("tree_min_loss: labels contain raw id 19, which the table maps to 19 at level 2, but level 2 logits have 19 "
        r"classes \(0..18\); an entry C \+ s names class set s \(a coarse label\), which needs set_members", short,
        labels, table, [parents[0], parents[1][:19]])
    bad(r"tree_min_loss: level 1 logits are \[2, 5, 5, 6\] but labels are \[2, 5, 7\]",
        [logits[0], logits[1][..., :6], logits[2]], labels, table, parents)
    bad(r"tree_min_loss: table must be \[L, K\] with L = 3 levels of logits, got \[2, 256\]", logits, labels,
        table[:2], parents)


@pytest.mark.parametrize("device", DEVICES)
def test_bad_labels_and_options(device):
    logits, labels, table, parents = problem("lip", ignored=0.0, device=device)
    labels = labels.long()
    labels[0, 0, 0] = 37
    bad("tree_min_loss: labels contain raw id 37 but the table covers 0..19", logits, labels, table[:, :20], parents)
    labels[0, 0, 0] = -1
    bad("tree_min_loss: labels contain raw id -1", logits, labels, table, parents)
    labels[0, 0, 0] = 0
    bad("focal_gamma must be >= 0, got -1", logits, labels, table, parents, focal_gamma=-1.0)
    bad("reduction must be one of", logits, labels, table, parents, reduction="max")
    bad("got 2 level weights for 3 levels", logits, labels, table, parents, level_weights=[1.0, 1.0])
    flat = [p for entry in parents for p in entry]
    with pytest.raises(ValueError, match=r"tree_min_loss: grad_weights must have the losses' shape \[3\], got \[2\]"):
        torch.ops.hierparse.tree_min_loss(logits, labels, table, flat, [1.0] * 3, 0.0, IGNORE, 1, True, None,
                                          torch.ones(2, device=device))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_and_cpu_tensors_mixed():
    logits, labels, table, parents = problem("small")
    bad("tree_min_loss: labels are on cuda:0 but level 0 logits are on cpu", logits, labels.cuda(), table, parents)
    cuda_logits = [x.cuda() for x in logits]
    bad("tree_min_loss: table is on cuda:0 but level 0 logits are on cpu", logits, labels, table.cuda(), parents)
    on_cpu = ops.tree_min_loss(cuda_logits, labels.cuda(), table, parents)  # a CPU table serves any device
    torch.testing.assert_close(on_cpu, ops.tree_min_loss(cuda_logits, labels.cuda(), table.cuda(), parents), rtol=0, atol=0)
    bad("tree_min_loss: level 1 logits are on cpu but level 0 logits are on cuda:0",
        [cuda_logits[0], logits[1], cuda_logits[2]], labels.cuda(), table.cuda(), parents)
    flat = [p for entry in parents for p in entry]
    with pytest.raises(ValueError, match="tree_min_loss: grad_weights are on cpu but level 0 logits are on cuda:0"):
        torch.ops.hierparse.tree_min_loss(cuda_logits, labels.cuda(), table.cuda(), flat, [1.0] * 3, 0.0, IGNORE, 1,
                                          True, None, torch.ones(3))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_kernel_bounds_are_clear_errors():
    labels = torch.zeros(1, 2, 2, dtype=torch.uint8, device="cuda")
    wide = [torch.randn(1, 1, 2, 2, device="cuda"), torch.randn(1, 300, 2, 2, device="cuda")]  # 301 nodes
    table = torch.stack([torch.zeros(300, dtype=torch.int64), torch.arange(300)]).cuda()
    with pytest.raises(NotImplementedError, match="the class tree has 301 nodes .* at most 256"):
        ops.tree_min_loss(wide, labels, table, [[0] * 300])
    deep = [torch.randn(1, 1, 2, 2, device="cuda") for _ in range(17)]  # 17 levels of one class
    with pytest.raises(NotImplementedError, match="got 17 levels, but the CUDA kernel handles at most 16"):
        ops.tree_min_loss(deep, labels, torch.zeros(17, 1, dtype=torch.int64, device="cuda"), [[0]] * 16)


def test_reference_rejects_the_same_bad_input():
    logits, labels, table, parents = problem("small")
    with pytest.raises(ValueError, match="got 1 parents entries for 3 levels"):
        ops.reference.tree_min_loss(logits, labels, table, parents[:1])
    with pytest.raises(ValueError, match="focal_gamma must be >= 0"):
        ops.reference.tree_min_loss(logits, labels, table, parents, focal_gamma=-0.5)
