import pytest
import torch


@pytest.fixture
def one_thread():
    """Run the benchmark on one CPU thread (per-core numbers, steadier on a shared machine)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
