"""conv3x3_bias_relu and crop_concat_conv3x3 forward+backward at U-Net layers of the 572
input, against the reference's form (F.conv2d + F.relu on NCHW tensors, crop-and-cat)."""

import pytest
import torch
import torch.nn.functional as F

from unet_fast import reference
from unet_fast.ops import available_backends, conv3x3_bias_relu, crop_concat_conv3x3

from conftest import DEVICE, peak_memory_mb, rounds, synchronize

# (C_in, C_out, input side): enc1's second convolution, enc3's, and the bottleneck's.
LAYERS = [(64, 64, 570), (256, 256, 138), (1024, 1024, 30)]
# (channels of up and of skip, up's side, skip's side): the four joins, top to bottom.
JOINS = [(64, 392, 568), (128, 200, 280), (256, 104, 136), (512, 56, 64)]
QUICK = {"layer": [LAYERS[-1]], "join": [JOINS[0]]}
CPU_EXTENSION = DEVICE.type == "cpu" and "cpu" in available_backends("crop_concat_conv3x3", DEVICE)


def _backends(op):
    return ["reference"] + [b for b in available_backends(op, DEVICE) if b not in ("torch", "triton") or DEVICE.type == "cuda"]


@pytest.mark.parametrize("backend", _backends("conv3x3_bias_relu"))
@pytest.mark.parametrize("layer", LAYERS, ids=lambda layer: "{}to{}at{}".format(*layer))
def test_conv3x3_bias_relu_forward_backward(benchmark, backend, layer, device):
    c_in, c_out, side = layer
    x = torch.randn(1, c_in, side, side, device=device, requires_grad=True)
    weight = torch.randn(c_out, c_in, 3, 3, device=device, requires_grad=True)
    bias = torch.randn(c_out, device=device, requires_grad=True)
    grad = torch.randn(1, c_out, side - 2, side - 2, device=device)

    def step():
        if backend == "reference":
            out = F.relu(F.conv2d(x, weight, bias))
        else:
            out = conv3x3_bias_relu(x, weight, bias, backend=backend)
        out.backward(grad)
        x.grad = weight.grad = bias.grad = None
        synchronize()

    benchmark.group = f"conv3x3+bias+ReLU forward+backward, {c_in}->{c_out} at {side}x{side}"
    benchmark.extra_info["peak_memory_mb"] = round(peak_memory_mb(step), 1)
    benchmark.pedantic(step, rounds=rounds(5), iterations=1, warmup_rounds=1)


@pytest.mark.skipif(not CPU_EXTENSION, reason="the CPU extension's Winograd data gradient")
@pytest.mark.parametrize("how", ["in the output transform", "threshold_backward after"])
def test_data_gradient_through_its_inputs_relu(benchmark, how):
    # The second convolution of a block returns its input's gradient through the ReLU that made
    # the input: applied as the Winograd output transform writes it, against ATen's
    # threshold_backward on the plain gradient (enc1's 64 -> 64 at 570, F(4x4)).
    x = torch.relu(torch.randn(1, 64, 570, 570)).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(64, 64, 3, 3)
    grad = torch.randn(1, 64, 568, 568).contiguous(memory_format=torch.channels_last)
    backward = torch.ops.unet_fast.conv3x3_bias_relu_backward
    mask = [True, False, False]
    if how == "in the output transform":
        def step():
            return backward(grad, x, weight, None, mask, "winograd4", "direct", True)
    else:
        def step():
            return torch.ops.aten.threshold_backward(backward(grad, x, weight, None, mask, "winograd4", "direct")[0],
                                                     x, 0)

    benchmark.group = "data gradient through its input's ReLU, 64->64 at 570, F(4x4)"
    benchmark.extra_info["peak_memory_mb"] = round(peak_memory_mb(step), 1)
    benchmark.pedantic(step, rounds=rounds(9), iterations=1, warmup_rounds=1)


@pytest.mark.skipif(not CPU_EXTENSION, reason="the CPU extension's join backward")
@pytest.mark.parametrize("how", ["in the op's pass", "where() before"])
def test_join_backward_masks_its_gradient(benchmark, how):
    # The join's backward masks the incoming gradient by the ReLU and sums it for the bias in one
    # pass of its own, against ATen's where() before an unmasked backward (dec4's join at 572).
    up = torch.randn(1, 64, 392, 392).contiguous(memory_format=torch.channels_last)
    skip = torch.randn(1, 64, 568, 568).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(64, 128, 3, 3) / 24
    out = crop_concat_conv3x3(up, skip, weight, torch.zeros(64))
    grad = torch.randn(out.shape).contiguous(memory_format=torch.channels_last)
    backward = torch.ops.unet_fast.crop_concat_conv3x3_backward
    mask = [True, True, True, True]
    algorithms = ["winograd4"] * 4
    if how == "in the op's pass":
        def step():
            return backward(grad, up, skip, weight, out, mask, *algorithms)
    else:
        def step():
            return backward(torch.where(out <= 0, 0, grad), up, skip, weight, None, mask, *algorithms)

    benchmark.group = "decoder join backward, its gradient masked by the ReLU, 572 dec4, F(4x4)"
    benchmark.extra_info["peak_memory_mb"] = round(peak_memory_mb(step), 1)
    benchmark.pedantic(step, rounds=rounds(9), iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("backend", _backends("crop_concat_conv3x3"))
def test_decoder_join_and_conv_forward_backward(benchmark, backend, device):
    up = torch.randn(1, 64, 392, 392, device=device, requires_grad=True)
    skip = torch.randn(1, 64, 568, 568, device=device, requires_grad=True)
    weight = torch.randn(64, 128, 3, 3, device=device, requires_grad=True)
    bias = torch.randn(64, device=device, requires_grad=True)
    grad = torch.randn(1, 64, 390, 390, device=device)

    def step():
        if backend == "reference":
            joined = torch.cat([up, reference.center_crop(skip, up.shape[-2:])], 1)
            out = F.relu(F.conv2d(joined, weight, bias))
        else:
            out = crop_concat_conv3x3(up, skip, weight, bias, backend=backend)
        out.backward(grad)
        up.grad = skip.grad = weight.grad = bias.grad = None
        synchronize()

    benchmark.group = "decoder join + conv3x3+bias+ReLU forward+backward, 572 dec4"
    benchmark.extra_info["peak_memory_mb"] = round(peak_memory_mb(step), 1)
    benchmark.pedantic(step, rounds=rounds(5), iterations=1, warmup_rounds=1)


@pytest.mark.skipif(not CPU_EXTENSION, reason="the CPU extension's Winograd forward")
@pytest.mark.parametrize("join", JOINS, ids=lambda join: "{0}+{0}at{1}".format(*join))
@pytest.mark.parametrize("how", ["in the input transform", "join built"])
def test_decoder_join_forward_by_winograd(benchmark, join, how):
    # crop_concat_conv3x3's Winograd forward reads up and skip's window where they lie; against
    # building the join and convolving it by the same algorithm
    channels, side, skip_side = join
    up, skip = (torch.randn(1, channels, n, n).contiguous(memory_format=torch.channels_last) for n in (side, skip_side))
    weight = (torch.randn(channels, 2 * channels, 3, 3) * 0.02).contiguous(memory_format=torch.channels_last)
    bias = torch.zeros(channels)
    ops = torch.ops.unet_fast
    if how == "join built":
        step = lambda: ops.conv3x3_bias_relu(ops.crop_concat(up, skip), weight, bias, True, "winograd6")  # noqa: E731
    else:
        step = lambda: ops.crop_concat_conv3x3(up, skip, weight, bias, True, "winograd6")  # noqa: E731
    benchmark.group = f"decoder join + conv3x3 forward by F(6x6), {channels}+{channels} at {side}x{side}"
    benchmark.extra_info["peak_memory_mb"] = round(peak_memory_mb(step), 1)
    with torch.no_grad():
        benchmark.pedantic(step, rounds=rounds(5), iterations=1, warmup_rounds=1)
