"""crop_concat forward+backward at the U-Net's largest join (dec4 at 572: up 64x392x392,
skip 64x568x568) against the composite crop-and-cat."""

import pytest
import torch

import unet_fast
from unet_fast.ops import available_backends

from conftest import DEVICE, peak_memory_mb, synchronize


@pytest.mark.parametrize("backend", [b for b in available_backends("crop_concat", DEVICE) if b != "triton" or DEVICE.type == "cuda"])
def test_crop_concat_forward_backward(benchmark, backend, device):
    up = torch.randn(1, 64, 392, 392, device=device, requires_grad=True)
    skip = torch.randn(1, 64, 568, 568, device=device, requires_grad=True)
    grad = torch.randn(1, 128, 392, 392, device=device)

    def step():
        out = unet_fast.crop_concat(up, skip, backend=backend)
        out.backward(grad)
        up.grad = skip.grad = None
        synchronize()

    benchmark.group = "crop_concat forward+backward, 572 dec4 join"
    benchmark.extra_info["peak_memory_mb"] = round(peak_memory_mb(step), 1)
    benchmark(step)
