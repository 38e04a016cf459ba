"""The forward of every 3x3 convolution of the U-Net at 572 (with bias and ReLU), CPU: the
reference's form (F.conv2d + F.relu, NCHW), oneDNN's direct convolution channels_last (the CPU
backend with UNET_FAST_WINOGRAD=0) and the CPU backend's Winograd F(4x4, 3x3).

    pytest benchmarks/test_conv_forward.py --benchmark-group-by=param:layer
"""

import pytest
import torch
import torch.nn.functional as F

from unet_fast.ops import available_backends, conv3x3_bias_relu

from conftest import DEVICE, rounds

# (C_in, C_out, input side) of the 18 3x3 convolutions, top to bottom and back up.
LAYERS = [(1, 64, 572), (64, 64, 570), (64, 128, 284), (128, 128, 282), (128, 256, 140), (256, 256, 138),
          (256, 512, 68), (512, 512, 66), (512, 1024, 32), (1024, 1024, 30), (1024, 512, 56), (512, 512, 54),
          (512, 256, 104), (256, 256, 102), (256, 128, 200), (128, 128, 198), (128, 64, 392), (64, 64, 390)]
QUICK = {"layer": [(256, 512, 68)]}
CPU_EXTENSION = DEVICE.type == "cpu" and "cpu" in available_backends("conv3x3_bias_relu", DEVICE)
IMPLEMENTATIONS = ["reference"] + (["onednn_channels_last", "winograd"] if CPU_EXTENSION else [])


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("layer", LAYERS, ids=lambda layer: "{}to{}at{}".format(*layer))
def test_conv3x3_forward(benchmark, layer, implementation, monkeypatch):
    c_in, c_out, side = layer
    x = torch.randn(1, c_in, side, side, device=DEVICE)
    weight = torch.randn(c_out, c_in, 3, 3, device=DEVICE)
    bias = torch.randn(c_out, device=DEVICE)
    if implementation == "reference":
        def step():
            return F.relu(F.conv2d(x, weight, bias))
    else:
        monkeypatch.setenv("UNET_FAST_WINOGRAD", "1" if implementation == "winograd" else "0")
        x = x.contiguous(memory_format=torch.channels_last)
        weight = weight.contiguous(memory_format=torch.channels_last)

        def step():
            return conv3x3_bias_relu(x, weight, bias, True, backend="cpu")

    benchmark.group = "conv3x3+bias+ReLU forward, {}->{} at {}x{}".format(c_in, c_out, side, side)
    with torch.no_grad():
        benchmark.pedantic(step, rounds=rounds(5), iterations=1, warmup_rounds=1)
