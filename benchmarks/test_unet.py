"""The U-Net against the reference module, eager and under torch.compile: forward and a
training step (forward, the paper's weighted loss, backward), at 252 and 572, fp32 and bf16
autocast. One test function per model, so that

    pytest benchmarks/test_unet.py --benchmark-group-by=param

puts ours beside the reference for every (size, precision, mode). Each step is slow (seconds
at 572), so every benchmark runs a fixed few rounds after one warm-up."""

import contextlib

import pytest
import torch

import unet_fast
from unet_fast import memory, reference

from conftest import DEVICE, peak_memory_mb, synchronize

SIZES = [252, 572]
PRECISIONS = ["fp32", "bf16"]
MODES = ["forward", "train_step"]
ROUNDS = 3


def _autocast(precision):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(DEVICE.type, dtype=torch.bfloat16)


def _step(model, size, precision, mode):
    torch.manual_seed(0)
    image = torch.randn(1, 1, size, size, device=DEVICE)
    out_size = size - 184
    target = torch.randint(0, 2, (1, out_size, out_size), device=DEVICE)
    weight = torch.rand(1, out_size, out_size, device=DEVICE) * 10

    def forward():
        with torch.no_grad(), _autocast(precision):
            model(image)
        synchronize()

    def train_step():
        with _autocast(precision):
            logits = model(image)
        loss = unet_fast.weighted_softmax_cross_entropy(logits.float(), target, weight)
        loss.backward()
        model.zero_grad(set_to_none=True)
        synchronize()

    return forward if mode == "forward" else train_step


def _run(benchmark, model, size, precision, mode, compiled=False):
    step = _step(model.to(DEVICE), size, precision, mode)
    step()  # warm-up (and compilation, for compiled models)
    if compiled and DEVICE.type == "cpu":
        # The CPU profiler does not see the buffers inductor's generated code allocates.
        benchmark.extra_info["peak_memory_mb"] = "not measured"
    else:
        benchmark.extra_info["peak_memory_mb"] = round(peak_memory_mb(step), 1)
    benchmark.pedantic(step, rounds=ROUNDS, iterations=1)
    if isinstance(model, unet_fast.UNet) and DEVICE.type == "cpu":
        # Idle blocks the CPU buffer pool keeps for the next step (not in the peak above).
        benchmark.extra_info["cpu_pool_idle_mb"] = round(memory.cpu_pool_stats().cached_bytes / 2**20, 1)
        memory.empty_cpu_pool()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("size", SIZES)
def test_unet_fast(benchmark, size, precision, mode):
    _run(benchmark, unet_fast.UNet(), size, precision, mode)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("size", SIZES)
def test_reference(benchmark, size, precision, mode):
    _run(benchmark, reference.UNet(), size, precision, mode)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("size", SIZES)
def test_reference_compiled(benchmark, size, precision, mode):
    torch._dynamo.reset()
    _run(benchmark, torch.compile(reference.UNet()), size, precision, mode, compiled=True)
