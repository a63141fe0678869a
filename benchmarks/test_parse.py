"""Parsing photo folders: throughput at batch 1 vs 8 (two threads, interleaved in one process), and
peak resident memory of ``parse_folder`` over 100 vs 1,000 images (fresh processes): it must not grow
with the count. The default run's model (light backbone, PSP head); photos are 256x192 JPEGs, seen
with their long side at 128 as the default ``eval_size``. Results: benchmarks/RESULTS.md.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hierparse import Parser, build_model, load_hierarchy
from hierparse.data import SyntheticParsing
from peak_memory import run_in_fresh_process

PHOTOS = 1000
SIZE = (256, 192)


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory) -> Path:
    """1,000 JPEGs drawn from 50 synthetic people (varied by a mirror and a colour shift)."""
    folder = tmp_path_factory.mktemp("photos")
    people = [SyntheticParsing(n=50, size=SIZE, split="test")[index]["image"] for index in range(50)]
    for index in range(PHOTOS):
        picture = people[index % 50][:, ::-1] if index // 50 % 2 else people[index % 50]
        shifted = np.clip(picture.astype(np.int16) + (index // 100) * 3, 0, 255).astype(np.uint8)
        Image.fromarray(shifted).save(folder / f"photo{index:04d}.jpg", quality=90)
    return folder


def parser() -> Parser:
    torch.manual_seed(0)
    return Parser(build_model(load_hierarchy("lip"), "light", "psp").eval(), load_hierarchy("lip"))


def test_folder_throughput_batch_1_vs_8(benchmark, photo_folder, tmp_path):
    """Images per second over the same 64 photos, the two batch sizes alternating round by round."""
    model = parser()
    files = sorted(photo_folder.glob("*.jpg"))[:64]
    rates: dict[int, list[float]] = {1: [], 8: []}
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        def both():
            for batch in (1, 8):
                start = time.perf_counter()
                model.parse_folder(files, tmp_path / f"out{batch}", batch_size=batch, progress=False)
                rates[batch].append(len(files) / (time.perf_counter() - start))

        benchmark.pedantic(both, rounds=3, iterations=1, warmup_rounds=1)
    finally:
        torch.set_num_threads(threads)
    median = {batch: float(np.median(values[1:])) for batch, values in rates.items()}  # first: the warm-up
    benchmark.extra_info.update(images_per_s_batch1=round(median[1], 1), images_per_s_batch8=round(median[8], 1),
                                ratio_8_over_1=round(median[8] / median[1], 2))
    assert median[1] > 0 and median[8] > 0


PEAK_SCRIPT = """
import json, sys
sys.path.insert(0, "{benchmarks}")
import torch
from pathlib import Path
from peak_memory import peak_bytes, reset_peak
from test_parse import parser
torch.set_num_threads(2)
folder, count, out = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
model = parser()
model.parse_folder(sorted(folder.glob("*.jpg"))[:8], out / "warm", progress=False)  # allocator and oneDNN caches
before = reset_peak()
model.parse_folder(sorted(folder.glob("*.jpg"))[:count], out / "run", batch_size=8, progress=False)
print(json.dumps({{"before": before, "peak": peak_bytes()}}))
"""


def test_peak_memory_is_flat_in_the_number_of_images(benchmark, photo_folder, tmp_path):
    results = {}

    def measure():
        for count in (100, PHOTOS):
            results[count] = run_in_fresh_process(PEAK_SCRIPT, [str(photo_folder), str(count),
                                                                str(tmp_path / str(count))], tmp_path)

    benchmark.pedantic(measure, rounds=1, iterations=1)
    mib = {count: result["peak"] / 2**20 for count, result in results.items()}
    benchmark.extra_info.update(peak_mib_100=round(mib[100], 1), peak_mib_1000=round(mib[PHOTOS], 1),
                                start_mib=round(results[100]["before"] / 2**20, 1))
    assert mib[PHOTOS] - mib[100] < 32, f"peak RSS grew from {mib[100]:.0f} to {mib[PHOTOS]:.0f} MiB with the count"
