"""Benchmarks compare ours against the reference in one run; each comparison is one
pytest-benchmark group (``pytest benchmarks``)."""

import pytest
import torch

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def synchronize() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


@pytest.fixture
def device() -> torch.device:
    return DEVICE
