"""up_conv2x2 forward+backward at the U-Net's four up-convolutions of the 572 input, against
the reference's nn.ConvTranspose2d (F.conv_transpose2d) on the same channels_last input."""

import pytest
import torch
import torch.nn.functional as F

from unet_fast.ops import available_backends, up_conv2x2

from conftest import DEVICE, peak_memory_mb, rounds, synchronize

# (C_in, C_out, input side): dec1 to dec4.
LAYERS = [(1024, 512, 28), (512, 256, 52), (256, 128, 100), (128, 64, 196)]
QUICK = {"layer": [LAYERS[0]]}
BACKENDS = ["reference"] + [b for b in available_backends("up_conv2x2", DEVICE) if b != "torch"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layer", LAYERS, ids=lambda layer: "{}to{}at{}".format(*layer))
def test_up_conv2x2_forward_backward(benchmark, backend, layer, device):
    c_in, c_out, side = layer
    x = torch.randn(1, c_in, side, side, device=device).contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    weight = torch.randn(c_in, c_out, 2, 2, device=device).contiguous(memory_format=torch.channels_last)
    weight.requires_grad_()
    bias = torch.randn(c_out, device=device, requires_grad=True)
    grad = torch.randn(1, c_out, 2 * side, 2 * side, device=device).contiguous(memory_format=torch.channels_last)

    def step():
        if backend == "reference":
            out = F.conv_transpose2d(x, weight, bias, stride=2)
        else:
            out = up_conv2x2(x, weight, bias, backend=backend)
        out.backward(grad)
        x.grad = weight.grad = bias.grad = None
        synchronize()

    benchmark.group = f"up-convolution 2x2 stride 2 forward+backward, {c_in}->{c_out} at {side}x{side}"
    benchmark.extra_info["peak_memory_mb"] = round(peak_memory_mb(step), 1)
    benchmark.pedantic(step, rounds=rounds(5), iterations=1, warmup_rounds=1)
