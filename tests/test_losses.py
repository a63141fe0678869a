"""HierarchicalLoss: upsampling, level selection for flat models, weights, bad input."""

import pytest
import torch
import torch.nn.functional as F

import hierparse
from hierparse import HierarchicalLoss


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


def test_flat_model_is_scored_on_the_finest_level():
    h = hierparse.load_hierarchy("helen")
    labels = torch.randint(0, 11, (1, 16, 16), dtype=torch.uint8)
    fine = torch.randn(1, 11, 16, 16)
    got = HierarchicalLoss(h)([fine], labels)
    want = F.cross_entropy(fine, h.label_table()[-1][labels.long()], ignore_index=255)
    assert got.shape == (1,)
    torch.testing.assert_close(got[0], want)


def test_table_and_weights_follow_the_module_device():
    loss = HierarchicalLoss("lip", class_weights=[None, torch.ones(5), None]).to(torch.float64)
    assert loss.table.dtype == torch.int64  # .to(dtype) leaves the integer table alone
    assert {name for name, _ in loss.named_buffers()} == {"table", "class_weights_0", "class_weights_1", "class_weights_2"}


def test_bad_input():
    with pytest.raises(ValueError, match="got 2 level weights for the 3 levels of 'lip'"):
        HierarchicalLoss("lip", level_weights=[1, 1])
    with pytest.raises(ValueError, match=r"class weights of level 1 \(region\) have 4 entries but the level has 5"):
        HierarchicalLoss("lip", class_weights=[None, [1, 1, 1, 1], None])
    with pytest.raises(ValueError, match="got 2 levels of logits; hierarchy 'lip' has 3"):
        HierarchicalLoss("lip")([torch.randn(1, 2, 4, 4)] * 2, torch.zeros(1, 4, 4, dtype=torch.uint8))
