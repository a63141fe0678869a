"""HierarchicalLoss: upsampling, level selection for flat models, weights, bad input."""

import re

import pytest
import torch
import torch.nn.functional as F

import hierparse
from hierparse import HierarchicalLoss
from hierparse.losses import OHEM
from hierparse.ops.reference import ohem_kept


def reference(logits, labels, table, level_weights, class_weights):
    out = []
    for level, x in enumerate(logits):
        x = F.interpolate(x, size=labels.shape[-2:], mode="bilinear", align_corners=False)
        target = table[level][labels.long()]
        out.append(level_weights[level] * F.cross_entropy(x, target, weight=class_weights[level], ignore_index=255))
    return torch.stack(out)


def test_matches_upsampled_cross_entropy_per_level():
    h = hierparse.load_hierarchy("lip")
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 20, (2, 32, 32), generator=g, dtype=torch.uint8)
    labels[:, :3] = 255
    logits = [torch.randn(2, c, 8 * 2**i, 8 * 2**i, generator=g, requires_grad=True) for i, c in enumerate(h.num_classes)]
    weights = [None, None, torch.rand(20, generator=g) + 0.5]
    loss = HierarchicalLoss(h, level_weights=[0.5, 1.0, 2.0], class_weights=weights)
    got = loss(logits, labels)
    want = reference(logits, labels, h.label_table(), [0.5, 1.0, 2.0], weights)
    torch.testing.assert_close(got, want)
    for a, b in zip(torch.autograd.grad(got.sum(), logits), torch.autograd.grad(want.sum(), logits)):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("ohem", [None, OHEM(0.7, 40)], ids=["mean", "ohem"])
def test_low_resolution_logits_go_to_the_fused_op_without_interpolate(ohem, monkeypatch):
    """The softmax loss upsamples inside the fused op: the losses and gradients of F.interpolate
    followed by the op (the code before), within float32 rounding, and F.interpolate is not called."""
    h = hierparse.load_hierarchy("lip")
    g = torch.Generator().manual_seed(5)
    labels = torch.randint(0, 20, (2, 45, 37), generator=g, dtype=torch.uint8)
    labels[:, :4] = 255
    logits = [torch.randn(2, c, *size, generator=g, requires_grad=True)
              for c, size in zip(h.num_classes, ((6, 5), (12, 10), (45, 37)))]
    loss = HierarchicalLoss(h, level_weights="fine", class_weights=[None, torch.rand(5, generator=g) + 0.5, None],
                            label_smoothing=0.1, ohem=ohem)
    upsampled = [F.interpolate(x, size=(45, 37), mode="bilinear", align_corners=False) for x in logits]
    before = loss(upsampled, labels)
    before_grads = torch.autograd.grad(before.sum(), logits)

    def no_interpolate(*args, **kwargs):
        raise AssertionError("F.interpolate called")

    monkeypatch.setattr(F, "interpolate", no_interpolate)
    after = loss(logits, labels)
    torch.testing.assert_close(after, before)
    for a, b in zip(torch.autograd.grad(after.sum(), logits), before_grads):
        torch.testing.assert_close(a, b)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_low_resolution_logits_on_cuda_match_the_cpu():
    """The CUDA kernel upsamples inside the op too (its gather algorithm): the same losses as the CPU."""
    h = hierparse.load_hierarchy("lip")
    g = torch.Generator().manual_seed(6)
    labels = torch.randint(0, 20, (2, 33, 29), generator=g, dtype=torch.uint8)
    logits = [torch.randn(2, c, 9, 8, generator=g) for c in h.num_classes]
    loss = HierarchicalLoss(h, level_weights="fine", ohem=OHEM(0.7, 50))
    cpu = loss(logits, labels)
    gpu = loss.cuda()([x.cuda() for x in logits], labels.cuda())
    torch.testing.assert_close(gpu.cpu(), cpu)


def test_flat_model_is_scored_on_the_finest_level():
    h = hierparse.load_hierarchy("helen")
    labels = torch.randint(0, 11, (1, 16, 16), dtype=torch.uint8)
    fine = torch.randn(1, 11, 16, 16)
    got = HierarchicalLoss(h)([fine], labels)
    want = F.cross_entropy(fine, h.label_table()[-1][labels.long()], ignore_index=255)
    assert got.shape == (1,)
    torch.testing.assert_close(got[0], want)


def test_tables_and_weights_stay_float32_on_the_cpu():
    """The op reads them on the host: kept there, a GPU step copies nothing back (no host sync)."""
    loss = HierarchicalLoss("lip", class_weights=[None, torch.ones(5, dtype=torch.float64), None])
    loss = loss.to(torch.float64).to("meta")
    assert list(loss.buffers()) == []
    for tensor in (loss.table, loss.set_members, *loss.class_weights):
        assert tensor.device.type == "cpu"
    assert loss.table.dtype == torch.int64 and [w.dtype for w in loss.class_weights] == [torch.float32] * 3


def test_bad_input():
    with pytest.raises(ValueError, match="got 2 level weights for the 3 levels of 'lip'"):
        HierarchicalLoss("lip", level_weights=[1, 1])
    with pytest.raises(ValueError, match=r"class weights of level 1 \(region\) have 4 entries but the level has 5"):
        HierarchicalLoss("lip", class_weights=[None, [1, 1, 1, 1], None])
    with pytest.raises(ValueError, match="got 2 levels of logits; hierarchy 'lip' has 3"):
        HierarchicalLoss("lip")([torch.randn(1, 2, 4, 4)] * 2, torch.zeros(1, 4, 4, dtype=torch.uint8))


@pytest.mark.parametrize("focal_gamma", [0.0, 2.0])
def test_tree_min_matches_the_reference_on_upsampled_logits_with_the_hierarchy_tree(focal_gamma):
    h = hierparse.load_hierarchy("lip")
    g = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 20, (2, 16, 16), generator=g, dtype=torch.uint8)
    labels[:, :2] = 255
    logits = [torch.randn(2, c, 4 * 2**i, 4 * 2**i, generator=g, requires_grad=True) for i, c in enumerate(h.num_classes)]
    got = HierarchicalLoss(h, loss="tree_min", focal_gamma=focal_gamma, level_weights="fine")(logits, labels)
    # the tree written out by hand from lip.yaml (classes in file order): background continued down,
    # then head (4 parts), torso (6), arms (3), legs (6) under person
    part_region = [0] + [1] * 4 + [2] * 6 + [3] * 3 + [4] * 6
    region_person = [0, 1, 1, 1, 1]
    assert h.parents(2) == part_region and h.parents(1) == region_person
    upsampled = [F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False) for x in logits]
    want = hierparse.ops.reference.tree_min_loss(upsampled, labels, h.label_table(), [region_person, part_region],
                                                 focal_gamma=focal_gamma, level_weights=[0.25, 0.5, 1.0])
    torch.testing.assert_close(got, want)
    for a, b in zip(torch.autograd.grad(got.sum(), logits), torch.autograd.grad(want.sum(), logits)):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("options, message", [
    (dict(loss="hinge"), "loss must be one of softmax, tree_min, got 'hinge'"),
    (dict(loss="tree_min", ohem=OHEM()), "ohem: for loss softmax only, not tree_min"),
    (dict(loss="tree_min", label_smoothing=0.1), "label_smoothing: for loss softmax only"),
    (dict(loss="tree_min", class_weights=[None, None, [1.0] * 20]), "class_weights: for loss softmax only"),
    (dict(focal_gamma=1.0), "applies to loss tree_min only"),
    (dict(loss="tree_min", focal_gamma=-1.0), "focal_gamma must be >= 0"),
])
def test_tree_min_bad_options(options, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        HierarchicalLoss("lip", **options)


def test_tree_min_needs_every_level():
    with pytest.raises(ValueError, match="loss tree_min needs one output per level"):
        HierarchicalLoss("lip", loss="tree_min")([torch.randn(1, 20, 4, 4)], torch.zeros(1, 4, 4, dtype=torch.uint8))


# --------------------------------------------------------------------------- hard-pixel mining
def ohem_reference(logits, labels, table, threshold, min_kept, class_weights=None):
    """mmsegmentation's OHEMPixelSampler (softmax target probability, sort, threshold), then the mean
    per-pixel cross-entropy over the kept pixels, level by level."""
    out = []
    for level, x in enumerate(logits):
        x = F.interpolate(x, size=labels.shape[-2:], mode="bilinear", align_corners=False)
        target = table[level][labels.long()]
        valid = target != 255
        safe_target = torch.where(valid, target, torch.zeros_like(target))
        probability = F.softmax(x.detach(), dim=1).gather(1, safe_target.unsqueeze(1)).squeeze(1)
        ordered = probability[valid].sort().values
        floor = ordered[min(min_kept * labels.shape[0], ordered.numel() - 1)] if ordered.numel() else 0.0
        kept = valid & (probability < max(float(floor), threshold))
        weight = None if class_weights is None else class_weights[level]
        loss = F.cross_entropy(x, target, weight=weight, ignore_index=255, reduction="none")
        out.append((loss * kept).sum() / kept.sum().clamp(min=1))
    return torch.stack(out)


@pytest.mark.parametrize("threshold, min_kept", [(0.7, 4), (0.05, 300), (1.0, 0), (0.3, 10_000)])
def test_ohem_matches_the_sampler_and_its_gradients(threshold, min_kept):

    h = hierparse.load_hierarchy("lip")
    g = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 20, (2, 24, 24), generator=g, dtype=torch.uint8)
    labels[0, :5] = 255
    logits = [(2 * torch.randn(2, c, 12, 12, generator=g)).requires_grad_() for c in h.num_classes]
    weights = [None, torch.rand(5, generator=g) + 0.5, None]
    loss = HierarchicalLoss(h, class_weights=weights, ohem=OHEM(threshold, min_kept))
    got = loss(logits, labels)
    want = ohem_reference(logits, labels, h.label_table(), threshold, min_kept, [None, weights[1], None])
    torch.testing.assert_close(got, want)
    for a, b in zip(torch.autograd.grad(got.sum(), logits), torch.autograd.grad(want.sum(), logits)):
        torch.testing.assert_close(a, b)


def test_ohem_keeps_at_least_min_kept_and_only_hard_pixels():

    g = torch.Generator().manual_seed(2)
    probability = torch.rand(2, 10, 10, generator=g)
    valid = torch.rand(2, 10, 10, generator=g) > 0.2
    assert int(ohem_kept(probability, valid, 0.01, 30).sum()) == 60  # 30 per image, distinct values
    kept = ohem_kept(probability, valid, 0.5, 0)
    assert torch.equal(kept, valid & (probability < 0.5))
    assert not ohem_kept(probability, torch.zeros_like(valid), 0.5, 10).any()  # nothing valid


def test_ohem_has_one_default_the_configs():
    """A config naming only the threshold keeps the default run's min_kept, not another number."""
    from hierparse.config import DEFAULTS
    assert OHEM.from_config(DEFAULTS["ohem"]) == OHEM()
    assert OHEM.from_config({"threshold": 0.8}) == OHEM(0.8, DEFAULTS["ohem"]["min_kept"])


def test_ohem_level_without_valid_pixels_gives_zero():

    h = hierparse.load_hierarchy("lip")
    labels = torch.full((1, 8, 8), 255, dtype=torch.uint8)
    logits = [torch.randn(1, c, 8, 8, requires_grad=True) for c in h.num_classes]
    losses = HierarchicalLoss(h, ohem=OHEM())(logits, labels)
    assert torch.equal(losses, torch.zeros(3))
    assert all(not g.any() for g in torch.autograd.grad(losses.sum(), logits))


@pytest.mark.parametrize("options, message", [
    ({"threshold": 0}, "ohem threshold must be a probability in (0, 1], got 0"),
    ({"min_kept": -1}, "ohem min_kept must be a whole number >= 0, got -1"),
    ({"min_kept": True}, "ohem min_kept must be a whole number >= 0, got True"),
    ({"keep": 3}, "ohem must be null or a mapping with threshold and min_kept"),
])
def test_ohem_bad_options(options, message):
    from hierparse import config

    with pytest.raises(ValueError) as error:
        config.resolve(None, ["ohem", str(options)])
    assert message in str(error.value)


@pytest.mark.parametrize("name, expected", [("lip", [0.25, 0.5, 1.0]), ("cityscapes", [0.5, 1.0])])
def test_fine_level_weights_halve_towards_the_root(name, expected):
    h = hierparse.load_hierarchy(name)
    g = torch.Generator().manual_seed(3)
    labels = torch.randint(0, 19, (1, 8, 8), generator=g, dtype=torch.uint8)
    logits = [torch.randn(1, c, 8, 8, generator=g) for c in h.num_classes]
    fine = HierarchicalLoss(h, level_weights="fine")
    assert fine.level_weights == expected
    torch.testing.assert_close(fine(logits, labels), HierarchicalLoss(h, level_weights=expected)(logits, labels))
    torch.testing.assert_close(HierarchicalLoss(h, level_weights="fine")([logits[-1]], labels),
                               HierarchicalLoss(h)([logits[-1]], labels))  # a flat model: the finest weighs 1
    with pytest.raises(ValueError, match="level_weights must be a list, null or 'fine', got 'coarse'"):
        HierarchicalLoss(h, level_weights="coarse")
