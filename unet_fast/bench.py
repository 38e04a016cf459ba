"""`unet-fast bench`: this machine's speed-ups over the reference, as ratios of medians of
alternating runs (so a noisy machine slows both sides alike), with peak memory."""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch

import unet_fast
from unet_fast import reference
from unet_fast.ops.crop_concat import crop_concat_composite
from unet_fast.ops.weighted_cross_entropy import weighted_softmax_cross_entropy_composite


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


@contextlib.contextmanager
def _quiet_stderr():
    """torch's CPU profiler logs every start and stop on the process's stderr; hide those."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def peak_memory_mb(step: Callable[[], object], device: torch.device) -> float:
    """Peak memory one call of ``step`` allocates beyond what was live before it: the CUDA
    allocator's peak counter, or on the CPU the torch profiler's allocation and free events
    replayed in time order (the per-op totals would net a free against a later allocation)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    with _quiet_stderr(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    changes = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    live = peak = 0
    for _, change in changes:
        live += change
        peak = max(peak, live)
    return peak / 2**20


@dataclass
class Comparison:
    name: str
    ours_ms: float
    reference_ms: float
    ours_peak_mb: float
    reference_peak_mb: float

    @property
    def speedup(self) -> float:
        return self.reference_ms / self.ours_ms


def compare(name: str, ours: Callable, theirs: Callable, rounds: int, device: torch.device) -> Comparison:
    """Medians of ``rounds`` alternating timed runs of each, after two warm-ups each (the first
    runs also pay for the allocator growing its pools)."""
    def timed(fn):
        start = time.perf_counter()
        fn()
        synchronize(device)
        return (time.perf_counter() - start) * 1e3

    for _ in range(2):
        timed(ours), timed(theirs)
    ours_ms, theirs_ms = [], []
    for _ in range(rounds):
        ours_ms.append(timed(ours))
        theirs_ms.append(timed(theirs))
    return Comparison(name, statistics.median(ours_ms), statistics.median(theirs_ms),
                      peak_memory_mb(ours, device), peak_memory_mb(theirs, device))


def _comparisons(size: int, device: torch.device):
    """(name, ours, reference) triples: each fused op, then the U-Net."""
    gen = torch.Generator().manual_seed(0)
    up = torch.randn(1, 64, 392, 392, generator=gen).to(device).requires_grad_()
    skip = torch.randn(1, 64, 568, 568, generator=gen).to(device).requires_grad_()
    yield ("crop_concat fwd+bwd, 572 dec4 join",
           lambda: unet_fast.crop_concat(up, skip).sum().backward(),
           lambda: crop_concat_composite(up, skip).sum().backward())
    logits = torch.randn(8, 2, 388, 388, generator=gen).to(device).requires_grad_()
    target = torch.randint(0, 2, (8, 388, 388), generator=gen).to(device)
    weight = (torch.rand(8, 388, 388, generator=gen) * 10).to(device)
    yield ("weighted cross-entropy fwd+bwd, 8x2x388x388",
           lambda: torch.autograd.grad(unet_fast.weighted_softmax_cross_entropy(logits, target, weight), logits),
           lambda: torch.autograd.grad(weighted_softmax_cross_entropy_composite(logits, target, weight, None, -100, "mean"), logits))
    torch.manual_seed(0)
    ours, theirs = unet_fast.UNet().to(device), reference.UNet().to(device)
    theirs.load_state_dict(ours.state_dict())
    image = torch.randn(1, 1, size, size, generator=gen).to(device)

    def forward(model):
        with torch.no_grad():
            model(image)

    def train_step(model):
        model(image).square().mean().backward()
        model.zero_grad(set_to_none=True)

    yield f"UNet forward, {size}x{size}", lambda: forward(ours), lambda: forward(theirs)
    yield f"UNet training step, {size}x{size}", lambda: train_step(ours), lambda: train_step(theirs)


def run(size: int = 252, rounds: int = 5, device: str | None = None) -> list[Comparison]:
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return [compare(name, ours, theirs, rounds, device) for name, ours, theirs in _comparisons(size, device)]


def format_table(results: list[Comparison]) -> str:
    lines = [f"{'comparison':45s} {'ours ms':>9s} {'ref ms':>9s} {'speed-up':>9s} {'peak MiB ours/ref':>18s}"]
    for r in results:
        peaks = f"{r.ours_peak_mb:.1f}/{r.reference_peak_mb:.1f}"
        lines.append(f"{r.name:45s} {r.ours_ms:9.2f} {r.reference_ms:9.2f} {r.speedup:8.2f}x {peaks:>18s}")
    return "\n".join(lines)


def write_json(results: list[Comparison], path: str) -> None:
    """Writes the results atomically (a temporary file renamed into place)."""
    payload = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "results": [dict(asdict(r), speedup=r.speedup) for r in results],
    }
    folder = os.path.dirname(os.path.abspath(path))
    with tempfile.NamedTemporaryFile("w", dir=folder, delete=False, suffix=".tmp") as file:
        json.dump(payload, file, indent=2)
    os.replace(file.name, path)
