"""Coarse labels: a raw id may name a group, which is a class set at the finer levels.

The fused op's set form is compared with an independent reference (softmax summed over a member
mask, in float64, after F.interpolate), and the rest of the path with hand-made expectations:
hierarchy tables, losses, OHEM, metrics, training-set mixtures, the set-restricted teacher.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hierparse
from hierparse import config as configuration
from hierparse import ops
from hierparse.data.mixture import MixedDataset, RelabelIds, check_sources
from hierparse.engine.teacher import SetTeacher
from hierparse.hierarchy import hierarchy_from_yaml
from hierparse.losses import OHEM, HierarchicalLoss
from hierparse.metrics import ParsingMetrics

pytestmark = pytest.mark.skipif(not ops.HAS_EXTENSION, reason="hierparse._C is not built")

IGNORE = 255
# (loss, gradient) absolute tolerances; half and bfloat16 gradients relative to their largest value
# (the reference rounds them at full resolution, before the backward of F.interpolate; the op once, at the end)
TOLERANCE = {torch.float32: (2e-5, 1e-6), torch.float64: (1e-10, 1e-12), torch.float16: (2e-3, 5e-3),
             torch.bfloat16: (2e-2, 2e-2)}


def set_reference(logits, labels, table, members, *, class_weights=None, label_smoothing=0.0, reduction="mean",
                  align_corners=False, level_weights=None):
    """Per level: -log of the softmax summed over each pixel's member weights (one-hot for a class), in
    float64 after F.interpolate (in the logits' type, whose rounding the op reproduces); class weight of a set = its members' weights averaged by member weight;
    label smoothing as F.cross_entropy's; "mean" divides by the summed target weights."""
    out = []
    for level, x in enumerate(logits):
        if x.shape[-2:] != labels.shape[-2:]:
            x = F.interpolate(x, size=labels.shape[-2:], mode="bilinear", align_corners=align_corners)
        x = x.double()
        classes = x.shape[1]
        entry = table[level][labels.long()]
        valid = entry != IGNORE
        weights = torch.ones(classes, dtype=torch.float64) if class_weights is None else class_weights[level].double()
        rows = torch.cat([torch.eye(classes, dtype=torch.float64), members[level, :, :classes].double()])
        target_weight = (rows * weights).sum(1) / rows.sum(1).clamp(min=1e-300)
        safe = torch.where(valid, entry, 0)
        p = x.softmax(1)
        mass = (p * rows[safe].permute(0, 3, 1, 2)).sum(1)
        smooth = -(x.log_softmax(1) * weights.view(1, -1, 1, 1)).sum(1) / classes
        loss = (1 - label_smoothing) * target_weight[safe] * -torch.log(mass)
        if label_smoothing:  # (0 * an infinite smoothing term would be NaN)
            loss = loss + label_smoothing * smooth
        loss = torch.where(valid, loss, 0.0)
        if reduction == "sum":
            loss = loss.sum()
        elif reduction == "mean":
            divisor = target_weight[safe][valid].sum()
            loss = loss.sum() / divisor if bool(valid.any()) else loss.sum() * 0
        out.append(loss * (1.0 if level_weights is None else level_weights[level]))
    return torch.stack(out)


def set_problem(classes=(2, 5, 12), n=2, h=9, w=70, *, num_ids=14, sets=4, dtype=torch.float32, seed=0,
                weights="ones", small=None):
    """Logits, labels, a table whose ids num_ids.. name random sets (one to all classes of a level,
    ignored at some levels) and their member weights."""
    g = torch.Generator().manual_seed(seed)
    L, most = len(classes), max(classes)
    table = torch.full((L, 256), IGNORE, dtype=torch.int64)
    members = torch.zeros(L, sets, most)
    for level, c in enumerate(classes):
        table[level, :num_ids] = torch.randint(0, c, (num_ids,), generator=g)
        table[level, :c] = torch.arange(c)
        sizes = [1, c, *torch.randint(1, c + 1, (sets - 2,), generator=g).tolist()]  # one class, the whole level
        for s, size in enumerate(sizes):
            chosen = torch.randperm(c, generator=g)[:size]
            members[level, s, chosen] = 1.0 if weights == "ones" else torch.rand(size, generator=g) + 0.2
            table[level, num_ids + s] = c + s
        table[level, num_ids + sets] = IGNORE  # an id ignored at every level
    table[1, num_ids + 1] = IGNORE  # ignore inside a set row: the whole-level set, ignored at level 1
    labels = torch.randint(0, num_ids + sets + 1, (n, h, w), generator=g)
    labels[torch.rand(n, h, w, generator=g) < 0.05] = IGNORE
    size = (h, w) if small is None else small
    logits = [(torch.randn(n, c, *size, generator=g) * 3).to(dtype) for c in classes]
    return logits, labels.to(torch.uint8), table, members


def compare(logits, labels, table, members, **options):
    dtype = logits[0].dtype
    leaves = [x.clone().requires_grad_(True) for x in logits]
    refs = [x.detach().clone().requires_grad_(True) for x in logits]
    got = ops.multilevel_cross_entropy(leaves, labels, table, set_members=members, **options)
    want = set_reference(refs, labels, table, members, **options)
    loss_tol, grad_tol = TOLERANCE[dtype]
    torch.testing.assert_close(got.double(), want, atol=loss_tol * max(1.0, want.abs().max().item()), rtol=1e-5)
    weights = torch.randn_like(want)
    for g, r in zip(torch.autograd.grad((got * weights.to(got.dtype)).sum(), leaves),
                    torch.autograd.grad((want * weights).sum(), refs)):
        assert g.dtype == dtype and g.shape == r.shape
        half = dtype in (torch.float16, torch.bfloat16)
        scale = r.abs().max().item() + 1e-4 if half else 10 * max(1.0, weights.abs().max().item())  # half: + subnormals
        torch.testing.assert_close(g.double(), r.double(), atol=grad_tol * scale, rtol=2e-2 if half else 1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("small", [None, (4, 23)], ids=["full-size", "upsampled"])
def test_sets_match_the_reference_every_dtype_reduction_and_size(dtype, reduction, small):
    logits, labels, table, members = set_problem(dtype=dtype, w=300 if small is None else 70, small=small)
    compare(logits, labels, table, members, reduction=reduction)


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
@pytest.mark.parametrize("class_weights", [False, True])
@pytest.mark.parametrize("member_weights", ["ones", "random"])
@pytest.mark.parametrize("align_corners", [False, True])
def test_sets_with_every_option(smoothing, class_weights, member_weights, align_corners):
    logits, labels, table, members = set_problem(classes=(3, 4, 7), n=3, h=7, w=13, num_ids=9, weights=member_weights,
                                                 small=(3, 5), seed=1)
    g = torch.Generator().manual_seed(2)
    weights = [torch.rand(c, generator=g) + 0.1 for c in (3, 4, 7)] if class_weights else None
    for reduction in ("mean", "none"):
        compare(logits, labels, table, members, reduction=reduction, label_smoothing=smoothing,
                class_weights=weights, align_corners=align_corners, level_weights=[0.5, 2.0, 1.0])


@pytest.mark.parametrize("small", [None, (3, 20)])
def test_a_one_class_set_is_bitwise_the_class(small):
    logits, labels, table, members = set_problem(small=small)
    exact = table.clone()
    for level, c in enumerate((2, 5, 12)):
        one = members[level, 0].nonzero().item()  # set 0 of every level has one member of weight 1
        exact[level, table[level] == c] = one
    grads = []
    for t in (table, exact):
        leaves = [x.clone().requires_grad_(True) for x in logits]
        used = labels.clone()
        used[(table[:, labels.long()] >= torch.tensor([2, 5, 12]).view(3, 1, 1, 1)).any(0) & (labels != 14)] = 0
        loss = ops.multilevel_cross_entropy(leaves, used, t, set_members=members, reduction="none")
        grads.append((loss, torch.autograd.grad(loss.sum(), leaves)))
    assert torch.equal(grads[0][0], grads[1][0])
    assert all(torch.equal(a, b) for a, b in zip(grads[0][1], grads[1][1]))


def test_the_whole_level_as_a_set_costs_nothing():
    logits = [torch.randn(1, 6, 4, 40, requires_grad=True)]
    table = torch.full((1, 256), IGNORE)
    table[0, 0] = 6
    members = torch.ones(1, 1, 6)
    loss = ops.multilevel_cross_entropy(logits, torch.zeros(1, 4, 40, dtype=torch.uint8), table, set_members=members)
    (grad,) = torch.autograd.grad(loss.sum(), logits)
    assert abs(loss.item()) < 1e-6 and grad.abs().max() < 1e-7


def test_sets_are_deterministic_across_threads_and_match_every_instruction_set():
    logits, labels, table, members = set_problem(w=300)
    results, before = [], torch.get_num_threads()
    for threads in (1, 2):
        torch.set_num_threads(threads)
        leaves = [x.clone().requires_grad_(True) for x in logits]
        loss = ops.multilevel_cross_entropy(leaves, labels, table, set_members=members)
        results.append((loss, torch.autograd.grad(loss.sum(), leaves)))
    torch.set_num_threads(before)
    assert torch.equal(results[0][0], results[1][0]) and all(
        torch.equal(a, b) for a, b in zip(results[0][1], results[1][1]))
    for capability in ("default", "avx2", "avx512"):
        env = {**os.environ, "HIERPARSE_CPU_CAPABILITY": capability}
        result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k",
                                 "every_dtype_reduction_and_size or every_option or one_class_set"], capture_output=True, text=True,
                                timeout=300, env=env)
        if "is not supported by this CPU" in result.stdout + result.stderr:
            continue
        assert result.returncode == 0 and " passed" in result.stdout, result.stdout[-2000:]


def test_gradcheck_opcheck_and_compile_with_sets():
    logits, labels, table, members = set_problem(classes=(2, 4), n=1, h=3, w=5, num_ids=5, sets=3,
                                                 dtype=torch.float64, small=(2, 3))
    for reduction in ("mean", "none"):
        def fn(*xs):
            return ops.multilevel_cross_entropy(list(xs), labels, table, set_members=members, reduction=reduction,
                                                label_smoothing=0.1)
        assert torch.autograd.gradcheck(fn, [x.clone().requires_grad_(True) for x in logits])
    for compute_grad in (False, True):
        xs = [x.float().clone().requires_grad_(compute_grad) for x in logits]
        torch.library.opcheck(torch.ops.hierparse.multilevel_cross_entropy.default,
                              (xs, labels, table, None, [1.0, 0.5], 0.1, IGNORE, 1, compute_grad, False, members))

    def step(xs):
        return ops.multilevel_cross_entropy(xs, labels, table, set_members=members)

    leaves = [x.float().clone().requires_grad_(True) for x in logits]
    refs = [x.float().clone().requires_grad_(True) for x in logits]
    got = torch.compile(step, fullgraph=True, backend="aot_eager")(leaves)
    want = step(refs)
    torch.testing.assert_close(got, want)
    for g, r in zip(torch.autograd.grad(got.sum(), leaves), torch.autograd.grad(want.sum(), refs)):
        torch.testing.assert_close(g, r)


@st.composite
def trees(draw):
    """A random class tree of 2-3 levels whose groups carry raw ids as well as their leaves."""
    levels = draw(st.integers(2, 3))
    counter = iter(range(1, 200))

    def node(depth, path):
        name = f"n{path}"
        if depth == levels - 1 or draw(st.booleans()) and depth > 0:
            return f"{{name: {name}, ids: {next(counter)}}}"
        children = [node(depth + 1, f"{path}_{i}") for i in range(draw(st.integers(1, 3)))]
        ids = f", ids: {next(counter)}" if draw(st.booleans()) else ""
        return f"{{name: {name}{ids}, children: [{', '.join(children)}]}}"

    roots = [node(0, str(i)) for i in range(draw(st.integers(1, 3)))]
    text = (f"name: random\nlevels: [{', '.join(f'l{i}' for i in range(levels))}]\n"
            f"classes: [{{name: Background, ids: 0}}, {', '.join(roots)}]\n")
    return hierarchy_from_yaml(text)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree=trees(), seed=st.integers(0, 1000))
def test_random_trees_and_their_tables(tree, seed):
    g = torch.Generator().manual_seed(seed)
    declared = torch.tensor([i for i in tree.declared_ids() if i != IGNORE])
    labels = declared[torch.randint(len(declared), (2, 5, 9), generator=g)].to(torch.uint8)
    table, members = tree.label_table(), tree.set_members()
    owner = {i: node for root in tree.roots for node in root.walk() for i in node.ids}
    for level, nodes in enumerate(tree.nodes(l) for l in range(tree.num_levels)):
        for ids, classes in tree.level_targets(level):  # a group's set: its descendants at the level
            leaves = {leaf.name for leaf in owner[ids[0]].leaves()}
            assert classes == [i for i, n in enumerate(nodes) if {x.name for x in n.leaves()} <= leaves] or \
                len(classes) == 1
    logits = [torch.randn(2, c, 5, 9, generator=g, dtype=torch.float64) for c in tree.num_classes]
    compare(logits, labels, table, members)  # [L, 0, C] when no group has ids


def test_bad_set_arguments_name_the_level_set_and_class():
    logits, labels, table, members = set_problem(classes=(2, 5), num_ids=6, sets=3)

    def bad(match, **options):
        with pytest.raises(ValueError, match=match):
            ops.multilevel_cross_entropy(logits, labels, options.pop("table", table), **options)

    bad(r"set_members must be \[L, S, C\] with L = 2 levels and C >= 5", set_members=members[:, :, :4])
    negative = members.clone()
    negative[1, 2, 0] = -1
    bad("set 2 of level 1 gives class 0 the member weight -1", set_members=negative)
    beyond = torch.zeros(2, 3, 6)
    beyond[:, :, :5] = members
    beyond[0, 1, 4] = 1.0
    bad("set 1 of level 0 names class 4, but level 0 logits have 2 classes", set_members=beyond)
    empty = members.clone()
    empty[1, 2] = 0
    bad("table maps raw id 8 to set 2 of level 1, which has no member", set_members=empty)
    bad("labels contain raw id 6, which the table maps to 2 at level 0, but level 0 logits have 2 classes",
        set_members=None)


GATHERED_SETS = """
import json, torch, hierparse, hierparse.ops as o
h = hierparse.load_hierarchy('lip')
g = torch.Generator().manual_seed(3)
x = [torch.randn(2, c, 5, 7, generator=g, dtype=torch.float64, requires_grad=True) for c in h.num_classes]
y = torch.randint(0, 25, (2, 17, 19), generator=g, dtype=torch.uint8)
y[:, :3] = 255
w = [torch.rand(c, generator=g, dtype=torch.float64) + 0.5 for c in h.num_classes]
losses = o.multilevel_cross_entropy(x, y, h.label_table(), set_members=h.set_members(), class_weights=w,
                                    label_smoothing=0.1, level_weights=[0.5, 1.0, 2.0])
grads = torch.autograd.grad(losses.sum(), x)
print(json.dumps([losses.tolist()] + [gr.flatten().tolist() for gr in grads]))
"""


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_scores_class_sets_as_the_cpu_does(dtype):
    """Coarse labels on the GPU (full-size and upsampled levels, plain, OHEM and tree-min): the CPU's losses and
    gradients."""
    h = hierparse.load_hierarchy("lip")
    g = torch.Generator().manual_seed(6)
    labels = torch.randint(0, 25, (2, 33, 40), generator=g, dtype=torch.uint8)
    sizes = [(33, 40), (9, 11), (17, 20)]
    logits = [torch.randn(2, c, *size, generator=g, dtype=dtype) * 3 for c, size in zip(h.num_classes, sizes)]
    full_size = [torch.randn(2, c, 33, 40, generator=g, dtype=dtype) for c in h.num_classes]
    parents = [h.parents(level) for level in (1, 2)]
    options = dict(set_members=h.set_members())
    losses_and_logits = ((ops.multilevel_cross_entropy, logits),
                         (functools.partial(ops.ohem_cross_entropy, threshold=0.7, min_kept=50), logits),
                         (lambda x, y, table, **o: ops.tree_min_loss(x, y, table, parents, **o), full_size))
    for loss, inputs in losses_and_logits:
        results = []
        for device in ("cpu", "cuda"):
            leaves = [x.to(device).requires_grad_(True) for x in inputs]
            losses = loss(leaves, labels.to(device), h.label_table(), **options)
            results.append((losses, torch.autograd.grad(losses.sum(), leaves)))
        (cpu_losses, cpu_grads), (gpu_losses, gpu_grads) = results
        torch.testing.assert_close(gpu_losses.cpu(), cpu_losses, rtol=1e-5, atol=1e-6)
        for got, want in zip(gpu_grads, cpu_grads):
            torch.testing.assert_close(got.cpu(), want, rtol=1e-4, atol=1e-6)


def test_the_gather_algorithm_matches_the_cpu_one_on_class_sets():
    """HIERPARSE_CPU_UPSAMPLING=gather runs the CUDA kernel's per-pixel code (upsampled_ce.h) on the CPU:
    coarse labels at upsampled levels, with class weights and smoothing, give the CPU algorithm's
    losses and gradients (float64)."""
    runs = [subprocess.run([sys.executable, "-c", GATHERED_SETS], capture_output=True, text=True, timeout=120,
                           env={**os.environ, "HIERPARSE_CPU_UPSAMPLING": upsampling}) for upsampling in ("gather", "")]
    assert all(run.returncode == 0 for run in runs), [run.stderr[-2000:] for run in runs]
    gathered, blended = (json.loads(run.stdout) for run in runs)
    for got, want in zip(gathered, blended):
        torch.testing.assert_close(torch.tensor(got), torch.tensor(want), rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------- the training path
def lip_batch(seed=0, size=(2, 24, 24)):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 25, size, generator=g, dtype=torch.uint8)  # parts 0-19, groups 20-24
    labels[0, :3] = IGNORE
    logits = [torch.randn(size[0], c, size[1] // 4, size[2] // 4, generator=g) for c in (2, 5, 20)]
    return logits, labels


def test_hierarchical_loss_scores_lip_groups_by_their_parts():
    h = hierparse.load_hierarchy("lip")
    logits, labels = lip_batch()
    loss = HierarchicalLoss(h, level_weights=[0.5, 1.0, 2.0], ohem=None)
    got = loss(logits, labels)
    want = set_reference(logits, labels, h.label_table(), h.set_members(), level_weights=[0.5, 1.0, 2.0])
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)


def test_coarse_labels_reach_finer_levels_only_through_the_marginal():
    """Which levels get gradient from which pixels: a region label (21: Head) trains the person and
    region levels as a class and the part level through its set (ignore: not at all); part labels
    train all three."""
    h = hierparse.load_hierarchy("lip")
    logits, _ = lip_batch(size=(1, 8, 8))
    logits = [F.interpolate(x, size=(8, 8)) for x in logits]  # gradients per pixel, at the labels' size
    labels = torch.full((1, 8, 8), 2, dtype=torch.uint8)  # Hair everywhere
    labels[:, :4] = 21  # the top half: "somewhere in the head"
    for mode, part_grad_at_head in (("marginal", True), ("ignore", False)):
        leaves = [x.clone().requires_grad_(True) for x in logits]
        losses = HierarchicalLoss(h, coarse_labels=mode, ohem=None)(leaves, labels)
        grads = torch.autograd.grad(losses.sum(), leaves)
        top, bottom = [g[0, :, :4].abs().sum().item() for g in grads], [g[0, :, 4:].abs().sum().item() for g in grads]
        assert all(value > 0 for value in bottom)
        assert top[0] > 0 and top[1] > 0 and (top[2] > 0) == part_grad_at_head
        if part_grad_at_head:  # only the head's four parts may gain at a Head pixel
            part = grads[2][0, :, 0, 0]
            head = [h.class_names(2).index(n) for n in ("Hat", "Hair", "Sunglasses", "Face")]
            assert (part[head] < 0).all() and (part[[i for i in range(20) if i not in head]] >= 0).all()


def test_ohem_target_probability_of_a_set_is_its_summed_probability():
    h = hierparse.load_hierarchy("lip")
    logits, labels = lip_batch(size=(2, 16, 16))
    logits = [F.interpolate(x, size=(16, 16)) for x in logits]
    ohem = OHEM(threshold=0.6, min_kept=10)
    got = HierarchicalLoss(h, ohem=ohem)(logits, labels)
    table, members = h.label_table(), h.set_members()
    want = []
    for level, x in enumerate(logits):
        per_pixel = set_reference([x], labels, table[level:level + 1], members[level:level + 1], reduction="none")[0]
        entry = table[level][labels.long()]
        valid = entry != IGNORE
        probability = torch.exp(-per_pixel)
        ordered = probability[valid].sort().values
        floor = ordered[min(10 * 2, ordered.numel() - 1)]
        kept = valid & (probability < max(float(floor), 0.6))
        want.append((per_pixel * kept).sum() / kept.sum().clamp(min=1))
    torch.testing.assert_close(got.double(), torch.stack(want), rtol=1e-5, atol=1e-6)


def test_metrics_score_a_coarse_label_at_its_level_and_above_only():
    h = hierparse.load_hierarchy("lip")
    labels = torch.tensor([[[2, 21, 20, 0]]], dtype=torch.uint8)  # Hair, Head, Person, Background
    preds = [torch.tensor([[[1, 1, 1, 0]]]), torch.tensor([[[1, 1, 2, 0]]]), torch.tensor([[[2, 5, 5, 0]]])]
    metrics = ParsingMetrics(h)
    metrics.update(preds, labels)
    person, region, part = metrics.confusion_matrices
    assert person.sum() == 4 and person[1, 1] == 3 and person[0, 0] == 1  # every pixel counts at the top
    assert region.sum() == 3 and region[1, 1] == 2 and region[0, 0] == 1  # "Person" is a set there
    assert part.sum() == 2 and part[2, 2] == 1 and part[0, 0] == 1  # only the exact part labels
    assert [entry["pixels"] for entry in metrics.compute()["levels"]] == [4, 3, 2]
    assert "pixels" in hierparse.metrics.format_metrics(metrics.compute())


# ---------------------------------------------------------------------- data: mixtures, coarsening, teacher
def test_sources_are_checked_in_one_line():
    h = hierparse.load_hierarchy("lip")
    for sources, message in [
        ([], "non-empty list of sources"),
        ([{"root": "x"}], r"datasets\[0\] must be a mapping with at least 'dataset'"),
        ([{"dataset": "synthetic"}, {"dataset": "synthetic", "wieght": 2}], r"datasets\[1\]: unknown key 'wieght'"),
        ([{"dataset": "lipp"}], "unknown dataset 'lipp'"),
        ([{"dataset": "lip", "root": "x", "n": 3}], "'n' and 'first' are for dataset synthetic only"),
        ([{"dataset": "synthetic", "weight": 0}], "weight must be a positive number, got 0"),
        ([{"dataset": "synthetic", "first": -1}], "first must be a whole number >= 0"),
        ([{"dataset": "synthetic", "coarsen": "regions"}], "has no level 'regions'"),
    ]:
        with pytest.raises(ValueError, match=message):
            check_sources(sources, h)


def test_an_empty_source_is_named(tmp_path):
    from hierparse.data.mixture import build_mixture
    (tmp_path / "train_images").mkdir()
    (tmp_path / "train_segmentations").mkdir()
    (tmp_path / "train_id.txt").write_text("")
    sources = [{"dataset": "synthetic", "n": 2}, {"dataset": "lip", "root": str(tmp_path)}]
    with pytest.raises(ValueError, match=rf"empty split: id file {tmp_path / 'train_id.txt'} lists no images"):
        build_mixture(sources, hierparse.load_hierarchy("lip"), lambda s: s, 32, "train")


def test_a_mixture_draws_each_source_by_weight_and_cycles_its_images():
    small, large = list(range(10)), list(range(90))

    class Listed(torch.utils.data.Dataset):
        hierarchy = None

        def __init__(self, items):
            self.items = items

        def __len__(self):
            return len(self.items)

        def __getitem__(self, i):
            return self.items[i]

    mixture = MixedDataset([Listed(small), Listed(large)], [0.5, 0.5], None)
    order = mixture.epoch_order(torch.Generator().manual_seed(3), 10_000)
    from_small = [i for i in order if i < 10]
    assert abs(len(from_small) / len(order) - 0.5) < 0.02  # by weight, not by size (10%)
    counts = np.bincount(from_small, minlength=10)
    assert counts.max() - counts.min() <= 1  # cycled: every fine image about equally often
    assert order == mixture.epoch_order(torch.Generator().manual_seed(3), 10_000)
    assert mixture[10] == 0 and mixture[9] == 9 and len(mixture) == 100


def test_coarsened_synthetic_images_carry_region_ids_only():
    h = hierparse.load_hierarchy("lip")
    data = hierparse.data.SyntheticParsing(h, n=3, size=64, first=5)
    plain = hierparse.data.SyntheticParsing(h, n=8, size=64)
    assert np.array_equal(data[0]["label"], plain[5]["label"])  # first: the same stream, shifted
    coarse = RelabelIds(h.coarsening("region"))(data[0])["label"]
    assert set(np.unique(coarse)) <= {0, 21, 22, 23, 24}
    expected = h.coarsening("region")[data[0]["label"]]
    assert np.array_equal(coarse, expected) and set(np.unique(data[0]["label"])) - {0} <= set(range(1, 20))


class FixedScores(torch.nn.Module):
    """A 'model' whose finest-level logits are given, whatever the images."""

    def __init__(self, logits):
        super().__init__()
        self.logits = torch.nn.Parameter(logits)

    def forward(self, images):
        return [self.logits]


def test_the_teacher_picks_the_best_part_inside_each_coarse_label():
    h = hierparse.load_hierarchy("lip")
    names = h.class_names(2)
    logits = torch.full((1, 20, 1, 4), -5.0)
    logits[0, names.index("Upper-clothes"), 0, :] = 5.0  # the teacher sees upper clothes everywhere,
    logits[0, names.index("Hair"), 0, 0] = 1.0           # hair a little at pixel 0,
    logits[0, names.index("Face"), 0, 1] = 1.0           # face at pixel 1
    logits[0, names.index("Hat"), 0, 1] = 0.9            # and hat nearly as much there
    teacher = SetTeacher(FixedScores(logits), h, threshold=0.0)
    labels = torch.tensor([[[21, 21, 2, 20]]], dtype=torch.uint8)  # Head, Head, Hair, Person
    relabelled = teacher.relabel(torch.zeros(1, 3, 1, 4), labels)
    assert relabelled.tolist() == [[[2, 13, 2, 5]]]  # Hair, Face (not Upper-clothes), exact unchanged, Upper
    strict = SetTeacher(FixedScores(logits), h, threshold=0.6)
    assert strict.relabel(torch.zeros(1, 3, 1, 4), labels).tolist() == [[[2, 21, 2, 5]]]  # Face/Hat too close
    with pytest.raises(ValueError, match="teacher threshold must lie in"):
        SetTeacher(FixedScores(logits), h, threshold=2)


def small_net(seed):
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4))
    net[1].running_mean.normal_()
    net[1].num_batches_tracked.fill_(seed)
    return net


def test_self_correction_makes_the_teacher_the_running_mean_of_itself_and_the_students():
    h = hierparse.load_hierarchy("lip")
    first, second, third = small_net(1), small_net(2), small_net(3)
    expected = {name: (first.state_dict()[name] + second.state_dict()[name] + third.state_dict()[name]) / 3
                for name, value in first.state_dict().items() if value.is_floating_point()}
    teacher = SetTeacher(small_net(1), h, refresh=5)
    teacher.absorb(second)
    torch.testing.assert_close(teacher.model[0].weight, (first[0].weight + second[0].weight) / 2)
    teacher.absorb(third)
    averaged = teacher.model.state_dict()
    for name, value in expected.items():
        torch.testing.assert_close(averaged[name], value, rtol=1e-6, atol=1e-7)
    assert averaged["1.num_batches_tracked"] == 3 and not teacher.model.training  # counters: the student's
    assert not any(parameter.requires_grad for parameter in teacher.model.parameters())
    restored = SetTeacher(small_net(7), h, refresh=5)
    restored.load_state_dict(teacher.state_dict())
    assert restored.models_averaged == 3
    assert all(torch.equal(a, b) for a, b in zip(restored.model.state_dict().values(), averaged.values()))


@pytest.mark.parametrize("options, message", [
    ({"checkpoint": "x.pt", "refresh": -1}, "teacher refresh must be a whole number of iterations >= 0, got -1"),
    ({"checkpoint": "x.pt", "refresh": 2.5}, "teacher refresh must be a whole number of iterations >= 0, got 2.5"),
    ({"checkpoint": "x.pt", "refresh": True}, "teacher refresh must be a whole number of iterations >= 0, got True"),
    ({"checkpoint": "x.pt", "warm_start": "yes"}, "teacher warm_start must be true or false, got 'yes'"),
    ({"checkpoint": "x.pt", "refresh_every": 2}, "teacher must be null or a mapping with checkpoint"),
])
def test_bad_self_correction_options_are_one_line_errors(tmp_path, options, message):
    from hierparse.cli import main
    checkpoint = tmp_path / "teacher"
    tiny = ["crop_size", "32", "eval_size", "32", "batch_size", "2", "synthetic_train_images", "4",
            "synthetic_val_images", "2", "max_iters", "1", "workers", "0", "threads", "1"]
    if not (checkpoint / "last.pt").exists():
        assert main(["train", *tiny, "out", str(checkpoint)]) == 0
    options = {**options, "checkpoint": str(checkpoint / "last.pt")}
    with pytest.raises(ValueError, match=re.escape(message)):
        SetTeacher.from_config(options, hierparse.load_hierarchy("lip"), torch.device("cpu"))


def test_a_self_correcting_run_starts_from_its_teacher_and_resumes_exactly(tmp_path, monkeypatch, capsys):
    """warm_start: the student's first weights are the teacher's; refresh 2: the teacher averages
    itself with the student at iterations 2 and 4, and a run stopped at 2 and resumed ends bitwise
    equal to one that was not stopped (student and teacher)."""
    from hierparse.cli import main
    from hierparse.engine.checkpoint import load_checkpoint
    from hierparse.train import Trainer
    tiny = ["crop_size", "32", "eval_size", "32", "batch_size", "2", "synthetic_val_images", "2",
            "eval_interval", "2", "log_interval", "1", "workers", "0", "threads", "1"]
    assert main(["train", *tiny, "synthetic_train_images", "4", "max_iters", "2", "out", str(tmp_path / "t")]) == 0
    teacher_weights = load_checkpoint(tmp_path / "t" / "last.pt")["model"]
    sources = json.dumps([{"dataset": "synthetic", "n": 4, "weight": 0.5},
                          {"dataset": "synthetic", "n": 4, "first": 4, "coarsen": "region", "weight": 0.5}])
    options = {"checkpoint": str(tmp_path / "t" / "last.pt"), "threshold": 0.0, "warm_start": True, "refresh": 2}
    student = [*tiny, "datasets", sources, "max_iters", "4", "teacher", json.dumps(options)]

    trainer = Trainer(configuration.resolve(None, [*student, "out", str(tmp_path / "straight")]))
    assert all(torch.equal(value, teacher_weights[name]) for name, value in trainer.model.state_dict().items())
    trainer.run()
    assert trainer.solver.teacher.models_averaged == 3  # the checkpoint, the students at 2 and 4

    original_step = Trainer.train_step

    def interrupted_step(self, batch):
        if self.iteration == 2:  # just after the checkpoint and the refresh of iteration 2
            raise KeyboardInterrupt
        return original_step(self, batch)

    monkeypatch.setattr(Trainer, "train_step", interrupted_step)
    with pytest.raises(KeyboardInterrupt):
        main(["train", *student, "out", str(tmp_path / "resumed")])
    assert load_checkpoint(tmp_path / "resumed" / "last.pt")["teacher"]["models_averaged"] == 2
    monkeypatch.setattr(Trainer, "train_step", original_step)
    assert main(["train", *student, "out", str(tmp_path / "resumed"), "--resume"]) == 0
    straight, resumed = (load_checkpoint(tmp_path / run / "last.pt") for run in ("straight", "resumed"))
    for part in ("model", "teacher"):
        state, again = (straight[part], resumed[part]) if part == "model" else \
            (straight[part]["model"], resumed[part]["model"])
        assert all(torch.equal(value, again[name]) for name, value in state.items()), part
    moved = [name for name, value in straight["teacher"]["model"].items()
             if value.is_floating_point() and not torch.equal(value, teacher_weights[name])]
    assert moved  # the refreshes changed the teacher

    capsys.readouterr()
    flat = ["stacked", "false", "skips", "[layer1]"]
    assert main(["train", *student, *flat, "out", str(tmp_path / "flat")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"hierparse: error: teacher warm_start: {tmp_path / 't' / 'last.pt'} holds a model ")
    assert "\n" not in error and "this run builds" in error and not (tmp_path / "flat").exists()


# ---------------------------------------------------------------------- label maps between datasets
def write_map(tmp_path, body, header="name: m\nsource: atr\ntarget: lip\nmap:\n"):
    path = tmp_path / "m.yaml"
    path.write_text(header + body)
    return path


ATR_FULL = "".join(f"  {raw}: Background\n" for raw in range(18))


@pytest.mark.parametrize("body, message", [
    (ATR_FULL.replace("  4: Background", "  4: Cape"), "m.yaml: raw id 4: 'lip' has no class 'Cape'"),
    (ATR_FULL.replace("  4: Background\n", ""), "m.yaml: raw id 4 of 'atr' is not mapped"),
    (ATR_FULL + "  4: Hat\n", "m.yaml: line 23: malformed YAML"),  # a raw id mapped twice
    (ATR_FULL + "  30: Hat\n", "m.yaml: raw id 30: 'atr' does not declare it as a class id"),
    (ATR_FULL.replace("  4: Background", "  4: 7"), "m.yaml: raw id 4: expected a class name, a list of class"),
    (ATR_FULL.replace("  4: Background", "  4: [Hat, Hat]"), r"m.yaml: raw id 4: a class is listed twice"),
    (ATR_FULL.replace("  4: Background", "  4: [Left-arm, Hair]"),
     r"m.yaml: the union \['Hair', 'Left-arm'\] of hierarchy 'lip' has no mirror image \['Hair', 'Right-arm'\]"),
])
def test_label_maps_name_the_file_id_and_class(tmp_path, body, message):
    from hierparse.label_map import load_label_map
    with pytest.raises(hierparse.HierarchyError, match=message):
        load_label_map(write_map(tmp_path, body))


def test_a_map_to_a_group_without_ids_is_refused(tmp_path):
    from hierparse.label_map import load_label_map
    body = "".join(f"  {raw}: Background\n" for raw in range(7)).replace("  1: Background", "  1: Upper-body")
    with pytest.raises(hierparse.HierarchyError, match="raw id 1: class 'Upper-body' of 'atr' has no raw ids"):
        load_label_map(write_map(tmp_path, body, "name: m\nsource: pascal_person_part\ntarget: atr\nmap:\n"))


def test_builtin_maps_read_other_datasets_as_lip_classes():
    from hierparse.label_map import hierarchy_for_maps, load_label_map
    maps = [load_label_map(name) for name in ("atr_to_lip", "pascal_person_part_to_lip", "cihp_to_lip")]
    lip, allocation = hierarchy_for_maps(maps[0].target, maps)
    atr = maps[0].lookup(allocation)
    names, table, members = lip.class_names(2), lip.label_table(), lip.set_members()

    def part_classes(raw):
        entry = int(table[2, raw])
        return {names[entry]} if entry < 20 else {names[c] for c in members[2, entry - 20].nonzero().flatten().tolist()}

    assert part_classes(atr[1]) == {"Hat"} and part_classes(atr[4]) == {"Upper-clothes", "Coat"}
    assert part_classes(atr[12]) == {"Left-leg", "Socks"} and atr[8] == 255 and atr[16] == 255
    assert table[1, atr[4]] == lip.class_names(1).index("Torso")  # a union inside one region: exact there
    assert lip.flip_permutation()[atr[12]] == atr[13] and lip.flip_permutation()[atr[4]] == atr[4]
    ppp = maps[1].lookup(allocation)
    assert part_classes(ppp[1]) == {"Hat", "Hair", "Sunglasses", "Face"}
    assert part_classes(ppp[5]) >= {"Pants", "Skirt", "Left-leg", "Socks", "Dress", "Coat", "Jumpsuits"}
    assert int(table[1, ppp[5]]) >= 5  # thighs: legs or torso garments, a set at the region level too
    cihp = maps[2].lookup(allocation)
    assert [int(cihp[i]) for i in range(25) if i != 10] == [i for i in range(25) if i != 10] and cihp[10] == 22
    assert lip == hierparse.load_hierarchy("lip")  # the unions do not change what is saved


def test_synthetic_images_with_left_and_right_merged():
    from hierparse.data.mixture import build_mixture, source_maps
    from hierparse.label_map import hierarchy_for_maps
    lip = hierparse.load_hierarchy("lip")
    sources = [{"dataset": "synthetic", "n": 4, "map": "lip_without_left_right"}]
    tree, allocation = hierarchy_for_maps(lip, source_maps(sources))
    mixture = build_mixture(sources, lip, lambda sample: sample, 64, "train")
    plain = hierparse.data.SyntheticParsing(lip, n=4, size=64)
    arms = allocation[("Left-arm", "Right-arm")]
    for index in range(4):
        merged, original = mixture[index]["label"], plain[index]["label"]
        assert np.array_equal(merged == arms, np.isin(original, [14, 15]))
        assert np.array_equal(merged[original < 14], original[original < 14])
    assert tree.flip_permutation()[arms] == arms and tree.label_table()[1, arms] == 3  # Arms, exactly


def schp_folder(root, labels_of, count=4, seed=0):
    """An SCHP-layout train split of synthetic people, labels made by labels_of(lip raw ids)."""
    from PIL import Image
    data = hierparse.data.SyntheticParsing("lip", n=count, size=48, seed=seed)
    (root / "train_images").mkdir(parents=True)
    (root / "train_segmentations").mkdir()
    for i in range(count):
        sample = data[i]
        Image.fromarray(sample["image"]).save(root / "train_images" / f"{i}.jpg")
        Image.fromarray(labels_of(sample["label"])).save(root / "train_segmentations" / f"{i}.png")
    (root / "train_id.txt").write_text("".join(f"{i}\n" for i in range(count)))


# LIP raw id -> the ATR raw id an ATR annotator would give (no coat, socks, gloves, jumpsuits in ATR)
LIP_TO_ATR = np.array([0, 1, 2, 14, 3, 4, 7, 4, 12, 6, 4, 17, 5, 11, 14, 15, 12, 13, 9, 10], dtype=np.uint8)


def test_lip_and_atr_folders_train_together_through_the_map(tmp_path):
    """A LIP-layout and an ATR-layout folder in one run: ATR's upper-clothes (4) reaches the part level
    as the set {Upper-clothes, Coat} and the region level as Torso exactly; LIP labels stay exact."""
    from hierparse.data.mixture import build_mixture, label_hierarchy
    from hierparse.data.transforms import eval_transform
    from hierparse.train import train
    schp_folder(tmp_path / "lip", lambda label: label)
    schp_folder(tmp_path / "atr", lambda label: LIP_TO_ATR[label], seed=1)
    sources = [{"dataset": "lip", "root": str(tmp_path / "lip"), "weight": 0.5},
               {"dataset": "atr", "root": str(tmp_path / "atr"), "map": "atr_to_lip", "weight": 0.5}]
    lip = hierparse.load_hierarchy("lip")
    tree = label_hierarchy(sources, lip)
    mixture = build_mixture(sources, lip, eval_transform(tree, 48), 48, "train")
    atr_sample, lip_sample = mixture[4], mixture[0]
    from hierparse.data.mixture import source_maps
    from hierparse.label_map import hierarchy_for_maps
    upper = hierarchy_for_maps(lip, source_maps(sources))[1][("Coat", "Upper-clothes")]
    assert upper in atr_sample["label"].unique().tolist() and 5 not in atr_sample["label"].unique().tolist()
    assert set(lip_sample["label"].unique().tolist()) <= set(range(20))

    labels = torch.stack([atr_sample["label"], lip_sample["label"]])
    logits = [torch.zeros(2, c, 48, 48, requires_grad=True) for c in (2, 5, 20)]
    losses = HierarchicalLoss(tree, ohem=None)(logits, labels)
    person, region, part = torch.autograd.grad(losses.sum(), logits)
    names = lip.class_names(2)
    where = labels[0] == upper
    gaining = (part[0][:, where] < 0).all(1)  # classes whose logits the loss raises at those pixels
    assert {names[c] for c in gaining.nonzero().flatten().tolist()} == {"Upper-clothes", "Coat"}
    assert (region[0][:, where] < 0).sum(0).eq(1).all() and (region[0][2][where] < 0).all()  # Torso, exactly
    exact = labels[1] == 5
    assert ((part[1][:, exact] < 0).sum(0) == 1).all() and (part[1][names.index("Upper-clothes")][exact] < 0).all()

    settings = ["datasets", json.dumps(sources), "max_iters", "2", "batch_size", "2", "crop_size", "32",
                "eval_size", "32", "synthetic_val_images", "2", "eval_interval", "2", "workers", "0",
                "out", str(tmp_path / "run")]
    trainer = train(configuration.resolve(None, settings))
    assert trainer.iteration == 2 and all(math.isfinite(r["loss"]) for r in trainer.history if r["type"] == "train")
    log = (tmp_path / "run" / "metrics.jsonl").read_text()
    assert '"type": "eval"' in log


def test_balanced_marginal_weighs_each_member_by_its_inverse_share():
    from hierparse.data.mixture import build_mixture, exact_pixel_counts
    from hierparse.losses import balanced_members
    h = hierparse.load_hierarchy("lip")
    counts = torch.zeros(256, dtype=torch.int64)
    counts[[1, 2, 4, 13]] = torch.tensor([99, 399, 49, 199])  # Hat, Hair, Sunglasses, Face: + 1 each
    members = balanced_members(h, counts)
    head = members[2, 1]  # part-level set of Head (21)
    torch.testing.assert_close(head[[1, 2, 3, 4]], torch.tensor([0.5, 0.125, 1.0, 0.25]))
    assert head.count_nonzero() == 4 and members[0].count_nonzero() == 0
    logits, labels = lip_batch()
    got = HierarchicalLoss(h, coarse_labels="balanced", class_pixels=counts, ohem=None)(logits, labels)
    torch.testing.assert_close(got.double(), set_reference(logits, labels, h.label_table(), members),
                               rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="coarse_labels balanced needs the pixel counts"):
        HierarchicalLoss(h, coarse_labels="balanced")
    mixture = build_mixture([{"dataset": "synthetic", "n": 3},
                             {"dataset": "synthetic", "n": 3, "first": 3, "coarsen": "region"}], h, None, 32, "train")
    plain = hierparse.data.SyntheticParsing(h, n=3, size=32)
    direct = sum(np.bincount(plain[i]["label"].ravel(), minlength=256) for i in range(3))
    assert np.array_equal(exact_pixel_counts(mixture).numpy(), direct)  # the coarsened source does not count


def test_a_bad_map_stops_training_in_one_line_with_exit_2(tmp_path, capsys):
    from hierparse.cli import main
    from hierparse.label_map import load_label_map
    with pytest.raises(FileNotFoundError, match=r"no_such_map: neither a label map file nor a built-in label map "
                                                r"\(built-ins: atr_to_lip, celebamask_hq_to_helen, cihp_to_lip, lip_without_left_right, "
                                                r"pascal_person_part_to_lip\)"):
        load_label_map("no_such_map")
    bad = write_map(tmp_path, ATR_FULL.replace("  4: Background", "  4: Cape"))
    sources = json.dumps([{"dataset": "atr", "root": str(tmp_path / "atr"), "map": str(bad)}])
    out = tmp_path / "run"
    assert main(["train", "datasets", sources, "out", str(out), "max_iters", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"hierparse: error: {bad}: raw id 4: 'lip' has no class 'Cape'"]
    assert not out.exists()  # nothing trained, no run directory


# ---------------------------------------------------------------------- tree-min with coarse labels
def test_tree_min_scores_a_coarse_label_by_its_path_and_the_nodes_outside_it():
    """HSSN's loss for a pixel labelled Head (21): person, Person and region, Head are positives; at the
    part level Head's four parts carry no term and every other part is a negative."""
    h = hierparse.load_hierarchy("lip")
    parents = [h.parents(level) for level in (1, 2)]
    g = torch.Generator().manual_seed(4)
    logits = [torch.randn(1, c, 1, 2, generator=g, dtype=torch.float64, requires_grad=True) for c in (2, 5, 20)]
    labels = torch.tensor([[[21, 2]]], dtype=torch.uint8)  # Head; Hair
    table, members = h.label_table(), h.set_members()
    losses = ops.tree_min_loss(logits, labels, table, parents, set_members=members, reduction="none")
    want = ops.reference.tree_min_loss(logits, labels, table, parents, set_members=members, reduction="none")
    torch.testing.assert_close(losses, want)
    names = h.class_names(2)
    head = [names.index(n) for n in ("Hat", "Hair", "Sunglasses", "Face")]
    others = [c for c in range(20) if c not in head]
    x = logits[2][0, :, 0, 0].detach()
    # the part level's negatives: each other part's max over itself (a leaf): softplus(x)
    torch.testing.assert_close(losses[2, 0, 0, 0], F.softplus(x[others]).sum())
    assert losses[2, 0, 0, 1] > losses[2, 0, 0, 0] * 0  # Hair pixel: an ordinary path
    grads = torch.autograd.grad(losses[2, 0, 0, 0], logits)
    assert (grads[2][0, head, 0, 0] == 0).all() and (grads[2][0, others, 0, 0] > 0).all()
    with pytest.raises(ValueError, match="labels contain raw id 21, which the table maps to 21 at level 2"):
        ops.tree_min_loss(logits, labels, table, parents)  # without set_members


def test_tree_min_with_sets_against_the_reference_gradcheck_and_opcheck():
    h = hierparse.load_hierarchy("lip")
    parents = [h.parents(level) for level in (1, 2)]
    flat = [p for entry in parents for p in entry]
    table, members = h.label_table(), h.set_members()
    g = torch.Generator().manual_seed(5)
    labels = torch.randint(0, 25, (2, 6, 7), generator=g, dtype=torch.uint8)
    labels[0, 0] = IGNORE
    for dtype, gamma in ((torch.float64, 0.0), (torch.float32, 2.0)):
        logits = [torch.randn(2, c, 6, 7, generator=g, dtype=dtype) for c in (2, 5, 20)]
        for reduction in ("mean", "sum", "none"):
            leaves = [x.clone().requires_grad_(True) for x in logits]
            refs = [x.clone().requires_grad_(True) for x in logits]
            got = ops.tree_min_loss(leaves, labels, table, parents, set_members=members, focal_gamma=gamma,
                                    reduction=reduction, level_weights=[0.5, 1.0, 2.0])
            want = ops.reference.tree_min_loss(refs, labels, table, parents, set_members=members, focal_gamma=gamma,
                                               reduction=reduction, level_weights=[0.5, 1.0, 2.0])
            tolerance = 1e-10 if dtype == torch.float64 else 1e-5
            torch.testing.assert_close(got, want, atol=tolerance, rtol=tolerance)
            weights = torch.rand_like(want)
            for a, b in zip(torch.autograd.grad((got * weights).sum(), leaves),
                            torch.autograd.grad((want * weights).sum(), refs)):
                torch.testing.assert_close(a, b, atol=tolerance, rtol=1e-4)
    small = [torch.randn(1, c, 2, 3, generator=g, dtype=torch.float64, requires_grad=True) for c in (2, 5, 20)]
    few = labels[:1, :2, :3]
    assert torch.autograd.gradcheck(
        lambda *xs: ops.tree_min_loss(list(xs), few, table, parents, set_members=members, reduction="none"), small)
    torch.library.opcheck(torch.ops.hierparse.tree_min_loss.default,
                          ([x.detach().float().requires_grad_(True) for x in small], few, table, flat, [1.0] * 3,
                           0.0, IGNORE, 1, True, members))


def test_hierarchical_tree_min_loss_takes_coarse_labels():
    h = hierparse.load_hierarchy("lip")
    logits, labels = lip_batch(size=(2, 8, 8))
    logits = [F.interpolate(x, size=(8, 8)) for x in logits]
    got = HierarchicalLoss(h, loss="tree_min", ohem=None)(logits, labels)
    want = ops.reference.tree_min_loss(logits, labels, h.label_table(), [h.parents(1), h.parents(2)],
                                       set_members=h.set_members())
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_an_error_in_a_dataloader_worker_reaches_the_cli_as_its_own_line(tmp_path, capsys):
    from PIL import Image
    from hierparse.cli import main
    schp_folder(tmp_path / "lip", lambda label: label, count=2)
    bad = tmp_path / "lip" / "train_segmentations" / "1.png"
    label = np.array(Image.open(bad))
    label[0, 0] = 77
    Image.fromarray(label).save(bad)
    sources = json.dumps([{"dataset": "lip", "root": str(tmp_path / "lip")}])
    code = main(["train", "datasets", sources, "workers", "1", "batch_size", "2", "crop_size", "32", "max_iters", "1",
                 "synthetic_val_images", "2", "eval_size", "32", "out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == [f"hierparse: error: label file {bad} holds raw ids [77] that hierarchy 'lip' does not "
                                 "declare (pass undeclared='ignore' to treat them as ignored)"]


def test_problems_of_a_worker_error_drop_its_traceback():
    from torch.utils.data._utils import ExceptionWrapper
    from hierparse.engine.command import problems_of
    for error, lines in ((ValueError("label file x.png holds raw ids [77]"), ["label file x.png holds raw ids [77]"]),
                         (hierparse.HierarchyError(["a.yaml: one", "a.yaml: two"]), ["a.yaml: one", "a.yaml: two"])):
        try:
            raise error
        except type(error):
            wrapped = ExceptionWrapper(where="in DataLoader worker process 0")
        with pytest.raises(type(error)) as caught:
            wrapped.reraise()
        assert str(caught.value).startswith("Caught ") and problems_of(caught.value) == lines
        assert problems_of(error) == lines


def test_review_edge_cases_of_sets():
    """A set whose members are all -inf scores +inf (as logsumexp); member weights are checked as the
    kernel stores them (float32); a union without a mirror image and an ignore_index among the set
    entries are one-line errors; a kernel without sets runs a table that declares them unused."""
    table = torch.full((1, 256), IGNORE)
    table[0, 0], table[0, 1] = 4, 0  # raw 0: set {0, 1}; raw 1: class 0
    members = torch.zeros(1, 1, 4)
    members[0, 0, :2] = 1
    logits = torch.randn(1, 4, 1, 2, dtype=torch.float64)
    logits[0, :2, 0, 0] = -torch.inf
    labels = torch.tensor([[[0, 1]]], dtype=torch.uint8)
    got = ops.multilevel_cross_entropy([logits], labels, table, set_members=members, reduction="none")
    want = set_reference([logits], labels, table, members, reduction="none")
    assert torch.isinf(got[0, 0, 0, 0]) and got[0, 0, 0, 0] > 0 and torch.equal(got.isinf(), want.isinf())
    for weight, message in ((1e-50, "which has no member"), (1e39, r"the member weight inf \(expected a finite")):
        odd = members.double()
        odd[0, 0, 0], odd[0, 0, 1] = weight, 0
        with pytest.raises(ValueError, match=message):
            ops.multilevel_cross_entropy([logits.float()], labels, table, set_members=odd)
    h = hierarchy_from_yaml(COARSE_WITH_LEFT_GROUP)
    with pytest.raises(ValueError, match=r"class 'Lefts' \(in the union \['Background', 'Lefts'\]\) of hierarchy "
                                         "'mirrors' has no mirror image with raw ids"):
        h.with_unions([["Lefts", "Background"]])
    clash = hierarchy_from_yaml(COARSE_WITH_LEFT_GROUP.replace("name: mirrors\n", "name: mirrors\nignore_index: 5\n"))
    with pytest.raises(ValueError, match="ignore_index 5 collides with class set 0 of level 'limb'"):
        clash.label_table()
    lip = hierparse.load_hierarchy("lip")
    exact_labels = torch.randint(0, 20, (1, 8, 8), dtype=torch.uint8)
    env = {**os.environ, "HIERPARSE_CPU_UPSAMPLING": "gather"}
    code = ("import torch, hierparse, hierparse.ops as o; h = hierparse.load_hierarchy('lip'); g = torch.Generator()"
            ".manual_seed(0); x = [torch.randn(1, c, 4, 4, generator=g) for c in h.num_classes]; "
            f"y = torch.tensor({exact_labels.tolist()}, dtype=torch.uint8); "
            "print(o.multilevel_cross_entropy(x, y, h.label_table(), set_members=h.set_members()).tolist())")
    gathered = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    plain = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert gathered.returncode == 0, gathered.stderr
    torch.testing.assert_close(torch.tensor(json.loads(gathered.stdout)), torch.tensor(json.loads(plain.stdout)))
    assert lip.label_table()[2, 21] == 21  # the table declares sets that these labels do not use


COARSE_WITH_LEFT_GROUP = """\
name: mirrors
levels: [whole, side, limb]
flip_pairs: [[Left-arm, Right-arm], [Left-leg, Right-leg]]
classes:
  - {name: Background, ids: 0}
  - {name: Person, ids: 10, children: [
      {name: Lefts, children: [{name: Left-arm, ids: 1}, {name: Left-leg, ids: 3}]},
      {name: Rights, children: [{name: Right-arm, ids: 2}, {name: Right-leg, ids: 4}]}]}
"""
