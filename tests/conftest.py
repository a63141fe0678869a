"""Helpers shared by the op tests."""

from __future__ import annotations

from typing import Callable, Sequence

import pytest
import torch


@pytest.fixture
def assert_same_bits_across_threads() -> Callable:
    """``check(losses_of, leaves)``: ``losses_of(leaves)`` and its gradients computed with 1, 2 and
    again 1 CPU thread must be bitwise equal (the thread count is restored afterwards)."""

    def check(losses_of: Callable[[Sequence[torch.Tensor]], torch.Tensor], leaves: Sequence[torch.Tensor]) -> None:
        threads = torch.get_num_threads()
        results = []
        try:
            for num_threads in (1, 2, 1):
                torch.set_num_threads(num_threads)
                losses = losses_of(leaves)
                results.append((losses, torch.autograd.grad(losses.sum(), leaves)))
        finally:
            torch.set_num_threads(threads)
        for losses, grads in results[1:]:
            assert torch.equal(losses, results[0][0])
            assert all(torch.equal(a, b) for a, b in zip(grads, results[0][1]))

    return check
