"""hierparse.ops.ohem_cross_entropy (the op multilevel_ohem_cross_entropy): hard-pixel mining in one op
call, against the Python OHEM it replaced (the fused op twice, kthvalue between) bitwise, against
mmsegmentation's sampler through tests/test_losses.py, and its own bad input, registration and
determinism."""

from __future__ import annotations

import functools

import pytest
import torch

import hierparse
from hierparse import ops
from hierparse.ops import reference
from test_coarse_labels import set_problem
from test_ops import IGNORE, random_problem

PYTHON_OHEM = functools.partial(reference.ohem_cross_entropy, cross_entropy=ops.multilevel_cross_entropy)
# (threshold, min_kept): the threshold is the cut (more than the floor's rank below it), the floor is
# found (nth_element), nothing but the floor, every valid pixel (min_kept past the count)
SELECTIONS = [(0.7, 10), (0.05, 60), (1.0, 0), (0.3, 10_000)]


def assert_same_as_python_ohem(logits, labels, table, **options):
    """The op's losses and the gradients of their sum equal the Python OHEM's bitwise (another
    incoming gradient within float rounding: it scales 1 / kept count before, not after); returns
    the op's losses."""
    leaves = [x.clone().requires_grad_(True) for x in logits]
    refs = [x.clone().requires_grad_(True) for x in logits]
    got = ops.ohem_cross_entropy(leaves, labels, table, **options)
    want = PYTHON_OHEM(refs, labels, table, **options)
    assert got.dtype == want.dtype and torch.equal(got, want), (got, want)
    for level, (a, b) in enumerate(zip(torch.autograd.grad(got.sum(), leaves, retain_graph=True),
                                       torch.autograd.grad(want.sum(), refs, retain_graph=True))):
        assert torch.equal(a, b), f"level {level}: {(a - b).abs().max()}"
    weights = torch.arange(1.0, len(logits) + 1)  # a per-level incoming gradient other than ones
    for a, b in zip(torch.autograd.grad((got * weights).sum(), leaves),
                    torch.autograd.grad((want * weights).sum(), refs)):
        torch.testing.assert_close(a, b)
    return got


@pytest.mark.parametrize("threshold, min_kept", SELECTIONS)
@pytest.mark.parametrize("sizes", ["full", "upsampled", "mixed"])
def test_matches_the_python_ohem_bitwise(threshold, min_kept, sizes):
    logits, labels, table = random_problem(n=2, h=12, w=14, seed=min_kept)
    small = {"full": [(12, 14)] * 3, "upsampled": [(3, 4), (6, 7), (6, 7)], "mixed": [(1, 1), (12, 14), (5, 9)]}[sizes]
    logits = [x[..., :h, :w].contiguous() for x, (h, w) in zip(logits, small)]
    weights = [None, torch.rand(5) + 0.5, torch.rand(20) + 0.5]
    losses = assert_same_as_python_ohem(logits, labels, table, threshold=threshold, min_kept=min_kept,
                                        level_weights=[0.25, 0.5, 1.0], class_weights=weights, label_smoothing=0.1)
    assert torch.isfinite(losses).all() and (losses > 0).all()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16], ids=str)
def test_every_logits_dtype(dtype):
    logits, labels, table = random_problem(n=2, h=10, w=11, dtype=dtype)
    losses = assert_same_as_python_ohem(logits, labels, table, threshold=0.6, min_kept=20)
    assert losses.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)


@pytest.mark.parametrize("weights", ["ones", "random"])
def test_class_sets_use_their_summed_probability(weights):
    logits, labels, table, members = set_problem(n=2, h=9, w=13, weights=weights, small=(5, 7))
    for threshold, min_kept in SELECTIONS[:2]:
        assert_same_as_python_ohem(logits, labels, table, threshold=threshold, min_kept=min_kept, set_members=members,
                                   label_smoothing=0.05)


def test_ties_at_the_floor_keep_only_pixels_strictly_below_it():
    """Logits of 0 and 1 only: level 0 (2 classes) has three target probabilities, so many pixels share
    the floor's; none of them is kept."""
    logits, labels, table = random_problem(n=2, h=16, w=16, ignored=0.0)
    logits = [torch.randint_like(x, 0, 2) for x in logits]
    for threshold, min_kept in ((0.01, 40), (0.2, 100)):
        assert_same_as_python_ohem(logits, labels, table, threshold=threshold, min_kept=min_kept)
        per_pixel = ops.multilevel_cross_entropy(logits, labels, table, reduction="none")[0].flatten()
        probability = torch.exp(-per_pixel)
        floor = probability.sort().values[min_kept * 2]
        assert (probability == floor).sum() > 1  # a real tie at the floor
        kept = probability < max(float(floor), threshold)
        want = (per_pixel * kept).sum() / kept.sum().clamp(min=1)  # 0 when the floor is the smallest value
        torch.testing.assert_close(ops.ohem_cross_entropy(logits, labels, table, threshold=threshold,
                                                          min_kept=min_kept)[0], want)


def test_a_level_without_valid_pixels_and_empty_batches_give_zero():
    logits, labels, table = random_problem(n=2, h=6, w=7)
    table[1] = IGNORE
    leaves = [x.requires_grad_(True) for x in logits]
    losses = ops.ohem_cross_entropy(leaves, labels, table, threshold=0.7, min_kept=5)
    grads = torch.autograd.grad(losses.sum(), leaves)
    assert losses[1] == 0 and losses[0] > 0 and not grads[1].any() and grads[0].any()
    empty = [torch.zeros(0, c, 6, 7, requires_grad=True) for c in (2, 5, 20)]
    losses = ops.ohem_cross_entropy(empty, labels[:0], table, threshold=0.7, min_kept=5)
    assert torch.equal(losses, torch.zeros(3))


def test_min_kept_past_any_count_keeps_every_valid_pixel():
    """min_kept * N past int64 (the op computes the rank without overflowing): every valid pixel counts."""
    logits, labels, table = random_problem(n=2, h=8, w=9)
    got = ops.ohem_cross_entropy(logits, labels, table, threshold=0.5, min_kept=2**62)
    want = ops.multilevel_cross_entropy(logits, labels, table, reduction="mean")
    # all valid pixels but the floor itself (the largest probability, not below itself)
    assert ((got - want).abs() / want < 0.05).all()
    assert torch.equal(got, PYTHON_OHEM(logits, labels, table, threshold=0.5, min_kept=2**62))


def test_the_hierarchical_loss_calls_the_op_once(monkeypatch):
    calls = []
    op = torch.ops.hierparse.multilevel_ohem_cross_entropy

    def counted(*args):
        calls.append(1)
        return op(*args)

    monkeypatch.setattr(torch.ops.hierparse, "multilevel_ohem_cross_entropy", counted)
    h = hierparse.load_hierarchy("lip")
    logits = [torch.randn(2, c, 6, 6, requires_grad=True) for c in h.num_classes]
    labels = torch.randint(0, 20, (2, 24, 24), dtype=torch.uint8)
    losses = hierparse.HierarchicalLoss(h, ohem=hierparse.losses.OHEM())(logits, labels)
    losses.sum().backward()
    assert len(calls) == 1


@pytest.mark.parametrize("options, message", [
    (dict(threshold=0.0), "threshold must be a probability in (0, 1], got 0"),
    (dict(threshold=1.5), "threshold must be a probability in (0, 1], got 1.5"),
    (dict(threshold=float("nan")), "threshold must be a probability in (0, 1], got nan"),
    (dict(min_kept=-1), "min_kept must be >= 0, got -1"),
])
def test_bad_options_raise_one_line(options, message):
    logits, labels, table = random_problem(n=1, h=4, w=4)
    with pytest.raises(ValueError) as error:
        ops.ohem_cross_entropy(logits, labels, table, **{"threshold": 0.7, "min_kept": 1, **options})
    assert message in str(error.value) and "\n" not in str(error.value).strip()


def test_bad_labels_raise_before_any_selection():
    logits, labels, table = random_problem(n=1, h=4, w=4, ignored=0.0)
    table = table[:, :20]
    labels[0, 0, 0] = 25
    with pytest.raises(ValueError, match="labels contain raw id 25 but the table covers 0..19"):
        ops.ohem_cross_entropy(logits, labels, table)


def test_same_bits_for_any_thread_count(assert_same_bits_across_threads):
    logits, labels, table = random_problem(n=4, h=96, w=96, seed=3)  # several chunks of the selection
    leaves = [x[..., :48, :48].contiguous().requires_grad_(True) for x in logits]
    assert_same_bits_across_threads(
        lambda xs: ops.ohem_cross_entropy(xs, labels, table, threshold=0.05, min_kept=500), leaves)


def test_opcheck_and_compile():
    logits, labels, table = random_problem(classes=(2, 5), n=2, h=5, w=6, num_ids=6)
    for compute_grad in (False, True):
        xs = [x.clone().requires_grad_(compute_grad) for x in logits]
        torch.library.opcheck(torch.ops.hierparse.multilevel_ohem_cross_entropy.default,
                              (xs, labels, table, torch.rand(7) + 0.5, [1.0, 0.5], 0.1, IGNORE, compute_grad, False,
                               None, 0.6, 3))

    def step(xs, labels, table):
        return ops.ohem_cross_entropy(xs, labels, table, threshold=0.6, min_kept=3, level_weights=[1.0, 2.0])

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    leaves = [x.clone().requires_grad_(True) for x in logits]
    refs = [x.clone().requires_grad_(True) for x in logits]
    got, want = compiled(leaves, labels, table), step(refs, labels, table)
    assert torch.equal(got, want)
    for a, b in zip(torch.autograd.grad(got.sum() * 3, leaves), torch.autograd.grad(want.sum() * 3, refs)):
        assert torch.equal(a, b)


def test_gradcheck():
    logits, labels, table = random_problem(classes=(2, 5), n=1, h=4, w=5, num_ids=6, dtype=torch.float64)
    leaves = [x[..., :2, :3].clone().requires_grad_(True) for x in logits]

    def fn(*xs):  # the kept pixels do not move under gradcheck's tiny perturbations
        return ops.ohem_cross_entropy(list(xs), labels, table, threshold=0.9, min_kept=2, label_smoothing=0.1)

    assert torch.autograd.gradcheck(fn, leaves)


def test_the_pure_pytorch_fallback_agrees():
    """hierparse.ops.reference.ohem_cross_entropy (what runs without the extension) over the pure-PyTorch
    cross-entropy keeps the same pixels here (no probability within rounding of a cut)."""
    logits, labels, table = random_problem(n=2, h=10, w=12, seed=4)
    leaves = [x.clone().requires_grad_(True) for x in logits]
    got = ops.ohem_cross_entropy(leaves, labels, table, threshold=0.5, min_kept=30)
    want = reference.ohem_cross_entropy(logits, labels, table, threshold=0.5, min_kept=30)
    torch.testing.assert_close(got, want)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("threshold, min_kept", SELECTIONS)
def test_cuda_keeps_the_pixels_the_cpu_keeps(threshold, min_kept):
    """The radix select on the GPU against the CPU's nth_element: the same losses (kept pixels) and gradients."""
    logits, labels, table = random_problem(n=2, h=33, w=41, seed=min_kept)
    logits = [x[..., :17, :21].contiguous() for x in logits[:2]] + [logits[2]]
    cpu = [x.clone().requires_grad_(True) for x in logits]
    gpu = [x.cuda().requires_grad_(True) for x in logits]
    want = ops.ohem_cross_entropy(cpu, labels, table, threshold=threshold, min_kept=min_kept)
    got = ops.ohem_cross_entropy(gpu, labels.cuda(), table.cuda(), threshold=threshold, min_kept=min_kept)
    torch.testing.assert_close(got.cpu(), want, rtol=1e-5, atol=1e-6)
    for a, b in zip(torch.autograd.grad(got.sum(), gpu), torch.autograd.grad(want.sum(), cpu)):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-4, atol=1e-6)
