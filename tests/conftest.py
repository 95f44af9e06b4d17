import pytest
import torch


@pytest.fixture(autouse=True)
def _threads():
    # Two cores on CI: keep torch from oversubscribing them.
    torch.set_num_threads(2)
    yield
