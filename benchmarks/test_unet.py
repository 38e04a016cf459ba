"""The U-Net against the reference module, eager and under torch.compile: forward and a
training step (forward, the paper's weighted loss, backward), at 252 and 572, fp32 and bf16
autocast, and the eager models' training step with another process spinning on a core (the
load a shared machine sees). One test function per model, so that

    pytest benchmarks/test_unet.py --benchmark-group-by=param

puts ours beside the reference for every (size, precision, mode). Each step is slow (seconds
at 572), so every benchmark runs a fixed few rounds after one warm-up."""

import contextlib

import pytest
import torch

import unet_fast
from unet_fast import bench, memory, reference

from conftest import DEVICE, peak_memory_mb, rounds, synchronize

SIZES = [252, 572]
PRECISIONS = ["fp32", "bf16"]
MODES = ["forward", "train_step"]
BUSY = "train_step_busy_core"  # a training step under load; the eager models only, as the load rule compares them
ROUNDS = 3
QUICK = {"size": [252], "precision": ["fp32"]}


def _autocast(precision):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(DEVICE.type, dtype=torch.bfloat16)


def _step(model, size, precision, mode):
    """One forward or training step, without synchronisation."""
    torch.manual_seed(0)
    image = torch.randn(1, 1, size, size, device=DEVICE)
    out_size = size - 184
    target = torch.randint(0, 2, (1, out_size, out_size), device=DEVICE)
    weight = torch.rand(1, out_size, out_size, device=DEVICE) * 10

    def forward():
        with torch.no_grad(), _autocast(precision):
            model(image)

    def train_step():
        with _autocast(precision):
            logits = model(image)
        loss = unet_fast.weighted_softmax_cross_entropy(logits.float(), target, weight)
        loss.backward()
        model.zero_grad(set_to_none=True)

    return forward if mode == "forward" else train_step  # BUSY: the same step, under load


def _cuda_graph(step):
    """``step`` captured once as a CUDA graph and replayed: the GPU's time without the
    launch overhead of a batch-1 forward. (A training step is not captured: its gradients
    are set to None each step; compiled models get graphs from mode="reduce-overhead".)"""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):  # capture needs the allocator and the kernels warmed up off the main stream
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph.replay


def _run(benchmark, model, size, precision, mode, compiled=False):
    body = _step(model.to(DEVICE), size, precision, mode)

    def step():
        body()
        synchronize()

    with bench.busy_core() if mode == BUSY else contextlib.nullcontext():
        step()  # warm-up (and compilation, for compiled models)
        if compiled and DEVICE.type == "cpu":
            # The CPU profiler does not see the buffers inductor's generated code allocates.
            benchmark.extra_info["peak_memory_mb"] = "not measured"
        else:
            benchmark.extra_info["peak_memory_mb"] = round(peak_memory_mb(step), 1)
        if DEVICE.type == "cuda" and mode == "forward" and not compiled:
            body = _cuda_graph(body)  # timed as a graph; the memory above is the eager forward's
            benchmark.extra_info["cuda_graph"] = True
        benchmark.pedantic(step, rounds=rounds(ROUNDS), iterations=1)
        if isinstance(model, unet_fast.UNet) and DEVICE.type == "cpu":
            # Idle blocks the CPU buffer pool keeps for the next step (not in the peak above).
            benchmark.extra_info["cpu_pool_idle_mb"] = round(memory.cpu_pool_stats().cached_bytes / 2**20, 1)
            memory.empty_cpu_pool()


@pytest.mark.parametrize("mode", MODES + [BUSY])
@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("size", SIZES)
def test_unet_fast(benchmark, size, precision, mode):
    _run(benchmark, unet_fast.UNet(), size, precision, mode)


@pytest.mark.parametrize("mode", MODES + [BUSY])
@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("size", SIZES)
def test_reference(benchmark, size, precision, mode):
    _run(benchmark, reference.UNet(), size, precision, mode)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("size", SIZES)
def test_reference_compiled(benchmark, size, precision, mode):
    torch._dynamo.reset()
    # On a GPU, "reduce-overhead" runs the compiled model as CUDA graphs.
    compile_mode = "reduce-overhead" if DEVICE.type == "cuda" else None
    _run(benchmark, torch.compile(reference.UNet(), mode=compile_mode), size, precision, mode, compiled=True)
