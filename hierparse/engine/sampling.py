"""A training data order that is a pure function of (seed, epoch): resumable mid-epoch, any world size.

:class:`EpochSampler` shuffles like ``DistributedSampler`` (same permutation on every process, one
shard each) and yields ``(epoch, index)`` pairs; :class:`SeededSamples` seeds the random
augmentation of each sample from ``(seed, epoch, index)``. Neither the number of DataLoader
workers nor the process's global random state changes which crops and flips a sample gets, so a
resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
import torch.utils.data
from torch.utils.data.distributed import DistributedSampler


class EpochSampler(DistributedSampler):
    """``DistributedSampler`` (shuffled, ``drop_last``) yielding ``(epoch, index)``; ``skip`` drops the first samples.

    Set ``skip`` to ``batches_done * batch_size`` to continue an epoch where a checkpoint left it.
    A dataset with ``epoch_order(generator, count)`` (a weighted mixture) gives the epoch's order
    itself, from a generator seeded like the shuffle.
    """

    def __init__(self, dataset: torch.utils.data.Dataset, num_replicas: int, rank: int, seed: int):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True)
        self.skip = 0

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if hasattr(self.dataset, "epoch_order"):
            generator = torch.Generator()
            generator.manual_seed(self.seed + self.epoch)
            order = self.dataset.epoch_order(generator, self.total_size)
            indices = order[self.rank:self.total_size:self.num_replicas][self.skip:]
        else:
            indices = list(super().__iter__())[self.skip:]
        return iter([(self.epoch, index) for index in indices])

    def __len__(self) -> int:
        return self.num_samples - self.skip


class SeededSamples(torch.utils.data.Dataset):
    """``dataset[index]`` with torch's global generator seeded from ``(seed, epoch, index)`` for that call.

    The transforms of :mod:`hierparse.data.transforms` draw from torch's global generator; its state
    is saved and restored around the call, so the caller's random stream is untouched.
    """

    def __init__(self, dataset: torch.utils.data.Dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        sample_seed = int(np.random.SeedSequence([self.seed, epoch, index]).generate_state(1, np.uint64)[0])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed)
            return self.dataset[index]
