"""predict.decode: independent, consistent and tree per-level class maps from per-level logits."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hierparse import load_hierarchy
from hierparse.hierarchy import builtin_names
from hierparse.inference import decode

HIERARCHIES = {name: load_hierarchy(name) for name in builtin_names()}


def random_logits(hierarchy, seed: int, size=(3, 4), batch=2, scale=3.0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [scale * torch.randn(batch, classes, *size, generator=generator)
            for classes in hierarchy.num_classes]


def brute_force_paths(hierarchy, logits, mode="consistent") -> list[np.ndarray]:
    """Best root-to-leaf path per pixel by enumerating leaves, from the YAML tree (no parents()):
    the product of softmax probabilities (consistent) or the sum of sigmoid scores (tree)."""
    # for every finest class, the class index of its ancestor at each level, via the label table:
    # all raw ids of a fine class map to the same class at every level.
    table = hierarchy.label_table().numpy()
    fine_ids = hierarchy.fine_to_raw().numpy()
    paths = np.stack([table[level, fine_ids] for level in range(hierarchy.num_levels)], axis=1)
    node = (lambda x: torch.softmax(x, dim=1)) if mode == "consistent" else torch.sigmoid
    path_score = np.prod if mode == "consistent" else np.sum
    probs = [node(x.double()).numpy() for x in logits]
    n, _, h, w = logits[0].shape
    out = [np.zeros((n, h, w), dtype=np.int64) for _ in range(hierarchy.num_levels)]
    for i, y, x in itertools.product(range(n), range(h), range(w)):
        scores = [path_score([probs[l][i, path[l], y, x] for l in range(len(path))]) for path in paths]
        best = paths[int(np.argmax(scores))]
        for level in range(hierarchy.num_levels):
            out[level][i, y, x] = best[level]
    return out


@settings(max_examples=40, deadline=None)
@given(name=st.sampled_from(sorted(HIERARCHIES)), seed=st.integers(0, 2**31 - 1),
       scale=st.floats(0.1, 20.0), mode=st.sampled_from(["consistent", "tree"]))
def test_path_decodings_never_contradict_the_level_above(name, seed, scale, mode):
    hierarchy = HIERARCHIES[name]
    maps = decode(random_logits(hierarchy, seed, scale=scale), hierarchy, (5, 7), mode=mode)
    for level in range(1, hierarchy.num_levels):
        parents = torch.tensor(hierarchy.parents(level))
        assert torch.equal(parents[maps[level]], maps[level - 1])


@pytest.mark.parametrize("mode", ["consistent", "tree"])
@pytest.mark.parametrize("name", ["lip", "cityscapes", "helen"])
def test_path_decodings_find_the_best_path(name, mode):
    hierarchy = HIERARCHIES[name]
    logits = random_logits(hierarchy, seed=3, size=(3, 3))
    maps = decode(logits, hierarchy, (3, 3), mode=mode)
    for got, expected in zip(maps, brute_force_paths(hierarchy, logits, mode)):
        np.testing.assert_array_equal(got.numpy(), expected)


def test_independent_decoding_is_argmax_per_level():
    hierarchy = HIERARCHIES["lip"]
    logits = random_logits(hierarchy, seed=4, size=(4, 4))
    maps = decode(logits, hierarchy, 4)
    assert [m.dtype for m in maps] == [torch.int64] * 3
    for got, scores in zip(maps, logits):
        np.testing.assert_array_equal(got.numpy(), scores.numpy().argmax(axis=1))


def test_path_product_overrides_an_unsure_coarse_level():
    # LIP: person level {Background, Person}; region {Background, Head, ...}; part {.., Hair=2, ..}
    hierarchy = HIERARCHIES["lip"]
    person = torch.log(torch.tensor([0.51, 0.49])).view(1, 2, 1, 1)
    region = torch.log(torch.tensor([0.1, 0.6, 0.1, 0.1, 0.1])).view(1, 5, 1, 1)
    part = torch.full((1, 20, 1, 1), -10.0)
    part[0, 2] = 10.0  # Hair, surely
    independent = decode([person, region, part], hierarchy, 1)
    consistent = decode([person, region, part], hierarchy, 1, mode="consistent")
    assert [m.item() for m in independent] == [0, 1, 2]  # Background, Head, Hair: contradictory
    assert [m.item() for m in consistent] == [1, 1, 2]  # Person, Head, Hair


def test_tree_decoding_sums_sigmoid_scores_along_the_path():
    # one pixel, LIP: Background scores sigmoid 0.6 at every level, the path Person > Head > Hair
    # 0.5, 0.9, 0.9, every other node 0.01. Path sums 1.8 vs 2.3: tree picks Hair and its ancestors,
    # where the per-level argmax puts the pixel in the background at the top level.
    hierarchy = HIERARCHIES["lip"]
    logit = lambda p: float(np.log(p / (1 - p)))  # noqa: E731
    levels = [torch.full((1, c, 1, 1), logit(0.01)) for c in hierarchy.num_classes]
    for level, (background, path_class, path_score) in enumerate([(0, 1, 0.5), (0, 1, 0.9), (0, 2, 0.9)]):
        levels[level][0, background] = logit(0.6)
        levels[level][0, path_class] = logit(path_score)
    assert [m.item() for m in decode(levels, hierarchy, 1, mode="tree")] == [1, 1, 2]
    assert [m.item() for m in decode(levels, hierarchy, 1, mode="independent")] == [0, 1, 2]


def test_logits_are_upsampled_bilinearly_to_size():
    hierarchy = HIERARCHIES["cityscapes"]
    coarse = torch.zeros(1, 7, 1, 2)
    coarse[0, 3, 0, 0] = 1.0  # left column: class 3, right column: class 0
    coarse[0, 0, 0, 1] = 1.0
    fine = torch.zeros(1, 19, 1, 2)
    # bilinear (align_corners=False) from 2 to 8 columns: column x samples source (x + 0.5) / 4 - 0.5,
    # so columns 0-3 weigh the left one more and 4-7 the right one
    maps = decode([coarse, fine], hierarchy, (2, 8))
    assert tuple(maps[0].shape) == (1, 2, 8) and tuple(maps[1].shape) == (1, 2, 8)
    assert maps[0][0, 0].tolist() == [3, 3, 3, 3, 0, 0, 0, 0]


def test_flat_logits_are_merged_up_the_tree():
    hierarchy = HIERARCHIES["lip"]
    fine = torch.randn(2, 20, 6, 6, generator=torch.Generator().manual_seed(5))
    table = hierarchy.label_table()
    for mode in ("independent", "consistent", "tree"):
        maps = decode([fine], hierarchy, (6, 6), mode=mode)
        assert len(maps) == 3
        raw = hierarchy.to_raw(maps[2]).long()
        assert torch.equal(maps[2], fine.argmax(1))
        for level in range(3):
            assert torch.equal(maps[level], table[level][raw])


def test_bad_arguments():
    hierarchy = HIERARCHIES["lip"]
    logits = random_logits(hierarchy, seed=6)
    with pytest.raises(ValueError, match="unknown decode mode 'greedy'; choices: independent, consistent, tree"):
        decode(logits, hierarchy, 4, mode="greedy")
    with pytest.raises(ValueError, match="has 3 levels; got 2 logit maps"):
        decode(logits[:2], hierarchy, 4)
    with pytest.raises(ValueError, match=r"logits of level 1 have shape \(2, 6, 3, 4\); expected \[N, 5, h, w\]"):
        decode([logits[0], torch.zeros(2, 6, 3, 4), logits[2]], hierarchy, 4)
    with pytest.raises(ValueError, match=r"logits of level 0 have shape \(2, 5, 3, 4\); expected \[N, 20"):
        decode([logits[1]], hierarchy, 4)
