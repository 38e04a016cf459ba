"""The Winograd convolutions F(m x m, 3x3), m = 2, 4, 6, that conv3x3_bias_relu's CPU backend
takes for fp32/fp64 tensors where its rule says they pay (csrc/cpu/winograd.cpp: F(4x4) from
64 channels in and out (32 with AVX-512; 16 for the weight gradient) and 64 blocks of 4x4 over
the batch (36 for the weight gradient, or with 512 channels), F(6x6) from 100 blocks of 6x6
whose transformed tiles outweigh the transformed weights (and, with AVX-512, from 128
channels)) — the forward, the data gradient (a full convolution) and the weight gradient —
against float64 direct convolution, each block size forced by UNET_FAST_WINOGRAD. Their error
in float32 is that of the transforms (F(6x6)'s points +-1/2, +-2 scale values by up to 32): a
few 1e-6 of the result's norm, against oneDNN's direct 1e-7 to 1e-5. Also F(2x2) with bf16
GEMMs, which bf16 takes on wide layers where oneDNN runs bf16 natively, and its rule."""

import os
import statistics
import subprocess
import sys
import time

import pytest
import torch
import torch.nn.functional as F

from unet_fast.bench import peak_memory_mb
from unet_fast.ops import available_backends, conv3x3_bias_relu
from unet_fast.ops.conv import tuned_backward

from conftest import cpu_has_avx512, onednn_emulates

pytestmark = pytest.mark.skipif("cpu" not in available_backends("conv3x3_bias_relu", torch.device("cpu")),
                                reason="the C++ extension is not built")

# Every 3x3 layer shape of the paper's U-Net (C_in, C_out) at reduced spatial size; sides not
# multiples of the output block, so edge tiles are partly outside.
UNET_LAYERS = [(64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 512), (512, 512),
               (512, 1024), (1024, 1024), (1024, 512), (512, 256), (256, 128), (128, 64)]
# Norm-wise relative error bound in float32 (the 1e-5), and the max-abs one.
NORM_RTOL, MAX_RTOL = 1e-5, 3e-5


@pytest.fixture(params=[2, 4, 6], ids=lambda block: f"F{block}")
def block(request, environment):
    """Every fp32/fp64 pass by Winograd F(block x block, 3x3), whatever the rule would take."""
    environment.setenv("UNET_FAST_WINOGRAD", str(request.param))
    return request.param


def make(n, c_in, c_out, h, w, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c_in, h, w, generator=g, dtype=torch.float64)
    weight = torch.randn(c_out, c_in, 3, 3, generator=g, dtype=torch.float64) * (2 / (9 * c_in)) ** 0.5
    bias = torch.randn(c_out, generator=g, dtype=torch.float64) * 0.1
    return [t.to(dtype) for t in (x, weight, bias)]


def relative_errors(got, want):
    """Norm-wise error, and the largest error relative to the largest value."""
    diff = got.double() - want
    return (diff.norm() / want.norm()).item(), (diff.abs().max() / want.abs().max()).item()


def errors(got, x, weight, bias, relu):
    want = F.conv2d(x.double(), weight.double(), None if bias is None else bias.double())
    return relative_errors(got, F.relu(want) if relu else want)


def backward_errors(x, weight, relu, seed=1):
    """Errors of the data and weight gradients of the CPU backward, whose ReLU mask comes from
    the forward's own output, against float64 with the same mask."""
    out = conv3x3_bias_relu(x, weight, None, relu, backend="cpu")
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=x.dtype)
    grad_x, grad_weight, _ = tuned_backward(grad, x, weight, out if relu else None, [True, True, False])
    masked = grad.double() * (out > 0) if relu else grad.double()
    want_x = torch.nn.grad.conv2d_input(x.shape, weight.double(), masked)
    want_weight = torch.nn.grad.conv2d_weight(x.double(), weight.shape, masked)
    return relative_errors(grad_x, want_x), relative_errors(grad_weight, want_weight)


@pytest.mark.parametrize("layer", UNET_LAYERS, ids=lambda layer: "{}to{}".format(*layer))
def test_every_unet_layer_shape_in_float32(layer, block):
    x, weight, bias = make(2, *layer, 15, 11)
    norm_error, max_error = errors(conv3x3_bias_relu(x, weight, bias, True, backend="cpu"), x, weight, bias, True)
    assert norm_error <= NORM_RTOL and max_error <= MAX_RTOL, (norm_error, max_error)


@pytest.mark.parametrize("layer", UNET_LAYERS, ids=lambda layer: "{}to{}".format(*layer))
def test_backward_of_every_unet_layer_shape_in_float32(layer, block):
    x, weight, _ = make(2, *layer, 15, 11)
    for norm_error, max_error in backward_errors(x, weight, relu=True):
        assert norm_error <= NORM_RTOL and max_error <= MAX_RTOL, (norm_error, max_error)


@pytest.mark.parametrize("layer", [(1024, 1024), (512, 1024), (1024, 512)], ids=lambda layer: "{}to{}".format(*layer))
def test_wide_layers_transform_their_weights_a_slice_at_a_time(layer, block):
    """A pass keeps at most 64 MiB of transformed weights or weight sums (F(6x6), 1024 -> 1024:
    256 MiB whole), or up to 1.5x that where it saves a slice (F(4x4), 512 -> 1024: 75.5 MiB in
    one), whatever the block: the tuner's choice by time cannot raise a step's peak by more."""
    x, weight = (t.contiguous(memory_format=torch.channels_last) for t in make(1, *layer, 15, 11)[:2])  # as UNet's
    out = conv3x3_bias_relu(x, weight, None, True, backend="cpu")
    grad = torch.randn(out.shape).contiguous(memory_format=torch.channels_last)
    passes = {"forward": lambda: conv3x3_bias_relu(x, weight, None, True, backend="cpu"),
              "data gradient": lambda: tuned_backward(grad, x, weight, out, [True, False, False]),
              "weight gradient": lambda: tuned_backward(grad, x, weight, out, [False, True, False])}
    # besides: the transformed tiles (each thread's piece, at least 32 tiles of both sides'
    # channels; a weight gradient's chunk, 8 MiB a thread) and the result
    threads = torch.get_num_threads()
    tiles_mib = max(threads * (block + 2) ** 2 * 32 * sum(layer) * 4 / 2**20, 8 * threads)
    for name, run in passes.items():
        result_mib = weight.nbytes / 2**20 if name == "weight gradient" else 1
        assert peak_memory_mb(run, x.device) <= 1.5 * 64 + tiles_mib + result_mib, name


@pytest.mark.parametrize("dtype,rtol", [(torch.float32, NORM_RTOL), (torch.float64, 1e-13)])
@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("size", [(3, 3), (4, 5), (6, 6), (7, 9), (13, 30)], ids=str)
def test_backward_odd_sizes(dtype, rtol, relu, size, block):
    x, weight, _ = make(2, 72, 64, *size, dtype=dtype)
    for norm_error, _ in backward_errors(x, weight, relu):
        assert norm_error <= rtol


@pytest.mark.parametrize("dtype,rtol", [(torch.float32, NORM_RTOL), (torch.float64, 1e-13)])
@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("size", [(3, 3), (4, 5), (6, 6), (7, 9), (13, 30)], ids=str)
def test_odd_sizes_bias_and_relu(dtype, rtol, relu, with_bias, size, block):
    x, weight, bias = make(2, 64, 72, *size, dtype=dtype)
    bias = bias if with_bias else None
    norm_error, _ = errors(conv3x3_bias_relu(x, weight, bias, relu, backend="cpu"), x, weight, bias, relu)
    assert norm_error <= rtol


@pytest.mark.parametrize("c_in,c_out", [(3, 1), (37, 17), (64, 100), (300, 70), (130, 192)], ids=str)
def test_channel_counts_off_the_products_blocks(c_in, c_out, block):
    """The transform-domain products by blocks of 64 output channels, steps of 6 tiles by 64
    (AVX-512) or 16 (AVX2) and passes of 128 input channels (csrc/cpu/point_gemm.cpp): output
    channels short of a block and of a step, tile counts not a multiple of 6, sums over more
    than one pass of 128, in both passes."""
    x, weight, bias = make(3, c_in, c_out, 13, 10)  # 11x8 outputs: 3 x 4, 3 x 6 or 3 x 24 tiles
    norm_error, max_error = errors(conv3x3_bias_relu(x, weight, bias, True, backend="cpu"), x, weight, bias, True)
    assert norm_error <= NORM_RTOL and max_error <= MAX_RTOL
    for norm_error, max_error in backward_errors(x, weight, relu=True):
        assert norm_error <= NORM_RTOL and max_error <= MAX_RTOL


POINT_GEMM_RUN = """
import os, sys, torch
from unet_fast.ops import conv3x3_bias_relu
from unet_fast.ops.conv import tuned_backward
g = torch.Generator().manual_seed(0)
x, weight = torch.randn(2, 150, 20, 20, generator=g), torch.randn(140, 150, 3, 3, generator=g) * 0.04
out = conv3x3_bias_relu(x, weight, None, True, backend="cpu")
grad_x = tuned_backward(torch.ones_like(out), x, weight, out, [True, False, False])[0]
by_aten = f"winograd{os.environ['UNET_FAST_WINOGRAD']}-aten"
out_by_aten = torch.ops.unet_fast.conv3x3_bias_relu(x, weight, None, True, by_aten)
grad_x_by_aten = torch.ops.unet_fast.conv3x3_bias_relu_backward(
    torch.ones_like(out), x, weight, out, [True, False, False], by_aten, "direct")[0]
torch.save([[out, grad_x], [out_by_aten, grad_x_by_aten]], sys.argv[1])
"""


@pytest.mark.parametrize("kernel", ["1", "avx2"])
def test_the_products_by_the_own_kernel_and_by_aten_agree(tmp_path, block, kernel):
    """UNET_FAST_POINT_GEMM=0 (read once, hence fresh processes) keeps the products in ATen's
    GEMM; with AVX-512 or AVX2 they are otherwise ours (=avx2: the AVX2 kernel, on an AVX-512
    CPU too), whose sums of more than 128 terms (150 and 140 channels here) are added up in
    parts, so the roundings differ, within the bounds. The algorithm winogradN-aten, which the
    tuner measures beside winogradN, is ATen's products there: the same values, bit for bit."""
    results = {}
    for setting in (kernel, "0"):
        path = tmp_path / f"{setting}.pt"
        env = {**os.environ, "UNET_FAST_POINT_GEMM": setting, "UNET_FAST_WINOGRAD": str(block)}
        subprocess.run([sys.executable, "-c", POINT_GEMM_RUN, str(path)], env=env, check=True, timeout=300)
        results[setting] = torch.load(path)
    (ours, by_aten), (aten, _) = results[kernel], results["0"]
    for ours_pass, aten_pass, by_aten_pass in zip(ours, aten, by_aten):
        norm_error, max_error = relative_errors(ours_pass, aten_pass.double())
        assert norm_error <= NORM_RTOL and max_error <= MAX_RTOL
        assert not torch.equal(ours_pass, aten_pass)
        assert torch.equal(by_aten_pass, aten_pass)


POINT_GEMM_KERNEL = "import torch; from unet_fast import _C; print(_C.cpu_point_products_kernel())"


@pytest.mark.parametrize("setting,expected", [("0", "None"), ("avx2", "avx2"), ("1", None)])
def test_the_products_kernel_follows_the_setting(setting, expected):
    env = {**os.environ, "UNET_FAST_POINT_GEMM": setting}
    run = subprocess.run([sys.executable, "-c", POINT_GEMM_KERNEL], env=env, capture_output=True, text=True,
                         timeout=120, check=True)
    assert run.stdout.strip() == (expected or ("avx512" if cpu_has_avx512() else "avx2"))


def test_a_bad_products_setting_is_refused_by_name():
    env = {**os.environ, "UNET_FAST_POINT_GEMM": "fast"}
    run = subprocess.run([sys.executable, "-c", POINT_GEMM_KERNEL], env=env, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode != 0 and "UNET_FAST_POINT_GEMM must be 0" in run.stderr and "'fast'" in run.stderr


def test_tiles_beyond_one_chunk_of_transform_buffers(block):
    # 256 channels in and out take 512, 227 or 128 tiles a chunk (16 MB) for blocks of 2, 4 or
    # 6: 64 images of 16x16 outputs make 4 to 8 chunks (more for the data gradient's 18x18).
    x, weight, bias = make(64, 256, 256, 18, 18)
    norm_error, max_error = errors(conv3x3_bias_relu(x, weight, bias, True, backend="cpu"), x, weight, bias, True)
    assert norm_error <= NORM_RTOL and max_error <= MAX_RTOL
    for norm_error, max_error in backward_errors(x, weight, relu=True):
        assert norm_error <= NORM_RTOL and max_error <= MAX_RTOL


def test_weight_gradient_sums_need_no_zeroing_pass(block):
    """The first chunk's products are written as the transform-domain sums, later chunks add to
    them: no pass zeroes the sums first (up to 32 MB a slice; ~30 ms of a 572 training step's
    profile), while the result over several chunks stays the composite's."""
    x, weight, _ = make(64, 256, 256, 18, 18)
    grad = torch.randn(64, 256, 16, 16).contiguous(memory_format=torch.channels_last)
    algorithm = f"winograd{block}"
    with torch.profiler.profile() as prof:
        _, grad_weight, _ = torch.ops.unet_fast.conv3x3_bias_relu_backward(
            grad, x, weight, None, [False, True, False], "direct", algorithm)
    assert not [event.name for event in prof.events() if event.name in ("aten::zero_", "aten::fill_")]
    expected = torch.nn.grad.conv2d_weight(x.double(), weight.shape, grad.double())
    norm_error, max_error = relative_errors(grad_weight, expected)
    assert norm_error <= NORM_RTOL and max_error <= MAX_RTOL


def forward_and_backward(x, weight, bias):
    args = [t.detach().requires_grad_() for t in (x, weight, bias)]
    out = conv3x3_bias_relu(*args, True, backend="cpu")
    out.backward(torch.linspace(-1, 1, out.numel()).view(out.shape))
    return [out.detach()] + [t.grad for t in args]


def winograd_and_direct(x, weight, bias, environment):
    winograd = forward_and_backward(x, weight, bias)
    with environment.context() as patch:
        patch.setenv("UNET_FAST_WINOGRAD", "0")
        direct = forward_and_backward(x, weight, bias)
    return winograd, direct


def test_is_taken_from_64_blocks_and_can_be_turned_off(environment):
    x, weight, bias = make(4, 64, 64, 18, 18)  # 4 images of 16 blocks of 4x4
    winograd, direct = winograd_and_direct(x, weight, bias, environment)
    for ours, vendor in zip(winograd[:3], direct[:3]):  # output, grad x, grad weight
        assert not torch.equal(ours, vendor)  # different arithmetic, different roundings
        norm_error, max_error = relative_errors(ours, vendor.double())
        assert norm_error <= NORM_RTOL and max_error <= MAX_RTOL
    assert winograd[0].is_contiguous(memory_format=torch.channels_last)
    # 2 images: 32 blocks of the output, 50 of the input (the data gradient's output); 15
    # channels in; 15 channels out.
    below = [make(2, 64, 64, 18, 18), make(4, 15, 16, 18, 18), make(4, 16, 15, 18, 18)]
    for x, weight, bias in below:
        for ours, vendor in zip(*winograd_and_direct(x, weight, bias, environment)):
            assert torch.equal(ours, vendor)


# The narrowest layers whose forward and data gradient take Winograd on this CPU.
NARROWEST = 32 if cpu_has_avx512() else 64


@pytest.mark.parametrize("channels", [(16, 16), (NARROWEST // 2, NARROWEST), (NARROWEST, NARROWEST - 1)], ids=str)
def test_narrow_layers_take_it_for_the_weight_gradient_only(channels, environment):
    # Below 64 channels (AVX-512: 32) the forward and data gradient lose to the direct kernels
    # at large sizes (16 channels at 570: 0.5x on AVX2); the weight gradient still wins (2x).
    x, weight, bias = make(4, *channels, 18, 18)
    (out, grad_x, grad_weight, grad_bias), direct = winograd_and_direct(x, weight, bias, environment)
    assert torch.equal(out, direct[0]) and torch.equal(grad_x, direct[1]) and torch.equal(grad_bias, direct[3])
    assert not torch.equal(grad_weight, direct[2])
    norm_error, max_error = relative_errors(grad_weight, direct[2].double())
    assert norm_error <= NORM_RTOL and max_error <= MAX_RTOL


def test_wide_layers_take_it_from_36_blocks(environment):
    def forward_taken(c_in, c_out, side):
        x, weight, bias = make(1, c_in, c_out, side, side)
        winograd = conv3x3_bias_relu(x, weight, bias, True, backend="cpu")
        with environment.context() as patch:
            patch.setenv("UNET_FAST_WINOGRAD", "0")
            direct = conv3x3_bias_relu(x, weight, bias, True, backend="cpu")
        return not torch.equal(winograd, direct)

    assert forward_taken(512, 512, 26)  # 6x6 blocks
    assert not forward_taken(512, 512, 22)  # 5x5 blocks
    assert not forward_taken(511, 512, 26)


@pytest.mark.parametrize("channels", [(16, 16), (64, 64), (256, 512)], ids=str)
def test_weight_gradient_takes_it_from_36_blocks(channels, environment):
    # At 36 to 63 blocks only the weight gradient is worth its transforms (1.6-3.6x); the
    # forward and the data gradient (49 blocks of its 26x26 output) stay direct.
    x, weight, bias = make(1, *channels, 26, 26)  # 6x6 blocks of the 24x24 output
    (out, grad_x, grad_weight, _), direct = winograd_and_direct(x, weight, bias, environment)
    assert torch.equal(out, direct[0]) and torch.equal(grad_x, direct[1])
    assert not torch.equal(grad_weight, direct[2])
    norm_error, max_error = relative_errors(grad_weight, direct[2].double())
    assert norm_error <= NORM_RTOL and max_error <= MAX_RTOL
    x, weight, bias = make(1, *channels, 22, 22)  # 5x5 blocks
    for ours, vendor in zip(*winograd_and_direct(x, weight, bias, environment)):
        assert torch.equal(ours, vendor)


def test_nan_input_gives_nan_through_the_relu_and_stays_in_its_blocks(block):
    # Every output whose 3x3 window holds the NaN pixel is NaN; the transforms mix whole input
    # tiles, so a NaN may reach more of the blocks whose tiles hold it, but never another block.
    x, weight, bias = make(1, 64, 64, 10, 10)
    x[0, 3, 2, 2] = float("nan")
    out = conv3x3_bias_relu(x, weight, bias, True, backend="cpu")
    assert out[0, :, :3, :3].isnan().all()
    reached = (2 // block + 1) * block  # blocks k whose tile rows k * block .. k * block + block + 1 hold row 2
    assert not out[0, :, reached:, :].isnan().any() and not out[0, :, :, reached:].isnan().any()


@pytest.mark.parametrize("layer", [(64, 72), (512, 512)], ids=lambda layer: "{}to{}".format(*layer))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_data_gradient_goes_through_the_relu_its_input_came_out_of(layer, dtype, block):
    # relu_input, applied as the output transform writes the gradient (512 -> 512: weights too
    # large for a cache, products point by point): bit for bit torch's threshold_backward of the
    # plain gradient, zero where x <= 0 and passed on at a NaN of x, with x read where it lies
    # (a window of a larger tensor) and blocks partly outside the 13 x 11 input.
    c_in, c_out = layer
    x, weight, _ = make(2, c_in, c_out, 17, 16, dtype=dtype)
    x = torch.relu(x).contiguous(memory_format=torch.channels_last)[:, :, 2:15, 1:12]
    x[0, 5, 12, 10] = float("nan")
    grad = torch.randn(2, c_out, 11, 9, generator=torch.Generator().manual_seed(1), dtype=dtype)
    plain = tuned_backward(grad, x, weight, None, [True, False, False])[0]
    through = tuned_backward(grad, x, weight, None, [True, False, False], relu_input=True)[0]
    torch.testing.assert_close(through, torch.ops.aten.threshold_backward(plain, x, 0), rtol=0, atol=0,
                               equal_nan=True)
    assert through[0, 5, 12, 10] == plain[0, 5, 12, 10] != 0 and (through == 0).any()


@pytest.mark.parametrize("algorithm", ["float:winograd4", "float:winograd6"])
def test_bf16_data_gradient_in_float_goes_through_the_relu_too(algorithm):
    # bf16 read and written, transformed in float: the mask applied as the float values are
    # rounded and stored, bit for bit threshold_backward of the plain gradient.
    x, weight, _ = make(2, 64, 72, 13, 11, dtype=torch.bfloat16)
    x = torch.relu(x).contiguous(memory_format=torch.channels_last)
    x[1, 3, 0, 10] = float("nan")
    grad = torch.randn(2, 72, 11, 9, generator=torch.Generator().manual_seed(1)).bfloat16()
    backward = torch.ops.unet_fast.conv3x3_bias_relu_backward
    plain = backward(grad, x, weight, None, [True, False, False], algorithm, "direct", False)[0]
    through = backward(grad, x, weight, None, [True, False, False], algorithm, "direct", True)[0]
    torch.testing.assert_close(through, torch.ops.aten.threshold_backward(plain, x, 0), rtol=0, atol=0,
                               equal_nan=True)
    assert through[1, 3, 0, 10] == plain[1, 3, 0, 10] != 0


def test_data_gradient_through_the_relu_costs_little_over_the_plain_one():
    # The mask is a select in the output transform's vectorized channel loop: alternating in one
    # process, medians of the pairs' ratios. Written as `x <= 0 ? 0 : value + bias`, the loop
    # stayed scalar and the pass took 2.3x the plain one here (64 -> 64 at 258, F(4x4)).
    x = torch.relu(torch.randn(1, 64, 258, 258)).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(64, 64, 3, 3)
    grad = torch.randn(1, 64, 256, 256).contiguous(memory_format=torch.channels_last)
    backward = torch.ops.unet_fast.conv3x3_bias_relu_backward

    def seconds(relu_input):
        start = time.perf_counter()
        backward(grad, x, weight, None, [True, False, False], "winograd4", "direct", relu_input)
        return time.perf_counter() - start

    for _ in range(2):
        seconds(True), seconds(False)
    ratios = [seconds(True) / seconds(False) for _ in range(15)]
    assert statistics.median(ratios) < 1.5


@pytest.mark.parametrize("size", [(7, 6), (10, 13)], ids=str)
def test_gradcheck_float64(size, block):
    # Forward and both gradients are Winograd's (exact in exact arithmetic), checked against
    # finite differences of the forward.
    x, weight, bias = make(2, 64, 64, *size, dtype=torch.float64)
    bias = bias + torch.where(bias >= 0, 0.5, -0.5)
    args = [t.requires_grad_() for t in (x, weight, bias)]
    assert torch.autograd.gradcheck(lambda *a: conv3x3_bias_relu(*a, True, backend="cpu"), args, fast_mode=True)


def rule_takes(c_in, c_out, side, environment, settings="46", dtype=torch.float32):
    """The setting of UNET_FAST_WINOGRAD (one of `settings`: "0" direct, or a block) the rule
    takes for the forward, the data gradient and the weight gradient of one c_in -> c_out layer
    at side x side: the one whose results it reproduces bit for bit (and whose other settings it
    does not). The backward is given one output, so that its ReLU mask does not depend on the
    forward's block."""
    x, weight, bias = make(1, c_in, c_out, side, side, dtype=dtype)
    with environment.context() as patch:
        patch.setenv("UNET_FAST_WINOGRAD", "0")
        out = conv3x3_bias_relu(x, weight, bias, True, backend="cpu")
    grad = torch.linspace(-1, 1, out.numel()).view(out.shape).to(dtype)

    def passes(setting=None):
        with environment.context() as patch:
            if setting is not None:
                patch.setenv("UNET_FAST_WINOGRAD", setting)
            grad_x, grad_weight, _ = tuned_backward(grad, x, weight, out, [True, True, False])
            return conv3x3_bias_relu(x, weight, bias, True, backend="cpu"), grad_x, grad_weight

    rule, by_block = passes(), {block: passes(block) for block in settings}
    taken = []
    for i in range(3):
        matches = [block for block in settings if torch.equal(rule[i], by_block[block][i])]
        assert len(matches) == 1, (i, matches)
        taken += matches
    return taken


def test_six_by_six_blocks_from_100_of_them(environment):
    # F(6x6, 3x3) does 0.79x the GEMM work of F(4x4, 3x3) but has a weight transform 1.78x as
    # large: it wins from about 100 output blocks of 6x6 (10-25%), and loses below.
    assert rule_takes(128, 128, 62, environment) == ["6"] * 3  # 10x10 blocks of 6x6 out (and in)
    assert rule_takes(128, 128, 54, environment) == ["4"] * 3  # 9x9


def test_six_by_six_blocks_where_the_tiles_outweigh_the_weights(environment):
    # 512 -> 512 at 66 (121 blocks, tiles x 1024 channels < 512 x 512 weights) lost with F(6x6)
    # (weight gradient 29.5 against 23.4 ms, AVX-512); from 256 blocks the tiles outweigh them.
    assert rule_takes(512, 512, 98, environment) == ["6"] * 3  # 16x16 blocks
    assert rule_takes(512, 512, 86, environment) == ["4"] * 3  # 14x14 (the data gradient: 15x15)


def test_six_by_six_blocks_from_128_channels_with_avx512(environment):
    # With AVX-512 the 64-channel layers lost with F(6x6) (64 -> 64 at 570: 41 against 34 ms);
    # without it they won (94 against 98 ms).
    assert rule_takes(64, 64, 62, environment) == (["4"] * 3 if cpu_has_avx512() else ["6"] * 3)


needs_native_bf16 = pytest.mark.skipif(onednn_emulates(torch.bfloat16),
                                       reason="oneDNN emulates bf16 on this CPU, so bf16 runs in fp32 (test_ops_conv.py)")
# Norm-wise error bound of F(2x2) in bf16 against float64 of the same bf16 inputs: its
# transformed tiles, weights and products are rounded to bf16 (measured 4.7e-3 to 5.0e-3,
# against 1.7e-3 for oneDNN's direct bf16 convolution, which rounds its output only).
BF16_NORM_RTOL = 1e-2


@needs_native_bf16
@pytest.mark.parametrize("layer", [(64, 64), (256, 256), (512, 1024), (1024, 512)], ids=lambda layer: "{}to{}".format(*layer))
def test_two_by_two_blocks_in_bf16(layer, environment):
    environment.setenv("UNET_FAST_WINOGRAD", "2")
    x, weight, bias = make(2, *layer, 15, 11, dtype=torch.bfloat16)
    out = conv3x3_bias_relu(x, weight, bias, True, backend="cpu")
    assert out.dtype == torch.bfloat16 and out.is_contiguous(memory_format=torch.channels_last)
    norm_error, _ = errors(out, x, weight, bias, True)
    assert norm_error <= BF16_NORM_RTOL
    (data_error, _), (weight_error, _) = backward_errors(x, weight, relu=True)
    assert data_error <= BF16_NORM_RTOL and weight_error <= BF16_NORM_RTOL
    with environment.context() as patch:
        patch.setenv("UNET_FAST_WINOGRAD", "0")
        direct = conv3x3_bias_relu(x, weight, bias, True, backend="cpu")
    assert not torch.equal(out, direct)  # Winograd's roundings, not oneDNN's


@needs_native_bf16
def test_two_by_two_blocks_in_bf16_beyond_one_chunk(environment):
    # 256 channels in and out take 2048 tiles of 2x2 a chunk in bf16 (32 MB): 40 images of
    # 16x16 outputs make two chunks (three for the data gradient's 18x18), whose weight-gradient
    # products are summed in float.
    environment.setenv("UNET_FAST_WINOGRAD", "2")
    x, weight, bias = make(40, 256, 256, 18, 18, dtype=torch.bfloat16)
    norm_error, _ = errors(conv3x3_bias_relu(x, weight, bias, True, backend="cpu"), x, weight, bias, True)
    assert norm_error <= BF16_NORM_RTOL
    for norm_error, _ in backward_errors(x, weight, relu=True):
        assert norm_error <= BF16_NORM_RTOL


@needs_native_bf16
def test_two_by_two_blocks_in_bf16_keep_nan(environment):
    x, weight, bias = make(1, 256, 256, 12, 12, dtype=torch.bfloat16)
    x[0, 5, 4, 4] = float("nan")
    with environment.context() as patch:
        patch.setenv("UNET_FAST_WINOGRAD", "2")
        out = conv3x3_bias_relu(x, weight, bias, True, backend="cpu")
    assert out[0, :, 2:5, 2:5].isnan().all()
    assert not out[0, :, 6:, :].isnan().any() and not out[0, :, :, 6:].isnan().any()


@needs_native_bf16
def test_bf16_takes_two_by_two_blocks_for_wide_forwards_and_the_widest_data_gradients(environment):
    # F(2x2) in bf16 beat oneDNN's AMX kernels in the forward from 256 channels where the tiles
    # outweigh the weights (1.15-1.8x), and in the data gradient of 512 x 1024-channel layers
    # (1.1-1.2x); never in the weight gradient.
    def takes(c_in, c_out, side):
        return rule_takes(c_in, c_out, side, environment, settings="02", dtype=torch.bfloat16)

    assert takes(256, 256, 30) == ["2", "0", "0"]  # 14x14 blocks of 2x2: 196 x 512 >= 256 x 256
    assert takes(128, 128, 30) == ["0", "0", "0"]
    assert takes(512, 1024, 34) == ["0", "2", "0"]  # 256 blocks x 1536 < 512 x 1024; 9x9 blocks of 4x4 in
    assert takes(512, 1024, 20) == ["0", "0", "0"]  # 5x5 blocks of 4x4 in


@pytest.mark.parametrize("setting", ["5", "on", "4x4"])
def test_an_unknown_setting_is_refused(setting, environment):
    environment.setenv("UNET_FAST_WINOGRAD", setting)
    x, weight, bias = make(1, 64, 64, 20, 20)
    with pytest.raises(ValueError, match="UNET_FAST_WINOGRAD must be 0, 1, 2, 4 or 6"):
        conv3x3_bias_relu(x, weight, bias, True, backend="cpu")
