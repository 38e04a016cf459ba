"""`unet-fast bench`: this machine's speed-ups over the reference, as ratios of medians of
alternating runs (so a noisy machine slows both sides alike), with peak memory: the profiler's
count of one call's allocations, and the peak resident memory of a fresh training process as
the OS reports it (what GNU ``time -v`` prints), which also counts what allocators keep."""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch

import unet_fast
from unet_fast import reference, tuning
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


def _comparisons(size: int, device: torch.device, busy: bool = False):
    """(name, ours, reference) triples: each fused op, then the U-Net (in fp32; a bf16-autocast
    step against our own fp32 one, and against the reference's where oneDNN runs bf16 itself;
    a step with another process spinning on a core if `busy`)."""
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

    def train_step(model, autocast=False):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            logits = model(image)
        logits.float().square().mean().backward()
        model.zero_grad(set_to_none=True)

    yield f"UNet forward, {size}x{size}", lambda: forward(ours), lambda: forward(theirs)
    yield f"UNet training step, {size}x{size}", lambda: train_step(ours), lambda: train_step(theirs)
    yield (f"UNet step {size}, bf16 autocast vs our fp32", lambda: train_step(ours, autocast=True),
           lambda: train_step(ours))
    if device.type != "cpu" or tuning.onednn_native("bfloat16"):  # else the post's bf16 step takes minutes
        yield (f"UNet step {size}, bf16 autocast, both", lambda: train_step(ours, autocast=True),
               lambda: train_step(theirs, autocast=True))
    if busy:
        yield f"UNet training step, {size}x{size}, a core busy", lambda: train_step(ours), lambda: train_step(theirs)


def tune(size: int, device: torch.device) -> list:
    """Settles the algorithms of the U-Net at `size` in fp32 and bf16 (CPU; nothing elsewhere)."""
    if device.type != "cpu" or not tuning.measuring():
        return []
    model = unet_fast.UNet()
    return tuning.tune(model, size) + tuning.tune(model, size, dtype=torch.bfloat16)


def run(size: int = 252, rounds: int = 5, device: str | None = None, busy: bool = False) -> list[Comparison]:
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    results = []
    for name, ours, theirs in _comparisons(size, device, busy):
        with busy_core() if name.endswith("a core busy") else contextlib.nullcontext():
            results.append(compare(name, ours, theirs, rounds, device))
    return results


@contextlib.contextmanager
def busy_core():
    """Another process spinning on one core meanwhile, as a neighbour on a shared machine does."""
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        yield
    finally:
        spinner.kill()
        spinner.wait()


@dataclass
class TrainingProcess:
    """A fresh process training one model (unet_fast.training_process), as the OS saw it."""

    model: str
    size: int
    precision: str
    peak_mb: float  # peak resident memory (VmHWM)
    setup_mb: float  # resident after building the model and optimiser
    step_seconds: list = field(default_factory=list)
    pool_cached_mb: float = 0.0  # what unet_fast's buffer pool holds after the last step

    @property
    def steps_mb(self) -> float:
        """What the steps added to the resident memory of the set-up process."""
        return self.peak_mb - self.setup_mb


def training_process(model: str, size: int = 572, steps: int = 3, precision: str = "fp32",
                     env: dict | None = None) -> TrainingProcess:
    """Runs `steps` SGD steps of `model` ("unet_fast" or "reference") in a fresh Python and
    returns its peak resident memory: its own VmHWM, as GNU time -v reports it (os.wait4's
    ru_maxrss would count this large process, which the child is forked from)."""
    command = [sys.executable, "-m", "unet_fast.training_process", "--model", model, "--size", str(size),
               "--steps", str(steps), "--precision", precision]
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {result.stderr[-2000:]}")
    report = json.loads(result.stdout.strip().splitlines()[-1])
    return TrainingProcess(model, size, precision, peak_mb=report["peak_mb"], setup_mb=report["setup_mb"],
                           step_seconds=report["step_seconds"], pool_cached_mb=report["pool_cached_mb"])


def format_processes(ours: TrainingProcess, theirs: TrainingProcess) -> str:
    steps = len(ours.step_seconds)
    lines = [f"fresh training processes, {ours.size}x{ours.size} {ours.precision}, {steps} SGD steps "
             "(peak resident memory, as GNU time -v reports it):",
             f"{'':12s} {'peak MiB':>9s} {'set up MiB':>11s} {'steps added':>12s} {'last step s':>12s}"]
    for name, p in (("unet_fast", ours), ("reference", theirs)):
        lines.append(f"{name:12s} {p.peak_mb:9.0f} {p.setup_mb:11.0f} {p.steps_mb:12.0f} {p.step_seconds[-1]:12.2f}")
    lines.append(f"ours / reference: peak {ours.peak_mb / theirs.peak_mb:.2f}x, added by the steps "
                 f"{ours.steps_mb / theirs.steps_mb:.2f}x; the pool then kept {ours.pool_cached_mb:.0f} MiB "
                 "(given back after it has been idle for UNET_FAST_CPU_POOL_IDLE_S, default 30 s)")
    return "\n".join(lines)


def format_table(results: list[Comparison]) -> str:
    lines = [f"{'comparison':45s} {'ours ms':>9s} {'ref ms':>9s} {'speed-up':>9s} {'peak MiB ours/ref':>18s}"]
    for r in results:
        peaks = f"{r.ours_peak_mb:.1f}/{r.reference_peak_mb:.1f}"
        lines.append(f"{r.name:45s} {r.ours_ms:9.2f} {r.reference_ms:9.2f} {r.speedup:8.2f}x {peaks:>18s}")
    return "\n".join(lines)


def write_json(results: list[Comparison], path: str, processes: list[TrainingProcess] = (),
               choices: list = ()) -> None:
    """Writes the results atomically (a temporary file renamed into place)."""
    payload = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "results": [dict(asdict(r), speedup=r.speedup) for r in results],
        "training_processes": [dict(asdict(p), steps_mb=p.steps_mb) for p in processes],
        "algorithms": [{"pass": c.shape.key(), "algorithm": c.algorithm, "milliseconds": c.milliseconds}
                       for c in choices],
    }
    folder = os.path.dirname(os.path.abspath(path))
    with tempfile.NamedTemporaryFile("w", dir=folder, delete=False, suffix=".tmp") as file:
        json.dump(payload, file, indent=2)
    os.replace(file.name, path)
