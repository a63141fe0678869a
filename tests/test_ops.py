"""The fused multi-level cross-entropy against F.cross_entropy, level by level."""

from __future__ import annotations

import functools
import itertools
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hierparse
from hierparse import ops

pytestmark = pytest.mark.skipif(not ops.HAS_EXTENSION, reason="hierparse._C is not built")

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
IGNORE = 255
TOLERANCE = {  # (loss, gradient) absolute tolerances per logits dtype
    torch.float32: (2e-5, 1e-6),
    torch.float64: (1e-10, 1e-12),
    torch.float16: (2e-3, 1e-5),
    torch.bfloat16: (2e-2, 1e-4),
}


def expected_losses(logits, labels, table, *, align_corners=False, class_weights=None, level_weights=None,
                    label_smoothing=0.0, reduction="mean"):
    """Independent reference: F.interpolate (bilinear) of levels smaller than the labels, then
    F.cross_entropy per level on table[l][labels] in float32/64."""
    out = []
    for level, x in enumerate(logits):
        if x.shape[-2:] != labels.shape[-2:]:
            x = F.interpolate(x, size=labels.shape[-2:], mode="bilinear", align_corners=align_corners)
        dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        target = table[level].to(labels.device)[labels.long()]
        weight = None if class_weights is None or class_weights[level] is None else class_weights[level].to(dtype)
        loss = F.cross_entropy(x.to(dtype), target, weight=weight, ignore_index=IGNORE,
                               label_smoothing=label_smoothing, reduction=reduction)
        if reduction == "mean" and not bool((target != IGNORE).any()):
            loss = (x.to(dtype) * 0).sum()
        out.append(loss * (1.0 if level_weights is None else level_weights[level]))
    return torch.stack(out)


def random_problem(classes=(2, 5, 20), n=2, h=9, w=70, *, num_ids=20, ignored=0.1, dtype=torch.float32,
                   device="cpu", label_dtype=torch.uint8, seed=0, scale=3.0):
    """Logits per level, raw labels (ids 0..num_ids-1 and some IGNORE) and a [L, 256] table."""
    g = torch.Generator().manual_seed(seed)
    table = torch.full((len(classes), 256), IGNORE, dtype=torch.int64)
    for level, c in enumerate(classes):
        table[level, :num_ids] = torch.randint(0, c, (num_ids,), generator=g)
        table[level, :c] = torch.arange(c)  # every class reachable
    labels = torch.randint(0, num_ids, (n, h, w), generator=g)
    labels[torch.rand(n, h, w, generator=g) < ignored] = IGNORE
    logits = [(torch.randn(n, c, h, w, generator=g) * scale).to(dtype) for c in classes]
    return ([x.to(device) for x in logits], labels.to(device, label_dtype), table.to(device))


def with_layout(x: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    if layout == "strided":  # a non-contiguous view: every other column of a wider tensor
        wide = torch.zeros(*x.shape[:3], x.shape[3] * 2, dtype=x.dtype, device=x.device)
        wide[..., ::2] = x
        return wide[..., ::2]
    return x.contiguous()


def op_and_reference(logits, labels, table, **options):
    """The op's losses and expected_losses, each on its own leaf copies of the logits, after
    checking the losses' dtype and shape: (leaves, got, refs, want)."""
    leaves = [x.detach().clone().requires_grad_(True) for x in logits]
    refs = [x.detach().clone().requires_grad_(True) for x in logits]
    got = ops.multilevel_cross_entropy(leaves, labels, table, ignore_index=IGNORE, **options)
    want = expected_losses(refs, labels, table, **options)
    assert got.dtype == (torch.float64 if logits[0].dtype == torch.float64 else torch.float32)
    assert got.shape == want.shape
    return leaves, got, refs, want


def check_against_reference(logits, labels, table, **options):
    dtype = logits[0].dtype
    leaves, got, refs, want = op_and_reference(logits, labels, table, **options)
    loss_tol, grad_tol = TOLERANCE[dtype]
    scale = want.abs().max().item() if want.numel() else 0.0
    torch.testing.assert_close(got, want.to(got.dtype), atol=loss_tol * max(1.0, scale), rtol=1e-5)
    weights = torch.randn_like(want)  # a non-trivial incoming gradient
    got_grads = torch.autograd.grad((got * weights).sum(), leaves)
    want_grads = torch.autograd.grad((want * weights).sum(), refs)
    for level, (g, r) in enumerate(zip(got_grads, want_grads)):
        assert g.dtype == dtype and g.shape == r.shape, f"level {level}"
        torch.testing.assert_close(g.float(), r.float(), atol=grad_tol * max(1.0, weights.abs().max().item()) * 10,
                                   rtol=2e-2 if dtype in (torch.float16, torch.bfloat16) else 1e-4)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_matches_cross_entropy_every_dtype_layout_reduction(device, dtype, layout, reduction):
    logits, labels, table = random_problem(dtype=dtype, device=device, w=300)  # spans several tiles
    logits = [with_layout(x, layout) for x in logits]
    check_against_reference(logits, labels, table, reduction=reduction)


OPTION_GRID = list(itertools.product(["mean", "sum", "none"], [0.0, 0.25], [False, True], [False, True]))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reduction,smoothing,use_class_weights,use_level_weights", OPTION_GRID)
def test_matches_cross_entropy_every_option_combination(device, reduction, smoothing, use_class_weights,
                                                        use_level_weights):
    logits, labels, table = random_problem(classes=(3, 4, 7), n=3, h=7, w=13, num_ids=9, device=device, seed=1)
    g = torch.Generator().manual_seed(2)
    class_weights = ([None, torch.rand(4, generator=g).to(device) + 0.1, torch.rand(7, generator=g).to(device) + 0.1]
                     if use_class_weights else None)
    level_weights = [0.5, 2.0, 1.5] if use_level_weights else None
    check_against_reference(logits, labels, table, reduction=reduction, label_smoothing=smoothing,
                            class_weights=class_weights, level_weights=level_weights)


@pytest.mark.parametrize("label_dtype", [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64])
def test_any_integer_label_dtype(label_dtype):
    logits, labels, table = random_problem(ignored=0.0, label_dtype=label_dtype, num_ids=20)
    check_against_reference(logits, labels, table)


def test_builtin_hierarchy_table_on_raw_lip_ids():
    h = hierparse.load_hierarchy("lip")
    g = torch.Generator().manual_seed(3)
    labels = torch.randint(0, 20, (2, 16, 16), generator=g, dtype=torch.uint8)
    labels[:, :2] = 255
    logits = [torch.randn(2, c, 16, 16, generator=g) for c in h.num_classes]
    check_against_reference(logits, labels, h.label_table(), label_smoothing=0.1)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_gradcheck_float64(reduction, device):
    logits, labels, table = random_problem(classes=(2, 3), n=1, h=3, w=5, num_ids=4, dtype=torch.float64, seed=4,
                                           device=device)
    logits = [x.requires_grad_(True) for x in logits]
    weights = [torch.tensor([0.5, 2.0], dtype=torch.float64, device=device),
               torch.tensor([1.0, 0.3, 1.7], dtype=torch.float64, device=device)]

    def fn(*xs):
        return ops.multilevel_cross_entropy(list(xs), labels, table, class_weights=weights, label_smoothing=0.1,
                                            level_weights=[0.7, 1.3], reduction=reduction)

    assert torch.autograd.gradcheck(fn, logits)


def test_opcheck():
    logits, labels, table = random_problem(classes=(2, 5), n=2, h=5, w=6, num_ids=6)
    packed = torch.rand(7) + 0.5
    for reduction in (0, 1, 2):
        for compute_grad in (False, True):  # the wrapper asks for gradients exactly when logits need them
            xs = [x.clone().requires_grad_(compute_grad) for x in logits]
            torch.library.opcheck(
                torch.ops.hierparse.multilevel_cross_entropy.default,
                (xs, labels, table, packed, [1.0, 0.5], 0.1, IGNORE, reduction, compute_grad),
            )


@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_torch_compile_fullgraph(backend):
    logits, labels, table = random_problem(classes=(2, 5), n=2, h=8, w=8, num_ids=6)

    def step(xs, labels, table):
        return ops.multilevel_cross_entropy(xs, labels, table, label_smoothing=0.1, level_weights=[1.0, 2.0])

    compiled = torch.compile(step, fullgraph=True, backend=backend)
    leaves = [x.clone().requires_grad_(True) for x in logits]
    refs = [x.clone().requires_grad_(True) for x in logits]
    got = compiled(leaves, labels, table)
    want = step(refs, labels, table)
    torch.testing.assert_close(got, want)
    for g, r in zip(torch.autograd.grad(got.sum() * 3, leaves), torch.autograd.grad(want.sum() * 3, refs)):
        torch.testing.assert_close(g, r)


@pytest.mark.parametrize("device", DEVICES)
def test_level_without_valid_pixels_gives_zero_loss_and_gradient(device):
    logits, labels, table = random_problem(classes=(2, 5), num_ids=6, device=device)
    table[1, :] = IGNORE  # level 1 ignores everything
    leaves = [x.requires_grad_(True) for x in logits]
    for reduction in ("mean", "sum"):
        losses = ops.multilevel_cross_entropy(leaves, labels, table, reduction=reduction)
        assert losses[1].item() == 0.0 and torch.isfinite(losses).all()
        grads = torch.autograd.grad(losses.sum(), leaves)
        assert torch.count_nonzero(grads[1]) == 0
        assert torch.count_nonzero(grads[0]) > 0


@pytest.mark.parametrize("device", DEVICES)
def test_all_pixels_ignored_and_single_class(device):
    logits, labels, table = random_problem(classes=(1, 3), num_ids=3, device=device)
    check_against_reference(logits, labels, table)  # one-class level: loss 0, gradient 0
    labels.fill_(IGNORE)
    losses = ops.multilevel_cross_entropy(logits, labels, table)
    assert torch.equal(losses.cpu(), torch.zeros(2))


@pytest.mark.parametrize("device", DEVICES)
def test_stable_for_huge_and_minus_infinite_logits(device):
    logits, labels, table = random_problem(classes=(3, 6), num_ids=6, ignored=0.0, scale=1e4, device=device)
    check_against_reference(logits, labels, table)
    targets = table[1][labels.long()]
    x = logits[1].clone()
    non_target = torch.ones_like(x, dtype=torch.bool).scatter_(1, targets.unsqueeze(1), False)
    x[non_target & (torch.rand_like(x) < 0.5)] = float("-inf")
    check_against_reference([logits[0], x], labels, table)


@pytest.mark.parametrize("device", DEVICES)
def test_nan_logits_give_nan_not_a_crash(device):
    logits, labels, table = random_problem(classes=(2, 3), num_ids=3, ignored=0.0, device=device)
    logits[1][0, 0, 0, 0] = float("nan")
    losses = ops.multilevel_cross_entropy(logits, labels, table)
    assert torch.isnan(losses[1]) and torch.isfinite(losses[0])


def test_inference_returns_no_gradients():
    logits, labels, table = random_problem()
    losses, grads = torch.ops.hierparse.multilevel_cross_entropy(logits, labels, table, None, [1.0] * 3, 0.0,
                                                                  IGNORE, 1, False)
    assert grads == [] and losses.shape == (3,)
    with torch.no_grad():
        leaves = [x.requires_grad_(True) for x in logits]
        assert ops.multilevel_cross_entropy(leaves, labels, table).grad_fn is None


def test_gradients_keep_the_logits_layout():
    logits, labels, table = random_problem()
    leaves = [x.contiguous(memory_format=torch.channels_last).requires_grad_(True) for x in logits]
    _, grads = torch.ops.hierparse.multilevel_cross_entropy(leaves, labels, table, None, [1.0] * 3, 0.0,
                                                             IGNORE, 1, True)
    assert all(g.stride() == x.stride() for g, x in zip(grads, leaves))


@pytest.mark.parametrize("device", DEVICES)
def test_deterministic_across_runs_and_thread_counts(device, assert_same_bits_across_threads):
    logits, labels, table = random_problem(n=4, h=33, w=300, device=device)
    leaves = [x.requires_grad_(True) for x in logits]
    assert_same_bits_across_threads(
        lambda x: ops.multilevel_cross_entropy(x, labels, table, label_smoothing=0.1), leaves)


@pytest.mark.parametrize("width", [256, 250])  # 64-byte aligned rows, and rows that are not
def test_large_gradients_written_with_streaming_stores(width):
    """Above 16 MiB of gradients the CPU kernel streams them past the caches (aligned blocks only)."""
    logits, labels, table = random_problem(classes=(2, 5, 60), n=2, h=128, w=width, scale=1.0)
    assert sum(x.numel() * x.element_size() for x in logits) >= 16 << 20
    check_against_reference(logits, labels, table, label_smoothing=0.1)


def test_cpu_capability_is_reported():
    assert ops.cpu_capability() in ("default", "avx2", "avx512")


@pytest.mark.parametrize("capability", ["default", "avx2", "avx512"])
def test_every_cpu_instruction_set_matches_the_reference(capability):
    """The tile kernel is compiled per instruction set; HIERPARSE_CPU_CAPABILITY picks one."""
    env = {**os.environ, "HIERPARSE_CPU_CAPABILITY": capability}
    probe = subprocess.run([sys.executable, "-c", "import hierparse.ops as o; print(o.cpu_capability())"],
                           capture_output=True, text=True, timeout=120, env=env)
    if "is not supported by this CPU" in probe.stderr:
        pytest.skip(f"this CPU or build lacks {capability}")
    assert probe.returncode == 0 and probe.stdout.strip() == capability, probe.stderr
    selection = ("matches_cross_entropy or integer_label_dtype or streaming_stores or huge_and_minus_infinite"
                 " or nan_logits or without_valid_pixels or single_class or deterministic")
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k",
                             f"({selection}) and not cuda"], capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stdout[-3000:]
    assert " passed" in result.stdout


def test_unknown_cpu_capability_is_a_clear_error():
    env = {**os.environ, "HIERPARSE_CPU_CAPABILITY": "sse9"}
    result = subprocess.run([sys.executable, "-c", "import hierparse.ops as o; o.cpu_capability()"],
                            capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode != 0
    assert "HIERPARSE_CPU_CAPABILITY=sse9 is not a capability; use one of default, avx2, avx512" in result.stderr


def test_remap_labels_matches_table_lookup():
    _, labels, table = random_problem()
    remapped = ops.remap_labels(labels, table)
    assert remapped.shape == (3, *labels.shape) and remapped.dtype == torch.int64
    for level in range(3):
        for raw in labels.unique().tolist():
            assert (remapped[level][labels == raw] == table[level, raw]).all()
    with pytest.raises(ValueError, match="raw id 300 but the table covers 0..255"):
        ops.remap_labels(torch.full((1, 2, 2), 300), table)


@given(
    classes=st.lists(st.integers(1, 9), min_size=1, max_size=4),
    n=st.integers(1, 3), h=st.integers(1, 6), w=st.integers(1, 70),
    num_ids=st.integers(1, 12), ignored=st.sampled_from([0.0, 0.3, 1.0]),
    scale=st.sampled_from([1.0, 30.0, 1e4]), seed=st.integers(0, 2**16),
    smoothing=st.sampled_from([0.0, 0.3]),
)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_property_random_shapes_tables_and_labels(classes, n, h, w, num_ids, ignored, scale, seed, smoothing):
    logits, labels, table = random_problem(tuple(classes), n, h, w, num_ids=num_ids, ignored=ignored, seed=seed,
                                           scale=scale)
    check_against_reference(logits, labels, table, label_smoothing=smoothing)


# ---------------------------------------------------------------------- bad input
def bad(match, logits, labels, table, **options):
    with pytest.raises(ValueError, match=match):
        ops.multilevel_cross_entropy(logits, labels, table, **options)


@pytest.mark.parametrize("device", DEVICES)
def test_labels_outside_the_table(device):
    logits, labels, table = random_problem(classes=(2, 3), num_ids=3, ignored=0.0, device=device)
    labels = labels.long()
    labels[0, 0, 0] = 37
    bad("labels contain raw id 37 but the table covers 0..19", logits, labels, table[:, :20])
    labels[0, 0, 0] = -1
    bad("labels contain raw id -1", logits, labels, table)


@pytest.mark.parametrize("device", DEVICES)
def test_table_entry_beyond_the_level_classes(device):
    """An entry past a level's classes (a class set without set_members) raises once a label uses it;
    unused, it changes nothing."""
    logits, labels, table = random_problem(classes=(2, 3), num_ids=3, device=device)
    before = ops.multilevel_cross_entropy(logits, labels, table)
    table[1, 7] = 3
    assert torch.equal(ops.multilevel_cross_entropy(logits, labels, table), before)
    labels[0, 0, 0] = 7
    bad(r"labels contain raw id 7, which the table maps to 3 at level 1, but level 1 logits have 3 classes "
        r"\(0..2\); an entry C \+ s names class set s \(a coarse label\), which needs set_members",
        logits, labels, table)
    table[1, 7] = -5
    bad("to class -5 at level 1", logits, labels, table)


def test_shape_mismatches():
    logits, labels, table = random_problem(classes=(2, 3), h=6, w=7, num_ids=3)
    bad(r"level 1 logits are \[2, 3, 6, 8\] but labels are \[2, 6, 7\]",
        [logits[0], torch.cat([logits[1], logits[1][..., :1]], 3)], labels, table)
    bad(r"level 0 logits are \[1, 2, 6, 7\]", [logits[0][:1], logits[1]], labels, table)
    bad(r"labels must be \[N, H, W\]", logits, labels[0], table)
    bad(r"table must be \[L, K\] with L = 2 levels of logits, got \[3, 256\]", logits, labels,
        torch.cat([table, table[:1]]))
    bad(r"table must be \[L, K\]", logits, labels, table[0])
    bad(r"level 1 logits are \[2, 6, 7\]", [logits[0], logits[1][:, 0]], labels, table)


def test_float_labels_and_tables():
    logits, labels, table = random_problem(classes=(2, 3), num_ids=3)
    bad("labels must be an integer tensor of raw ids", logits, labels.float(), table)
    bad(r"labels must be an integer tensor of raw ids \(uint8, int8, int16, int32 or int64\), got UInt16", logits,
        labels.to(torch.uint16), table)
    bad("table must be an integer tensor, got Float", logits, labels, table.float())


def test_mixed_dtypes_and_devices():
    logits, labels, table = random_problem(classes=(2, 3), num_ids=3)
    bad("level 1 logits are Double but level 0 logits are Float", [logits[0], logits[1].double()], labels, table)
    bad("logits must be float32, float64, float16 or bfloat16", [x.long() for x in logits], labels, table)


def test_tables_on_another_device_than_the_logits_or_the_cpu():
    """The CPU kernel itself (a meta table would dispatch to the fake kernel) refuses each table
    argument on a device other than the logits' or the CPU."""
    logits, labels, table = random_problem(classes=(2, 3), num_ids=3)
    cpu_kernel = functools.partial(torch.ops.hierparse.multilevel_cross_entropy.default.redispatch,
                                   torch._C.DispatchKeySet(torch._C.DispatchKey.CPU))
    meta = {"table": table.to("meta"), "class_weights": torch.ones(5, device="meta"),
            "set_members": torch.zeros(2, 1, 3, device="meta")}
    for name, what in (("table", "table is"), ("class_weights", "class weights are"), ("set_members", "set_members are")):
        args = {"table": table, "class_weights": None, "set_members": None, name: meta[name]}
        with pytest.raises(ValueError, match=f"multilevel_cross_entropy: {what} on meta but level 0 logits are on "
                                             r"cpu \(expected the logits' device or the CPU\)"):
            cpu_kernel(logits, labels, args["table"], args["class_weights"], [1.0, 1.0], 0.0, IGNORE, 1, False,
                       False, args["set_members"], None)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_and_cpu_tensors_mixed():
    logits, labels, table = random_problem(classes=(2, 3), num_ids=3)
    bad("labels are on cuda:0 but level 0 logits are on cpu", logits, labels.cuda(), table)
    bad("table is on cuda:0 but level 0 logits are on cpu", logits, labels, table.cuda())


def host_syncs(call) -> int:
    """How many times `call()` makes the host wait for the GPU (torch's sync debug mode)."""
    import warnings

    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            call()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return sum("synchronizing" in str(w.message) for w in caught)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_logits_take_cpu_tables_without_a_host_sync():
    """Table, class sets and class weights on the CPU give the bits of device copies, and a call then
    waits for the GPU once (its label pre-pass; OHEM twice), where device copies add a wait each."""
    h = hierparse.load_hierarchy("lip")
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 25, (2, 33, 40), generator=g, dtype=torch.uint8).cuda()  # 20..24: coarse
    logits = [torch.randn(2, c, 17, 20, generator=g).cuda() for c in h.num_classes]
    weights = [torch.rand(c, generator=g) + 0.5 for c in h.num_classes]
    cpu = dict(table=h.label_table(), set_members=h.set_members(), class_weights=weights)
    gpu = {"table": cpu["table"].cuda(), "set_members": cpu["set_members"].cuda(),
           "class_weights": [w.cuda() for w in weights]}
    calls = {
        "cross_entropy": (1, lambda t: ops.multilevel_cross_entropy(logits, labels, **t)),
        "ohem": (2, lambda t: ops.ohem_cross_entropy(logits, labels, threshold=0.7, min_kept=100, **t)),
    }
    for name, (syncs, call) in calls.items():
        want = call(gpu)
        assert torch.equal(call(cpu), want), name
        assert host_syncs(lambda: call(cpu)) <= syncs < host_syncs(lambda: call(gpu)), name


def test_weights_of_the_wrong_length():
    logits, labels, table = random_problem(classes=(2, 3), num_ids=3)
    bad("got 3 level weights for 2 levels", logits, labels, table, level_weights=[1, 1, 1])
    bad("got 1 class-weight entries for 2 levels", logits, labels, table, class_weights=[torch.ones(2)])
    bad(r"level 1 class weights have shape \[4\] but level 1 logits have 3 classes", logits, labels, table,
        class_weights=[None, torch.ones(4)])
    bad("reduction must be one of", logits, labels, table, reduction="max")
    bad("label_smoothing must lie in", logits, labels, table, label_smoothing=1.5)


def test_fallback_to_reference_warns_once_without_the_extension():
    code = (
        "import sys, warnings; sys.modules['hierparse._C'] = None\n"
        "warnings.simplefilter('always')\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    import torch, hierparse.ops as ops\n"
        "    import hierparse.ops\n"
        "assert not ops.HAS_EXTENSION\n"
        "messages = [str(w.message) for w in caught if 'hierparse._C is not built' in str(w.message)]\n"
        "assert len(messages) == 1 and 'pip install --no-build-isolation -e .' in messages[0], messages\n"
        "x = [torch.randn(1, 2, 3, 3, requires_grad=True)]\n"
        "table = torch.tensor([[0, 1, 255]])\n"
        "labels = torch.tensor([[[0, 1, 2]] * 3])\n"
        "loss = ops.multilevel_cross_entropy(x, labels, table)\n"
        "ref = torch.nn.functional.cross_entropy(x[0], table[0][labels], ignore_index=255)\n"
        "assert torch.allclose(loss[0], ref)\n"
        "print('fallback ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "fallback ok" in result.stdout
