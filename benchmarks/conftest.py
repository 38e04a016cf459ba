"""Benchmarks compare ours against the reference in one run; each comparison is one
pytest-benchmark group (``pytest benchmarks``)."""

import pytest
import torch

from unet_fast import bench

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def peak_memory_mb(step) -> float:
    return bench.peak_memory_mb(step, DEVICE)


def synchronize() -> None:
    bench.synchronize(DEVICE)


@pytest.fixture
def device() -> torch.device:
    return DEVICE
