"""The pixel-weighted softmax cross-entropy, forward+backward, against the composite
(F.cross_entropy(reduction='none') * w, summed and divided by sum w), and the weight map."""

import numpy as np
import pytest
import torch

import unet_fast
from unet_fast.ops import available_backends

from conftest import DEVICE, peak_memory_mb, synchronize

QUICK = {"batch": [1]}
BACKENDS = [b for b in available_backends("weighted_softmax_cross_entropy", DEVICE) if b != "triton" or DEVICE.type == "cuda"]


# Warm up so that the allocator holds the gradient's pages: cold page faults cost as much as
# the kernel itself and land on whichever round meets them.
@pytest.mark.benchmark(warmup=True, warmup_iterations=20)
@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize("backend", BACKENDS)
def test_loss_forward_backward(benchmark, backend, batch, device):
    logits = torch.randn(batch, 2, 388, 388, device=device, requires_grad=True)
    target = torch.randint(0, 2, (batch, 388, 388), device=device)
    weight = torch.rand(batch, 388, 388, device=device) * 10

    def step():
        # The gradient as the layer below the loss receives it (no leaf accumulation).
        loss = unet_fast.weighted_softmax_cross_entropy(logits, target, weight, backend=backend)
        torch.autograd.grad(loss, logits)
        synchronize()

    benchmark.group = f"weighted cross-entropy forward+backward, logits ({batch}, 2, 388, 388)"
    benchmark.extra_info["peak_memory_mb"] = round(peak_memory_mb(step), 1)
    benchmark(step)


def test_weight_map_1024_with_300_objects(benchmark):
    rng = np.random.default_rng(0)
    labels = np.zeros((1024, 1024), np.int32)
    ys, xs = np.mgrid[:1024, :1024]
    for k in range(300):
        cy, cx = rng.integers(0, 1024, 2)
        r = rng.integers(6, 20)
        labels[(ys - cy) ** 2 + (xs - cx) ** 2 < r * r] = k + 1
    benchmark.group = "weight map, 1024x1024, 300 objects"
    benchmark(unet_fast.weight_map, labels)
