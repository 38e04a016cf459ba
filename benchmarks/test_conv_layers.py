"""Every 3x3 convolution of the U-Net at 572 (with bias and ReLU), forward and backward, CPU,
in fp32 and bf16:
- reference: the reference's form, NCHW (F.conv2d + F.relu; aten's convolution_backward),
- direct: the CPU backend with UNET_FAST_WINOGRAD=0 (oneDNN's direct convolution channels_last;
  its weight gradient in NCHW on CPUs without AVX-512),
- winograd: the CPU backend, Winograd F(6x6, 3x3), F(4x4, 3x3) or (bf16) F(2x2, 3x3) where its
  rule takes it,
- winograd-f2x2, -f4x4, -f6x6: the CPU backend with that Winograd block forced on every pass
  (UNET_FAST_WINOGRAD=2/4/6; bf16 only F(2x2)), to find where the rule's crossovers lie on
  another CPU,
- nnpack (forward only): torch._nnpack_spatial_convolution, NNPACK's Winograd F(6x6, 3x3) inside
  torch, plus the ReLU.
The backward is the data and weight gradients and the bias sum from a given output gradient
(ours also applies the ReLU mask).

    pytest benchmarks/test_conv_layers.py --benchmark-group-by=param:layer,param:direction,param:precision

bf16 on a CPU where oneDNN only emulates it is computed in fp32 by our backend (and slowly by
the reference).
"""

import pytest
import torch
import torch.nn.functional as F

from unet_fast import memory
from unet_fast.ops import available_backends, conv3x3_bias_relu

from conftest import DEVICE, rounds

# (C_in, C_out, input side) of the 18 3x3 convolutions, top to bottom and back up.
LAYERS = [(1, 64, 572), (64, 64, 570), (64, 128, 284), (128, 128, 282), (128, 256, 140), (256, 256, 138),
          (256, 512, 68), (512, 512, 66), (512, 1024, 32), (1024, 1024, 30), (1024, 512, 56), (512, 512, 54),
          (512, 256, 104), (256, 256, 102), (256, 128, 200), (128, 128, 198), (128, 64, 392), (64, 64, 390)]
QUICK = {"layer": [(256, 512, 68)], "precision": ["fp32"]}
CPU_EXTENSION = DEVICE.type == "cpu" and "cpu" in available_backends("conv3x3_bias_relu", DEVICE)
NNPACK = DEVICE.type == "cpu" and torch.backends.nnpack.is_available()
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# The CPU backend's implementations, by their UNET_FAST_WINOGRAD setting, and the blocks bf16 can take.
CPU_SETTINGS = {"direct": "0", "winograd": "1", "winograd-f2x2": "2", "winograd-f4x4": "4", "winograd-f6x6": "6"}
BF16_SETTINGS = ["direct", "winograd", "winograd-f2x2"]
CASES = [(precision, direction, "reference") for precision in DTYPES for direction in ("forward", "backward")]
CASES += [(precision, direction, name) for precision in DTYPES for direction in ("forward", "backward")
          for name in CPU_SETTINGS if CPU_EXTENSION and (precision == "fp32" or name in BF16_SETTINGS)]
CASES += [("fp32", "forward", "nnpack")] if NNPACK else []


def reference_step(direction, x, weight, bias, grad):
    if direction == "forward":
        return lambda: F.relu(F.conv2d(x, weight, bias))
    sizes = [weight.shape[0]]
    return lambda: torch.ops.aten.convolution_backward(grad, x, weight, sizes, [1, 1], [0, 0], [1, 1], False,
                                                       [0, 0], 1, [True, True, True])


def nnpack_forward(x, weight, bias):
    return lambda: F.relu(torch._nnpack_spatial_convolution(x, weight, bias, [0, 0]))


def cpu_backend_step(direction, x, weight, bias, grad):
    x, weight, grad = (t.contiguous(memory_format=torch.channels_last) for t in (x, weight, grad))
    if direction == "forward":
        return lambda: conv3x3_bias_relu(x, weight, bias, True, backend="cpu")
    out = conv3x3_bias_relu(x, weight, bias, True, backend="cpu")
    return lambda: torch.ops.unet_fast.conv3x3_bias_relu_backward(grad, x, weight, out, [True, True, True])


@pytest.mark.parametrize("precision,direction,implementation", CASES, ids=lambda value: value)
@pytest.mark.parametrize("layer", LAYERS, ids=lambda layer: "{}to{}at{}".format(*layer))
def test_conv3x3_layer(benchmark, layer, precision, direction, implementation, monkeypatch):
    c_in, c_out, side = layer
    dtype = DTYPES[precision]
    x = torch.randn(1, c_in, side, side, device=DEVICE).to(dtype)
    weight = (torch.randn(c_out, c_in, 3, 3, device=DEVICE) * (2 / (9 * c_in)) ** 0.5).to(dtype)
    bias = torch.randn(c_out, device=DEVICE).to(dtype)
    grad = torch.randn(1, c_out, side - 2, side - 2, device=DEVICE).to(dtype)
    if implementation == "reference":
        step = reference_step(direction, x, weight, bias, grad)
    elif implementation == "nnpack":
        step = nnpack_forward(x, weight, bias)
    else:
        monkeypatch.setenv("UNET_FAST_WINOGRAD", CPU_SETTINGS[implementation])
        # Each case on its own warm buffers, as in a training step: the blocks earlier cases
        # left would fill the pool to its bound and leave this one faulting in fresh memory on
        # every call (1024 -> 1024 at 30: forward 57 against 29 ms).
        memory.empty_cpu_pool()
        step = cpu_backend_step(direction, x, weight, bias, grad)
    benchmark.group = "conv3x3+bias+ReLU {} {}, {}->{} at {}x{}".format(precision, direction, c_in, c_out, side, side)
    with torch.no_grad():
        benchmark.pedantic(step, rounds=rounds(5), iterations=1, warmup_rounds=1)
