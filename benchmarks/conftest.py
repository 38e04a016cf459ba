"""Benchmarks compare ours against the reference in one run; each comparison is one
pytest-benchmark group (``pytest benchmarks``)."""

import pytest
import torch

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def peak_memory_mb(step) -> float:
    """Peak memory that one call of ``step`` allocates beyond what was live before it, from the
    torch profiler's allocation events (CUDA: the allocator's own peak counter)."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    changes = sorted(
        (event.time_range.start, event.self_cpu_memory_usage)
        for event in prof.events()
        if event.self_cpu_memory_usage
    )
    live = peak = 0
    for _, change in changes:
        live += change
        peak = max(peak, live)
    return peak / 2**20


def synchronize() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


@pytest.fixture
def device() -> torch.device:
    return DEVICE
