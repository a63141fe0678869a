"""Data pipeline speed on one core: synthetic generation (goal >= 200 images/s at 128x128),
training transforms, and reading a LIP-style split from disk. Results: benchmarks/RESULTS.md.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from hierparse.data import ParsingDataset, SyntheticParsing, train_transform

BATCH = 50  # samples per timed round, so per-sample numbers are not dominated by timer overhead


pytestmark = pytest.mark.usefixtures("one_thread")


def per_second(benchmark, count: int) -> float:
    rate = count / benchmark.stats.stats.median
    benchmark.extra_info["samples_per_s"] = round(rate, 1)
    return rate


def test_synthetic_generation_128(benchmark):
    dataset = SyntheticParsing(n=10_000, size=128, seed=0)
    starts = iter(range(0, 10_000, BATCH))

    def draw_batch():
        start = next(starts)
        for index in range(start, start + BATCH):
            dataset[index]

    benchmark.pedantic(draw_batch, rounds=15, iterations=1, warmup_rounds=1)
    assert per_second(benchmark, BATCH) >= 200, "synthetic data must reach 200 images/s at 128x128 on one core"


def test_synthetic_with_train_transform_128(benchmark):
    dataset = SyntheticParsing(n=10_000, size=128, seed=0, transform=train_transform("lip", 128))
    torch.manual_seed(0)
    benchmark.pedantic(lambda: [dataset[i] for i in range(BATCH)], rounds=10, iterations=1, warmup_rounds=1)
    per_second(benchmark, BATCH)


def test_train_transform_only_128(benchmark):
    raw = [SyntheticParsing(n=BATCH, size=128, seed=0)[i] for i in range(BATCH)]
    transform = train_transform("lip", 128)
    torch.manual_seed(0)
    benchmark.pedantic(lambda: [transform(sample) for sample in raw], rounds=10, iterations=1, warmup_rounds=1)
    per_second(benchmark, BATCH)


def test_read_lip_split_from_disk(benchmark, tmp_path_factory):
    """LIP-sized samples (JPEG image and PNG label, about 256x192) in the SCHP layout, raw arrays."""
    root = tmp_path_factory.mktemp("lip")
    (root / "val_images").mkdir()
    (root / "val_segmentations").mkdir()
    source = SyntheticParsing(n=BATCH, size=(256, 192), seed=0, split="val")
    for index in range(BATCH):
        sample = source[index]
        Image.fromarray(sample["image"]).save(root / "val_images" / f"{index:05d}.jpg", quality=90)
        Image.fromarray(sample["label"]).save(root / "val_segmentations" / f"{index:05d}.png")
    (root / "val_id.txt").write_text("".join(f"{index:05d}\n" for index in range(BATCH)))
    dataset = ParsingDataset(root, "lip", "val")
    benchmark.pedantic(lambda: [dataset[i] for i in range(BATCH)], rounds=10, iterations=1, warmup_rounds=1)
    per_second(benchmark, BATCH)
    assert np.array_equal(dataset[0]["label"], source[0]["label"])
