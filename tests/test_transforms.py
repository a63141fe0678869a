"""Joint transforms: flips swap left/right ids, crops pad with ignore, labels stay exact uint8."""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from hierparse import load_hierarchy
from hierparse.data import SyntheticParsing, eval_transform, train_transform
from hierparse.data.transforms import (
    ColorJitter,
    Pad,
    RandomCrop,
    RandomHorizontalFlip,
    RandomScale,
    Resize,
    ToTensor,
)

# Written out from the class lists (LIP: arms 14/15, legs 16/17, shoes 18/19; ATR: shoes 9/10,
# legs 12/13, arms 14/15), independent of Hierarchy.flip_permutation().
LIP_SWAP = {14: 15, 15: 14, 16: 17, 17: 16, 18: 19, 19: 18}
ATR_SWAP = {9: 10, 10: 9, 12: 13, 13: 12, 14: 15, 15: 14}


def sample_of(label: np.ndarray, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (*label.shape, 3), dtype=np.uint8)
    return {"image": image, "label": label.astype(np.uint8), "path": "x"}


def swapped(label: np.ndarray, swap: dict[int, int]) -> np.ndarray:
    return np.vectorize(lambda v: swap.get(int(v), int(v)), otypes=[np.uint8])(label)


# A person's left arm on the image's right, right arm on the left, legs and shoes below.
LIP_PERSON = np.array(
    [[0, 15, 5, 5, 14, 0], [0, 15, 5, 5, 14, 255], [0, 17, 9, 9, 16, 0], [0, 19, 0, 0, 18, 2]], dtype=np.uint8
)
ATR_PERSON = np.array(
    [[0, 15, 4, 4, 14, 0], [0, 15, 4, 4, 14, 255], [0, 13, 6, 6, 12, 0], [0, 10, 0, 0, 9, 16]], dtype=np.uint8
)


@pytest.mark.parametrize("name, label, swap", [("lip", LIP_PERSON, LIP_SWAP), ("atr", ATR_PERSON, ATR_SWAP)])
def test_flip_mirrors_pixels_and_swaps_left_right(name, label, swap):
    sample = sample_of(label)
    flipped = RandomHorizontalFlip(name, p=1.0)(sample)
    np.testing.assert_array_equal(flipped["image"], sample["image"][:, ::-1])
    np.testing.assert_array_equal(flipped["label"], swapped(label[:, ::-1], swap))
    assert flipped["label"].dtype == np.uint8
    # Mirroring twice gives the original back.
    twice = RandomHorizontalFlip(name, p=1.0)(flipped)
    np.testing.assert_array_equal(twice["label"], label)


def test_flip_with_probability_zero_changes_nothing():
    sample = sample_of(np.array([[14, 15]], dtype=np.uint8))
    kept = RandomHorizontalFlip("lip", p=0.0)(sample)
    np.testing.assert_array_equal(kept["label"], sample["label"])
    np.testing.assert_array_equal(kept["image"], sample["image"])


def test_crop_larger_than_sample_pads_label_with_ignore_and_image_with_fill():
    label = np.arange(120, dtype=np.uint8).reshape(10, 12) % 20
    sample = sample_of(label)
    torch.manual_seed(0)
    out = RandomCrop((16, 20), ignore_index=255, fill=(1, 2, 3))(sample)
    assert out["label"].shape == (16, 20) and out["image"].shape == (16, 20, 3)
    assert out["label"].dtype == np.uint8 and out["image"].dtype == np.uint8
    # Padding goes to the bottom and right, and nothing is cut when the sample is smaller.
    np.testing.assert_array_equal(out["label"][:10, :12], label)
    np.testing.assert_array_equal(out["image"][:10, :12], sample["image"])
    assert (out["label"][10:] == 255).all() and (out["label"][:, 12:] == 255).all()
    assert (out["image"][10:] == (1, 2, 3)).all() and (out["image"][:, 12:] == (1, 2, 3)).all()


def test_crop_smaller_than_sample_is_a_window_of_it():
    label = np.random.default_rng(1).integers(0, 20, (30, 40)).astype(np.uint8)
    sample = sample_of(label)
    tops_lefts = set()
    for seed in range(20):
        torch.manual_seed(seed)
        out = RandomCrop(8)(sample)
        matches = [
            (top, left)
            for top in range(30 - 8 + 1)
            for left in range(40 - 8 + 1)
            if np.array_equal(label[top : top + 8, left : left + 8], out["label"])
            and np.array_equal(sample["image"][top : top + 8, left : left + 8], out["image"])
        ]
        assert matches, "the crop is not a window of the sample"
        tops_lefts.add(matches[0])
    assert len(tops_lefts) > 5  # the window moves


def test_random_scale_keeps_label_values_and_scales_within_range():
    label = np.kron(np.array([[0, 14], [15, 255]], dtype=np.uint8), np.ones((10, 10), np.uint8))
    sample = sample_of(label)
    for seed in range(10):
        torch.manual_seed(seed)
        out = RandomScale(0.5, 2.0)(sample)
        height, width = out["label"].shape
        assert 10 <= height <= 40 and height == width and out["image"].shape == (height, width, 3)
        assert set(np.unique(out["label"])) <= {0, 14, 15, 255}
        assert out["label"].dtype == np.uint8


def test_resize_is_nearest_for_labels():
    label = np.array([[0, 14], [15, 255]], dtype=np.uint8)
    out = Resize((4, 6))(sample_of(label))
    expected = np.repeat(np.repeat(label, 2, axis=0), 3, axis=1)
    np.testing.assert_array_equal(out["label"], expected)
    assert out["image"].shape == (4, 6, 3)


def test_pad_to_divisor_keeps_the_original_and_ignores_the_rest():
    label = np.full((5, 7), 3, np.uint8)
    out = Pad(divisor=4, ignore_index=255)(sample_of(label))
    assert out["label"].shape == (8, 8)
    assert (out["label"][:5, :7] == 3).all() and (out["label"] == 255).sum() == 64 - 35


def test_color_jitter_changes_image_not_label_and_zero_is_identity():
    sample = sample_of(np.array([[1, 2], [3, 4]], dtype=np.uint8))
    same = ColorJitter(0.0, 0.0, 0.0)(sample)
    np.testing.assert_array_equal(same["image"], sample["image"])
    torch.manual_seed(3)
    changed = ColorJitter(0.5, 0.5, 0.5)(sample)
    assert changed["image"].dtype == np.uint8 and not np.array_equal(changed["image"], sample["image"])
    np.testing.assert_array_equal(changed["label"], sample["label"])


def test_to_tensor_normalises_channels_first():
    sample = sample_of(np.array([[0, 19]], dtype=np.uint8))
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.5)
    out = ToTensor(mean, std)(sample)
    expected = (sample["image"].astype(np.float64) / 255 - mean) / std
    assert out["image"].dtype == torch.float32 and tuple(out["image"].shape) == (3, 1, 2)
    np.testing.assert_allclose(out["image"].numpy(), expected.transpose(2, 0, 1), rtol=1e-5, atol=1e-5)
    assert out["label"].dtype == torch.uint8 and out["label"].tolist() == [[0, 19]]


def test_train_transform_gives_fixed_size_tensors_with_declared_labels():
    dataset = SyntheticParsing(n=6, size=(48, 40), transform=train_transform("lip", (32, 36)))
    allowed = set(load_hierarchy("lip").declared_ids())
    for sample in dataset:
        assert tuple(sample["image"].shape) == (3, 32, 36) and sample["image"].dtype == torch.float32
        assert tuple(sample["label"].shape) == (32, 36) and sample["label"].dtype == torch.uint8
        assert set(sample["label"].unique().tolist()) <= allowed


def test_train_transform_is_reproducible_under_a_torch_seed():
    dataset = SyntheticParsing(n=2, size=40, transform=train_transform("lip", 24))
    torch.manual_seed(7)
    first = dataset[1]
    torch.manual_seed(7)
    again = dataset[1]
    assert torch.equal(first["image"], again["image"]) and torch.equal(first["label"], again["label"])


def test_eval_transform_modes():
    sample = sample_of(np.full((10, 6), 2, np.uint8))
    resized = eval_transform("lip", (20, 12))(sample)
    assert tuple(resized["label"].shape) == (20, 12) and (resized["label"] == 2).all()
    padded = eval_transform("lip", (12, 8), mode="pad")(sample)
    assert tuple(padded["label"].shape) == (12, 8) and int((padded["label"] == 255).sum()) == 96 - 60
    plain = eval_transform("lip", mode="none")(sample)
    assert tuple(plain["image"].shape) == (3, 10, 6)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: RandomCrop(0), "size must be positive"),
        (lambda: RandomScale(2.0, 1.0), "min_scale <= max_scale"),
        (lambda: Pad(), "exactly one of size= or divisor="),
        (lambda: Pad(size=4, divisor=4), "exactly one of size= or divisor="),
        (lambda: eval_transform("lip", 8, mode="stretch"), "eval mode must be"),
        (lambda: eval_transform("lip", None, mode="resize"), "needs size="),
    ],
)
def test_bad_transform_arguments_are_refused(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_dataloader_with_workers_pinned_memory_and_distributed_sampler():
    dataset = SyntheticParsing(n=8, size=32, transform=train_transform("lip", 24))
    restored = pickle.loads(pickle.dumps(dataset))  # what spawn-started workers receive
    torch.manual_seed(0)
    original = dataset[3]
    torch.manual_seed(0)
    copy = restored[3]
    assert torch.equal(original["image"], copy["image"]) and torch.equal(original["label"], copy["label"])

    halves = [set(DistributedSampler(dataset, num_replicas=2, rank=rank, shuffle=True, seed=1)) for rank in (0, 1)]
    assert halves[0] | halves[1] == set(range(8)) and not halves[0] & halves[1]

    sampler = DistributedSampler(dataset, num_replicas=2, rank=1, shuffle=True, seed=1)
    loader = DataLoader(dataset, batch_size=2, sampler=sampler, num_workers=2, pin_memory=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*pin_memory.*")  # CPU-only torch has nothing to pin to
        batches = list(loader)
    assert len(batches) == 2
    for batch in batches:
        assert tuple(batch["image"].shape) == (2, 3, 24, 24) and batch["image"].dtype == torch.float32
        assert tuple(batch["label"].shape) == (2, 24, 24) and batch["label"].dtype == torch.uint8
        assert all(path.startswith("synthetic/train/") for path in batch["path"])
